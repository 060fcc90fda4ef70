"""CheXNet (DenseNet-121 + 14 sigmoid outputs) and its TF Serving SavedModel export.

The model itself uses keras.ops only, so it runs on any Keras backend; the export adds the
TensorFlow-only parts (uint8 and encoded-image signatures) around it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Final

import keras

from chexstack.labels import LABELS, NUM_LABELS
from chexstack.settings import IMAGE_SIZE

log = logging.getLogger(__name__)

IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)
OUTPUT_KEY: Final = "probabilities"
METADATA_FILE: Final = "assets.extra/chexstack.json"


class WeightsError(RuntimeError):
    """The requested weights could not be loaded."""


def build_chexnet(weights: str | None = None, seed: int | None = None) -> keras.Model:
    """DenseNet-121 backbone + Dense(14, sigmoid) named "probabilities"; input float RGB in [0, 1] normalised.

    `weights`: None/"random", "imagenet" (needs network), or a local .weights.h5 file of the
    whole model or of the DenseNet-121 backbone.
    """
    if seed is not None:
        keras.utils.set_random_seed(seed)
    source = (weights or "random").strip()
    backbone_weights = "imagenet" if source == "imagenet" else None
    try:
        backbone = keras.applications.DenseNet121(
            include_top=False,
            pooling="avg",
            input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
            weights=backbone_weights,
        )
    except Exception as exc:  # the download raises URLError/OSError/ValueError depending on the failure
        if backbone_weights is None:
            raise
        raise WeightsError(
            f"cannot download ImageNet weights ({exc}); pass a local .weights.h5 file instead"
        ) from exc
    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    outputs = keras.layers.Dense(NUM_LABELS, activation="sigmoid", name=OUTPUT_KEY)(backbone(inputs))
    model = keras.Model(inputs, outputs, name="chexnet")
    if source not in ("random", "imagenet"):
        _load_local_weights(model, backbone, Path(source))
    return model


def _load_local_weights(model: keras.Model, backbone: keras.Model, path: Path) -> None:
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        # Keras only warns when a file's layout does not fit; a partial load must not pass silently.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model.load_weights(path)
        return
    except Exception as full_exc:  # not a full-model file: try it as a backbone file
        try:
            backbone.load_weights(path)
        except Exception as exc:
            raise WeightsError(
                f"{path} fits neither the CheXNet model ({full_exc}) nor the DenseNet-121 backbone ({exc})"
            ) from exc


def normalise(pixels: Any) -> Any:
    """uint8 grey [N,H,W,1] -> float32 RGB normalised with ImageNet statistics (keras.ops only)."""
    x = keras.ops.cast(pixels, "float32") / 255.0
    x = keras.ops.repeat(x, 3, axis=-1)
    mean = keras.ops.convert_to_tensor(IMAGENET_MEAN, dtype="float32")
    std = keras.ops.convert_to_tensor(IMAGENET_STD, dtype="float32")
    return (x - mean) / std


def predict_pixels(model: keras.Model, pixels: Any) -> Any:
    """Probabilities [N,14] for uint8 grey pixels [N,224,224,1]; what serving_default computes."""
    return model(normalise(pixels), training=False)


def _next_version(model_base: Path) -> int:
    versions = [int(p.name) for p in model_base.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def _archive(model: keras.Model) -> Any:
    import tensorflow as tf

    pixels_spec = tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 1], tf.uint8, name="image")

    # One traced graph of the network shared by both signatures: tracing DenseNet-121 dominates export time.
    @tf.function(input_signature=[pixels_spec])  # type: ignore[untyped-decorator]
    def core(image: Any) -> Any:
        return predict_pixels(model, image)

    def serve_pixels(image: Any) -> dict[str, Any]:
        return {OUTPUT_KEY: core(image)}

    def decode_one(data: Any) -> Any:
        img = tf.io.decode_image(data, channels=1, dtype=tf.uint8, expand_animations=False)
        img = tf.image.resize(img, (IMAGE_SIZE, IMAGE_SIZE), method="bilinear", antialias=True)
        # Round back to uint8 so both signatures see exactly what the preprocess worker produces.
        return tf.cast(tf.clip_by_value(tf.round(img), 0.0, 255.0), tf.uint8)

    def serve_bytes(image_bytes: Any) -> dict[str, Any]:
        pixels = tf.map_fn(
            decode_one, image_bytes, fn_output_signature=tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 1], tf.uint8)
        )
        return {OUTPUT_KEY: core(pixels)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        serve_pixels,
        input_signature=[pixels_spec],
    )
    archive.add_endpoint(
        "predict_image", serve_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
    )
    return archive


def export_saved_model(
    model: keras.Model, model_base: Path, version: int | None = None, *, weights_source: str = "unknown"
) -> Path:
    """Write `model_base/<version>/` as a TF Serving SavedModel; the directory appears atomically."""
    model_base = Path(model_base)
    model_base.mkdir(parents=True, exist_ok=True)
    version = _next_version(model_base) if version is None else version
    if version < 1:
        raise ValueError("version must be a positive integer")
    final = model_base / str(version)
    if final.exists():
        raise FileExistsError(f"version directory already exists: {final}")
    # A dot-prefixed temp dir is not a version number, so a polling server ignores it until the rename.
    tmp = Path(tempfile.mkdtemp(prefix=f".export-{version}-", dir=model_base))
    try:
        out = tmp / "saved_model"
        _archive(model).write_out(str(out), verbose=False)
        meta = out / METADATA_FILE
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps(_metadata(weights_source), indent=2) + "\n")
        os.rename(out, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s", final)
    return final


def _metadata(weights_source: str) -> dict[str, Any]:
    return {
        "labels": list(LABELS),
        "image_size": IMAGE_SIZE,
        "input": {"serving_default": "image uint8 [N,224,224,1]", "predict_image": "image_bytes string [N]"},
        "normalisation": {"scale": 1 / 255, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "weights": weights_source,
        "keras_version": keras.__version__,
    }
