"""The CheXNet input transform: geometry, value range and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from chexstack.imageio import Decoded, InvalidImage, decode
from chexstack.settings import IMAGE_SIZE
from chexstack.synth import make_dicom, make_png
from chexstack.transform import preprocess_bytes, resize01, to_model_input
from tests.conftest import LIMITS


def decoded(pixels: np.ndarray) -> Decoded:
    h, w = pixels.shape
    return Decoded(pixels=pixels.astype(np.float32), format="png", width=w, height=h, bits_stored=8)


def test_shape_and_dtype_for_any_input_shape() -> None:
    for shape in ((448, 448), (1000, 700), (300, 1200), (10, 10)):
        out = to_model_input(decoded(np.full(shape, 0.5)))
        assert out.shape == (IMAGE_SIZE, IMAGE_SIZE) == (224, 224)
        assert out.dtype == np.uint8
        assert np.all(out == 128)


def test_black_and_white_map_to_the_full_range() -> None:
    assert np.all(to_model_input(decoded(np.zeros((500, 400)))) == 0)
    assert np.all(to_model_input(decoded(np.ones((500, 400)))) == 255)


def test_bright_square_stays_in_place_exact_factor() -> None:
    p = np.zeros((448, 448), dtype=np.float32)
    p[:112, 336:] = 1.0  # top-right block
    out = to_model_input(decoded(p))
    assert np.all(out[:56, 168:] == 255)
    assert np.all(out[56:, :] == 0) and np.all(out[:, :168] == 0)


def test_bright_square_stays_in_place_non_square_whole_image_no_crop() -> None:
    h, w = 1000, 700
    p = np.zeros((h, w), dtype=np.float32)
    p[800:900, 35:105] = 1.0  # near the bottom-left edge: a centre crop would lose it
    out = to_model_input(decoded(p)).astype(np.float64)
    ys, xs = np.nonzero(out > 127)
    assert ys.size > 0
    # Centroid (850, 70) scales to (190.4, 22.4) in the 224 x 224 output.
    assert ys.mean() == pytest.approx(850 * 224 / h - 0.5, abs=1.5)
    assert xs.mean() == pytest.approx(70 * 224 / w - 0.5, abs=1.5)
    # Area average: the total brightness is kept (antialiased, nothing dropped).
    assert out.sum() / 255 == pytest.approx(100 * 70 * (224 / h) * (224 / w), rel=0.02)


def test_downscaling_is_antialiased() -> None:
    stripes = np.zeros((896, 896), dtype=np.float32)
    stripes[:, ::2] = 1.0  # one-pixel stripes: point sampling would give all-black or all-white
    out = to_model_input(decoded(stripes))
    assert np.all(np.abs(out.astype(int) - 128) <= 1)


def test_resize01_stays_in_unit_range() -> None:
    rng = np.random.default_rng(3)
    out = resize01(rng.random((333, 517)).astype(np.float32))
    assert out.dtype == np.float32 and out.shape == (224, 224)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    with pytest.raises(ValueError, match="2-D"):
        resize01(np.zeros((4, 4, 3), dtype=np.float32))


def test_deterministic_and_preprocess_bytes_matches() -> None:
    rng = np.random.default_rng(0)
    p = rng.random((600, 500)).astype(np.float32)
    png = make_png(p, 16)
    a, b = preprocess_bytes(png, LIMITS), preprocess_bytes(png, LIMITS)
    assert np.array_equal(a, b)
    assert np.array_equal(a, to_model_input(decode(png, LIMITS)))


def test_png_and_dicom_of_the_same_picture_agree() -> None:
    rng = np.random.default_rng(1)
    p = rng.random((256, 256)).astype(np.float32)
    from_png = preprocess_bytes(make_png(p, 16), LIMITS).astype(int)
    from_dicom = preprocess_bytes(make_dicom(p, photometric="MONOCHROME1"), LIMITS).astype(int)
    assert np.abs(from_png - from_dicom).max() <= 1


def test_preprocess_bytes_raises_invalid_image() -> None:
    with pytest.raises(InvalidImage, match="empty file"):
        preprocess_bytes(b"", LIMITS)
