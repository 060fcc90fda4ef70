"""Decoding and validation of uploads: every accepted kind, and every way an upload can be bad."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import replace

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import JPEG2000Lossless, RLELossless

from chexstack.imageio import InvalidImage, decode, read_dicom, sniff_format
from chexstack.synth import make_dicom, make_jpeg, make_png
from tests.conftest import LIMITS


def picture(h: int = 48, w: int = 64) -> np.ndarray:
    """A horizontal ramp with a bright square in the top-left corner: orientation is visible."""
    p = np.tile(np.linspace(0.1, 0.6, w, dtype=np.float32), (h, 1))
    p[:12, :12] = 1.0
    return p


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


# ------------------------------------------------------------------------------------------ PNG / JPEG


def test_png_8bit_grey() -> None:
    p = picture()
    d = decode(make_png(p, 8), LIMITS)
    assert (d.format, d.width, d.height, d.bits_stored) == ("png", 64, 48, 8)
    assert d.pixels.dtype == np.float32 and d.pixels.shape == (48, 64)
    np.testing.assert_allclose(d.pixels, p, atol=0.5 / 255 + 1e-6)


def test_png_16bit_grey_keeps_precision() -> None:
    p = picture()
    d = decode(make_png(p, 16), LIMITS)
    assert d.bits_stored == 16
    np.testing.assert_allclose(d.pixels, p, atol=1e-4)


def test_png_rgb_is_converted_to_luminance() -> None:
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[:, :4] = (255, 0, 0)
    rgb[:, 4:] = (200, 200, 200)
    d = decode(png_bytes(Image.fromarray(rgb)), LIMITS)
    assert d.format == "png" and d.bits_stored == 8
    assert d.pixels[0, 0] == pytest.approx(76 / 255, abs=1.5 / 255)  # ITU-R 601 luma of pure red
    assert d.pixels[0, 7] == pytest.approx(200 / 255, abs=1.5 / 255)


def test_png_rgba_and_palette() -> None:
    grey = (picture() * 255).round().astype(np.uint8)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 128)])
    np.testing.assert_allclose(
        decode(png_bytes(Image.fromarray(rgba)), LIMITS).pixels, grey / 255, atol=1.5 / 255
    )
    pal = Image.new("P", (4, 1))
    pal.putpalette([v for i in range(256) for v in (i, i, i)])
    pal.putdata([0, 50, 128, 255])
    np.testing.assert_allclose(
        decode(png_bytes(pal), LIMITS).pixels[0], [0, 50 / 255, 128 / 255, 1.0], atol=1e-6
    )


@pytest.mark.parametrize("rgb", [False, True])
def test_jpeg_grey_and_rgb(rgb: bool) -> None:
    p = picture(64, 64)
    d = decode(make_jpeg(p, quality=95, rgb=rgb), LIMITS)
    assert (d.format, d.width, d.height, d.bits_stored) == ("jpeg", 64, 64, 8)
    assert float(np.abs(d.pixels - p).mean()) < 0.02


def test_jpeg_exif_orientation_6_is_applied() -> None:
    p = picture(48, 96)  # landscape, bright square top-left
    raw = decode(make_jpeg(p, quality=95), LIMITS)
    turned = decode(make_jpeg(p, quality=95, exif_orientation=6), LIMITS)
    assert raw.pixels.shape == (48, 96)
    assert turned.pixels.shape == (96, 48) and (turned.width, turned.height) == (48, 96)
    # Orientation 6 = rotate 90 degrees clockwise for display: top-left moves to top-right.
    assert turned.pixels[:10, -10:].mean() > 0.9
    assert turned.pixels[:10, :10].mean() < 0.7
    np.testing.assert_allclose(turned.pixels, np.rot90(raw.pixels, k=-1), atol=0.06)


# ----------------------------------------------------------------------------------------------- DICOM


@pytest.mark.parametrize("modality", ["DX", "CR"])
def test_dicom_dx_and_cr(modality: str) -> None:
    p = picture()
    d = decode(make_dicom(p, modality=modality), LIMITS)
    assert (d.format, d.width, d.height, d.bits_stored) == ("dicom", 64, 48, 12)
    np.testing.assert_allclose(d.pixels, p, atol=0.5 / 4095 + 1e-6)


def test_monochrome1_is_inverted_to_the_same_picture() -> None:
    p = picture()
    m1 = decode(make_dicom(p, photometric="MONOCHROME1"), LIMITS)
    m2 = decode(make_dicom(p, photometric="MONOCHROME2"), LIMITS)
    ds1 = read_dicom(make_dicom(p, photometric="MONOCHROME1"))
    assert int(ds1.pixel_array[0, 0]) == 0  # the bright corner is stored as 0: really inverted
    np.testing.assert_allclose(m1.pixels, m2.pixels, atol=1.01 / 4095)  # at most one 12-bit step of rounding
    assert m1.pixels[0, 0] == pytest.approx(1.0)


def test_rescale_and_window_are_applied() -> None:
    stored = np.array([[0, 300, 425, 550, 800, 4095]], dtype=np.float64)

    def window(ds: Dataset) -> None:
        ds.RescaleSlope = 2
        ds.RescaleIntercept = -100
        ds.WindowCenter = [1000, 40]  # only the first window is used
        ds.WindowWidth = [1001, 400]

    d = decode(make_dicom((stored / 4095).astype(np.float32), extra=window), LIMITS)
    value = 2 * stored - 100
    expected = np.clip((value - 999.5) / 1000 + 0.5, 0, 1)
    np.testing.assert_allclose(d.pixels, expected, atol=1e-5)
    np.testing.assert_allclose(d.pixels[0], [0.0, 0.0005, 0.2505, 0.5005, 1.0, 1.0], atol=1e-5)


def test_no_window_is_min_max_normalised() -> None:
    def no_window(ds: Dataset) -> None:
        del ds.WindowCenter
        del ds.WindowWidth

    p = np.linspace(0.2, 0.6, 64, dtype=np.float32).reshape(8, 8)
    d = decode(make_dicom(p, extra=no_window), LIMITS)
    assert d.pixels.min() == pytest.approx(0.0) and d.pixels.max() == pytest.approx(1.0)
    np.testing.assert_allclose(d.pixels, (p - 0.2) / 0.4, atol=1e-3)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_dicom_equals_uncompressed(syntax: pydicom.uid.UID) -> None:
    p = picture()
    packed = make_dicom(p, transfer_syntax=syntax, photometric="MONOCHROME1")
    assert read_dicom(packed).file_meta.TransferSyntaxUID == syntax
    plain = decode(make_dicom(p, photometric="MONOCHROME1"), LIMITS)
    np.testing.assert_allclose(decode(packed, LIMITS).pixels, plain.pixels, atol=1e-6)


def test_multiframe_takes_the_first_frame() -> None:
    p = picture()

    def two_frames(ds: Dataset) -> None:
        ds.NumberOfFrames = 2
        ds.PixelData = ds.PixelData + np.zeros((48, 64), dtype=np.uint16).tobytes()

    d = decode(make_dicom(p, extra=two_frames), LIMITS)
    np.testing.assert_allclose(d.pixels, p, atol=0.5 / 4095 + 1e-6)


def test_rgb_dicom_is_converted_to_grey() -> None:
    p = picture()

    def rgb(ds: Dataset) -> None:
        stored = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(48, 64)
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.PixelData = np.ascontiguousarray(np.dstack([stored] * 3)).tobytes()

    d = decode(make_dicom(p, extra=rgb), LIMITS)
    np.testing.assert_allclose(d.pixels, p, atol=1e-3)


def test_read_dicom_keeps_nested_sequences() -> None:
    def phi(ds: Dataset) -> None:
        item = Dataset()
        item.PatientName = "SYNTH^NESTED"
        ds.OtherPatientIDsSequence = DicomSequence([item])

    ds = read_dicom(
        make_dicom(picture(), patient_name="SYNTH^PATIENT^0007", patient_id="SYN-0007", extra=phi)
    )
    assert str(ds.PatientName) == "SYNTH^PATIENT^0007" and ds.PatientID == "SYN-0007"
    assert str(ds.OtherPatientIDsSequence[0].PatientName) == "SYNTH^NESTED"


# ------------------------------------------------------------------------------------------ bad inputs


def huge_png(w: int = 30000, h: int = 30000) -> bytes:
    """A tiny file whose header claims a huge image."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_empty_file() -> None:
    with pytest.raises(InvalidImage, match=r"^empty file \(0 bytes\)$"):
        decode(b"", LIMITS)


def test_truncated_png_and_jpeg() -> None:
    rng = np.random.default_rng(0)
    noisy = rng.random((128, 128)).astype(np.float32)  # incompressible, so truncation cuts pixel data
    png, jpeg = make_png(noisy), make_jpeg(noisy)
    with pytest.raises(InvalidImage, match="truncated PNG"):
        decode(png[: len(png) // 2], LIMITS)
    with pytest.raises(InvalidImage, match="truncated JPEG"):
        decode(jpeg[: len(jpeg) // 2], LIMITS)
    with pytest.raises(InvalidImage, match="PNG"):
        decode(png[:20], LIMITS)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_text_named_png_is_rejected_by_content() -> None:
    with pytest.raises(InvalidImage, match=r"unsupported format \(looks like text\)"):
        decode(b"this is not an image, whatever the file is called: xray.png\n" * 3, LIMITS)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_image_formats_are_named(fmt: str) -> None:
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format=fmt)
    with pytest.raises(InvalidImage, match=f"unsupported format {fmt}"):
        decode(buf.getvalue(), LIMITS)


def test_pdf_and_binary_garbage() -> None:
    with pytest.raises(InvalidImage, match="unsupported format PDF"):
        sniff_format(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n")
    with pytest.raises(InvalidImage, match="unrecognised content"):
        decode(bytes(range(256)), LIMITS)


def test_over_the_byte_limit() -> None:
    data = make_png(picture())
    with pytest.raises(InvalidImage, match=rf"^file is {len(data)} bytes, over the limit of 100$"):
        decode(data, replace(LIMITS, max_bytes=100))


def test_png_header_claiming_a_huge_image() -> None:
    data = huge_png()
    assert len(data) < 100
    with pytest.raises(
        InvalidImage, match=r"^image is 30000x30000 = 900000000 pixels, over the limit of 60000000$"
    ):
        decode(data, LIMITS)


def test_jpeg_header_claiming_a_huge_image() -> None:
    data = bytearray(make_jpeg(picture()))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 20000, 20000)
    with pytest.raises(InvalidImage, match="image is 20000x20000 = 400000000 pixels"):
        decode(bytes(data), LIMITS)


def test_pixel_limit_applies_to_every_format() -> None:
    p = picture()  # 64 x 48 = 3072 pixels
    for data in (make_png(p), make_jpeg(p), make_dicom(p)):
        with pytest.raises(InvalidImage, match="64x48 = 3072 pixels, over the limit of 3000"):
            decode(data, replace(LIMITS, max_pixels=3000))
        assert decode(data, replace(LIMITS, max_pixels=3072)).width == 64


def test_dicom_without_pixel_data() -> None:
    with pytest.raises(InvalidImage, match=r"^DICOM has no pixel data$"):
        decode(make_dicom(picture(), with_pixels=False), LIMITS)


def test_dicom_ct_and_missing_modality() -> None:
    with pytest.raises(
        InvalidImage, match=r"^unsupported modality CT: only CR and DX radiographs are accepted$"
    ):
        decode(make_dicom(picture(), modality="CT"), LIMITS)

    def no_modality(ds: Dataset) -> None:
        del ds.Modality

    with pytest.raises(InvalidImage, match="no Modality"):
        decode(make_dicom(picture(), extra=no_modality), LIMITS)


def test_garbage_after_dicm_preamble() -> None:
    for tail in (b"", b"garbage" * 20, bytes(range(256)) * 4):
        data = b"\x00" * 128 + b"DICM" + tail
        assert sniff_format(data) == "dicom"
        with pytest.raises(InvalidImage, match="DICOM"):
            decode(data, LIMITS)


def test_read_dicom_rejects_non_dicom() -> None:
    with pytest.raises(InvalidImage, match="not a DICOM file"):
        read_dicom(make_png(picture()))


def test_truncated_dicom() -> None:
    data = make_dicom(picture())
    with pytest.raises(InvalidImage):
        decode(data[: len(data) - 1000], LIMITS)


def test_corrupted_inputs_only_ever_raise_invalid_image() -> None:
    """Random byte damage anywhere: the decoder either copes or says why, never crashes differently."""
    rng = np.random.default_rng(7)
    p = picture()
    originals = [
        make_png(p),
        make_png(p, 16),
        make_jpeg(p),
        make_dicom(p),
        make_dicom(p, transfer_syntax=RLELossless),
    ]
    for original in originals:
        for _ in range(25):
            data = bytearray(original)
            for pos in rng.integers(8, len(data), size=int(rng.integers(1, 6))):
                data[pos] = int(rng.integers(256))
            try:
                d = decode(bytes(data), LIMITS)
            except InvalidImage:
                continue
            assert d.pixels.dtype == np.float32 and d.pixels.ndim == 2
            assert float(d.pixels.min()) >= 0.0 and float(d.pixels.max()) <= 1.0
