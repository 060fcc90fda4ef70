"""CheXNet (DenseNet-121 + 14 sigmoid outputs) and its TF Serving SavedModel export.

The model itself uses keras.ops only, so it runs on any Keras backend; the export adds the
TensorFlow-only parts (uint8 and encoded-image signatures) around it.

Layout: DenseNet-121 without pooling ("densenet121", final feature map [N,h,w,1024]) ->
GlobalAveragePooling2D ("pool") -> Dense(14, sigmoid) ("probabilities"). Because the head is linear
on averaged features, the class activation map of class k is the feature map times the Dense kernel's
column k (Zhou et al. 2016), the heat maps the CheXNet paper shows.
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
CAM_KEY: Final = "class_activation_maps"
BACKBONE: Final = "densenet121"
METADATA_FILE: Final = "assets.extra/chexstack.json"


class WeightsError(RuntimeError):
    """The requested weights could not be loaded."""


def build_chexnet(
    weights: str | None = None, seed: int | None = None, image_size: int = IMAGE_SIZE
) -> keras.Model:
    """DenseNet-121 backbone + Dense(14, sigmoid) named "probabilities"; input float RGB normalised.

    `weights`: None/"random", "imagenet" (needs network), or a local .weights.h5 file of the
    whole model or of the DenseNet-121 backbone. `image_size`: the square input size (>= 32, the
    backbone's total stride); small sizes make CPU training fast.
    """
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 (DenseNet-121 downsamples by 32), got {image_size}")
    if seed is not None:
        keras.utils.set_random_seed(seed)
    source = (weights or "random").strip()
    backbone_weights = "imagenet" if source == "imagenet" else None
    try:
        backbone = keras.applications.DenseNet121(
            include_top=False,
            pooling=None,
            input_shape=(image_size, image_size, 3),
            weights=backbone_weights,
        )
    except Exception as exc:  # the download raises URLError/OSError/ValueError depending on the failure
        if backbone_weights is None:
            raise
        raise WeightsError(
            f"cannot download ImageNet weights ({exc}); pass a local .weights.h5 file instead"
        ) from exc
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(inputs))
    # float32 outputs even under a mixed-precision policy: sigmoid probabilities near 0/1 need it.
    outputs = keras.layers.Dense(NUM_LABELS, activation="sigmoid", name=OUTPUT_KEY, dtype="float32")(pooled)
    model = keras.Model(inputs, outputs, name="chexnet")
    if source not in ("random", "imagenet"):
        _load_local_weights(model, backbone, Path(source))
    return model


def image_size_of(model: keras.Model) -> int:
    """The square input size the model was built for."""
    return int(model.input_shape[1])


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


def _model_pixels(model: keras.Model, pixels: Any) -> Any:
    """uint8 pixels at any size -> float pixels (0..255) at the model's size.

    Serving always takes 224x224; a model trained on smaller shards gets them resized here. The result
    is rounded like the shards' uint8 pixels so a 224 image looks to the model like its training data.
    """
    size = image_size_of(model)
    x = keras.ops.cast(pixels, "float32")
    if tuple(x.shape[1:3]) != (size, size):
        x = keras.ops.image.resize(x, (size, size), interpolation="bilinear", antialias=True)
        x = keras.ops.clip(keras.ops.round(x), 0.0, 255.0)
    return x


def predict_pixels(model: keras.Model, pixels: Any) -> Any:
    """Probabilities [N,14] for uint8 grey pixels [N,H,W,1]; what serving_default computes."""
    return model(normalise(_model_pixels(model, pixels)), training=False)


def features_and_probabilities(model: keras.Model, inputs: Any, training: bool = False) -> tuple[Any, Any]:
    """Final feature map [N,h,w,1024] and probabilities [N,14] of normalised inputs, in one pass."""
    features = model.get_layer(BACKBONE)(inputs, training=training)
    probabilities = model.get_layer(OUTPUT_KEY)(model.get_layer("pool")(features))
    return features, probabilities


def class_activation_maps(model: keras.Model, features: Any) -> Any:
    """[N,h,w,14] CAMs from the feature map, each scaled to [0, 1] per image and class.

    A flat map (max == min, e.g. all-zero features) becomes all zeros rather than NaN.
    """
    kernel = keras.ops.cast(model.get_layer(OUTPUT_KEY).kernel, "float32")
    cams = keras.ops.einsum("nhwc,ck->nhwk", keras.ops.cast(features, "float32"), kernel)
    low = keras.ops.min(cams, axis=(1, 2), keepdims=True)
    high = keras.ops.max(cams, axis=(1, 2), keepdims=True)
    return (cams - low) / keras.ops.maximum(high - low, 1e-12)


def explain_pixels(model: keras.Model, pixels: Any) -> tuple[Any, Any]:
    """(probabilities [N,14], CAMs [N,h,w,14] in [0, 1]) for uint8 grey pixels; the `explain` signature."""
    features, probabilities = features_and_probabilities(model, normalise(_model_pixels(model, pixels)))
    return probabilities, class_activation_maps(model, features)


def _next_version(model_base: Path) -> int:
    versions = [int(p.name) for p in model_base.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def _archive(model: keras.Model) -> Any:
    import tensorflow as tf

    pixels_spec = tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 1], tf.uint8, name="image")

    # One traced graph of the network shared by all signatures: tracing DenseNet-121 dominates export
    # time. It also returns the final feature map, which the forward pass computes anyway, so only
    # `explain` does extra work (the CAM product).
    @tf.function(input_signature=[pixels_spec])  # type: ignore[untyped-decorator]
    def core(image: Any) -> Any:
        return features_and_probabilities(model, normalise(_model_pixels(model, image)))

    def serve_pixels(image: Any) -> dict[str, Any]:
        return {OUTPUT_KEY: core(image)[1]}

    def explain(image: Any) -> dict[str, Any]:
        features, probabilities = core(image)
        return {OUTPUT_KEY: probabilities, CAM_KEY: class_activation_maps(model, features)}

    def decode_one(data: Any) -> Any:
        img = tf.io.decode_image(data, channels=1, dtype=tf.uint8, expand_animations=False)
        img = tf.image.resize(img, (IMAGE_SIZE, IMAGE_SIZE), method="bilinear", antialias=True)
        # Round back to uint8 so both signatures see exactly what the preprocess worker produces.
        return tf.cast(tf.clip_by_value(tf.round(img), 0.0, 255.0), tf.uint8)

    def serve_bytes(image_bytes: Any) -> dict[str, Any]:
        pixels = tf.map_fn(
            decode_one, image_bytes, fn_output_signature=tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 1], tf.uint8)
        )
        return {OUTPUT_KEY: core(pixels)[1]}

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
    archive.add_endpoint("explain", explain, input_signature=[pixels_spec])
    return archive


def export_saved_model(
    model: keras.Model,
    model_base: Path,
    version: int | None = None,
    *,
    weights_source: str = "unknown",
    training: dict[str, Any] | None = None,
) -> Path:
    """Write `model_base/<version>/` as a TF Serving SavedModel; the directory appears atomically.

    `training`: what produced the weights (job, data set, metrics), stored in the metadata file.
    """
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
        meta.write_text(json.dumps(_metadata(model, weights_source, training), indent=2) + "\n")
        os.rename(out, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s", final)
    return final


def _metadata(model: keras.Model, weights_source: str, training: dict[str, Any] | None) -> dict[str, Any]:
    trained = image_size_of(model)
    return {
        "labels": list(LABELS),
        "image_size": IMAGE_SIZE,  # what the signatures take; the model resizes to trained_image_size
        "trained_image_size": trained,
        "input": {
            "serving_default": "image uint8 [N,224,224,1]",
            "predict_image": "image_bytes string [N]",
            "explain": "image uint8 [N,224,224,1]",
        },
        "output": {
            "probabilities": "float32 [N,14] in label order",
            "class_activation_maps": f"float32 [N,{trained // 32},{trained // 32},14] in [0, 1] (explain)",
        },
        "normalisation": {"scale": 1 / 255, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "weights": weights_source,
        "keras_version": keras.__version__,
        "training": training,
    }
