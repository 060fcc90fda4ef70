"""The exported SavedModel: signatures, metadata, and agreement with the in-memory Keras model."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from chexstack.labels import LABELS
from tests.integration.conftest import sample_pixels

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def loaded(model_base: Path):  # type: ignore[no-untyped-def]
    import tensorflow as tf

    return tf.saved_model.load(str(model_base / "1"))


def test_signatures_have_tf_serving_names_shapes_and_dtypes(model_base: Path) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((model_base / "1" / "saved_model.pb").read_bytes())
    sigs = saved.meta_graphs[0].signature_def
    assert {"serving_default", "predict_image"} <= set(sigs)

    def dims(info) -> list[int]:  # type: ignore[no-untyped-def]
        return [d.size for d in info.tensor_shape.dim]

    default = sigs["serving_default"]
    assert list(default.inputs) == ["image"] and list(default.outputs) == ["probabilities"]
    assert default.inputs["image"].dtype == 4  # DT_UINT8
    assert dims(default.inputs["image"]) == [-1, 224, 224, 1]
    assert default.outputs["probabilities"].dtype == 1  # DT_FLOAT
    assert dims(default.outputs["probabilities"]) == [-1, 14]
    assert default.method_name == "tensorflow/serving/predict"
    image = sigs["predict_image"]
    assert list(image.inputs) == ["image_bytes"] and image.inputs["image_bytes"].dtype == 7  # DT_STRING
    assert dims(image.inputs["image_bytes"]) == [-1]
    assert dims(image.outputs["probabilities"]) == [-1, 14]


def test_metadata_file_lists_labels_in_canonical_order(model_base: Path) -> None:
    meta = json.loads((model_base / "2" / "assets.extra" / "chexstack.json").read_text())
    assert meta["labels"] == list(LABELS)
    assert meta["image_size"] == 224
    assert meta["normalisation"]["mean"] == [0.485, 0.456, 0.406]
    assert meta["weights"] == "random" and meta["keras_version"]


def test_no_temporary_directories_are_left(model_base: Path) -> None:
    assert sorted(p.name for p in model_base.iterdir()) == ["1", "2"]


def test_exported_model_matches_keras_model(model_base: Path, loaded) -> None:  # type: ignore[no-untyped-def]
    import tensorflow as tf

    from chexstack.model import build_chexnet, export_saved_model, predict_pixels

    model = build_chexnet(seed=1)  # the same seed as version 1 gives the same weights
    pixels = sample_pixels(2)
    expected = np.asarray(predict_pixels(model, pixels))
    got = loaded.signatures["serving_default"](image=tf.constant(pixels))["probabilities"].numpy()
    assert got.shape == (2, 14) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(FileExistsError):
        export_saved_model(model, model_base, version=1)


def test_predict_image_on_png_matches_uint8_signature(loaded) -> None:  # type: ignore[no-untyped-def]
    import tensorflow as tf
    from PIL import Image

    pixels = sample_pixels(2, seed=3)
    encoded = []
    for i, img in enumerate(pixels[..., 0]):
        buf = io.BytesIO()
        # The second picture is 2x larger: the signature must resize it back to 224x224.
        pil = Image.fromarray(img) if i == 0 else Image.fromarray(img).resize((448, 448), Image.NEAREST)
        pil.save(buf, format="PNG")
        encoded.append(buf.getvalue())
    by_pixels = loaded.signatures["serving_default"](image=tf.constant(pixels))["probabilities"].numpy()
    by_bytes = loaded.signatures["predict_image"](image_bytes=tf.constant(encoded))["probabilities"].numpy()
    np.testing.assert_allclose(by_bytes[0], by_pixels[0], atol=1e-5)  # same pixels exactly
    np.testing.assert_allclose(by_bytes[1], by_pixels[1], atol=2e-2)  # up to resampling
    assert not np.allclose(by_pixels[0], by_pixels[1], atol=1e-6)


def test_different_seeds_give_different_versions(model_base: Path) -> None:
    import tensorflow as tf

    pixels = tf.constant(sample_pixels(1))
    outs = [
        tf.saved_model.load(str(model_base / v))
        .signatures["serving_default"](image=pixels)["probabilities"]
        .numpy()
        for v in ("1", "2")
    ]
    assert not np.allclose(outs[0], outs[1], atol=1e-4)


def test_cli_export_prints_version_directory(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "chexnet"
    (out / "4").mkdir(parents=True)
    res = subprocess.run(
        [sys.executable, "-m", "chexstack", "models", "export", "--out", str(out), "--seed", "1"],
        capture_output=True, text=True, check=False, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == str(out / "5")
    assert (out / "5" / "saved_model.pb").is_file()


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    from chexstack.model import WeightsError, build_chexnet

    with pytest.raises(WeightsError, match="not found"):
        build_chexnet(str(tmp_path / "nope.weights.h5"))


def test_backbone_weights_file_loads(tmp_path: Path) -> None:
    from chexstack.model import build_chexnet

    source = build_chexnet(seed=5)
    backbone = source.get_layer("densenet121")
    backbone.save_weights(tmp_path / "backbone.weights.h5")
    source.save_weights(tmp_path / "full.weights.h5")
    full = build_chexnet(str(tmp_path / "full.weights.h5"), seed=9)
    partial = build_chexnet(str(tmp_path / "backbone.weights.h5"), seed=9)
    for got, want in zip(full.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(partial.get_layer("densenet121").get_weights(), backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(
        partial.get_layer("probabilities").get_weights()[0], full.get_layer("probabilities").get_weights()[0]
    )
