"""Decode and validate uploaded radiographs (PNG, JPEG, DICOM) into float grey pixels.

The type is decided by content, never by file name. Size limits are enforced from the header before
any pixel is decoded, so a small file claiming a huge image (a decompression bomb) costs nothing.
Every failure is an `InvalidImage` whose message is the user-facing reason.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, SupportsFloat

import numpy as np
from PIL import Image, ImageFile, ImageOps

from chexstack.settings import Limits

if TYPE_CHECKING:
    import pydicom

ImageFormat = Literal["png", "jpeg", "dicom"]

PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC: Final = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET: Final = 128
ACCEPTED_MODALITIES: Final = ("CR", "DX")

# Recognised but unsupported formats, so the reason can name what was uploaded.
_OTHER_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"%PDF-", "PDF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
    (b"qoif", "QOI"),
)
# SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_JPEG_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class InvalidImage(ValueError):
    """An upload that is not an acceptable radiograph; str(exc) is the reason shown to the user."""


@dataclass(frozen=True)
class Decoded:
    """Grey pixels in display sense (higher = brighter), float32 in [0, 1], shape (height, width)."""

    pixels: np.ndarray
    format: ImageFormat
    width: int
    height: int
    bits_stored: int


def sniff_format(data: bytes) -> ImageFormat:
    """The image format from magic bytes; raises InvalidImage naming what the content looks like."""
    if not data:
        raise InvalidImage("empty file (0 bytes)")
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    for magic, name in _OTHER_MAGIC:
        if data.startswith(magic):
            raise InvalidImage(f"unsupported format {name}: only PNG, JPEG and DICOM are accepted")
    if data[4:12] in (b"ftypavif", b"ftypheic") or (data.startswith(b"RIFF") and data[8:12] == b"WEBP"):
        raise InvalidImage("unsupported format (AVIF/HEIC/WebP): only PNG, JPEG and DICOM are accepted")
    if _looks_like_text(data[:1024]):
        raise InvalidImage("unsupported format (looks like text)")
    raise InvalidImage(
        f"unsupported format (unrecognised content starting {data[:8].hex()}): "
        "only PNG, JPEG and DICOM are accepted"
    )


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sample is still text.
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\t\r\n\f" for ch in text)


def decode(data: bytes, limits: Limits) -> Decoded:
    """Validate and decode one upload; raises InvalidImage with the reason."""
    if not data:
        raise InvalidImage("empty file (0 bytes)")
    if len(data) > limits.max_bytes:
        raise InvalidImage(f"file is {len(data)} bytes, over the limit of {limits.max_bytes}")
    fmt = sniff_format(data)
    try:
        if fmt == "dicom":
            return _decode_dicom(data, limits)
        return _decode_pillow(data, fmt, limits)
    except InvalidImage:
        raise
    except Exception as exc:  # a decoder bug or an input it did not expect: still the user's bad file
        raise InvalidImage(f"cannot decode {fmt}: {type(exc).__name__}: {exc}") from exc


def _check_pixels(width: int, height: int, limits: Limits) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image is {width}x{height}: width and height must be positive")
    if width * height > limits.max_pixels:
        raise InvalidImage(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {limits.max_pixels}"
        )


def _header_size(data: bytes, fmt: ImageFormat) -> tuple[int, int] | None:
    """(width, height) read straight from the header, before Pillow sees the file."""
    if fmt == "png":
        if len(data) >= 24 and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return int(w), int(h)
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or scan data before any frame header
            return None
        (seglen,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _JPEG_SOF:
            if i + 9 > len(data):
                return None
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(w), int(h)
        i += 2 + seglen
    return None


def _decode_pillow(data: bytes, fmt: ImageFormat, limits: Limits) -> Decoded:
    name = fmt.upper()
    size = _header_size(data, fmt)
    if size is None:
        raise InvalidImage(f"truncated or malformed {name}: no image header")
    _check_pixels(*size, limits)
    # Truncated input must fail loudly; never let another module's setting make Pillow pad with grey.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False")
    try:
        with warnings.catch_warnings():
            # Our own max_pixels (checked above) is the limit; Pillow's global default is only a backstop.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[name])
            _check_pixels(img.width, img.height, limits)
            img.load()
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"image is over the decompression-bomb limit: {exc}") from exc
    except (OSError, SyntaxError, EOFError, ValueError, struct.error) as exc:
        text = str(exc)
        if isinstance(exc, EOFError) or "truncat" in text.lower():
            raise InvalidImage(f"truncated {name}") from exc
        raise InvalidImage(f"cannot decode {fmt}: {text}") from exc
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # a malformed EXIF block must not hide an otherwise good image
        raise InvalidImage(f"cannot decode {fmt}: bad EXIF orientation: {exc}") from exc
    pixels, bits = _pillow_grey(img)
    height, width = pixels.shape
    return Decoded(pixels=pixels, format=fmt, width=width, height=height, bits_stored=bits)


def _pillow_grey(img: Image.Image) -> tuple[np.ndarray, int]:
    """Luminance as float32 [0, 1] and the bit depth it came from."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return (np.asarray(img).astype(np.float32) / 65535.0), 16
    if img.mode == "I":  # 16-bit PNG on some Pillow versions; values are 0..65535
        arr = np.asarray(img).astype(np.float32)
        return np.clip(arr / 65535.0, 0.0, 1.0), 16
    if img.mode == "F":
        arr = np.asarray(img).astype(np.float32)
        return np.clip(arr, 0.0, 1.0), 32
    if img.mode == "1":
        return np.asarray(img).astype(np.float32), 8
    if img.mode != "L":
        # RGB, RGBA, P, LA, CMYK, YCbCr: ITU-R 601 luma; alpha is ignored because radiographs are opaque.
        img = img.convert("RGB").convert("L")
    return np.asarray(img).astype(np.float32) / 255.0, 8


def read_dicom(data: bytes) -> pydicom.Dataset:
    """Parse a DICOM Part 10 file (preamble + "DICM"); raises InvalidImage if it is not a usable one."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not data:
        raise InvalidImage("empty file (0 bytes)")
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] != b"DICM":
        raise InvalidImage("not a DICOM file: no 'DICM' prefix after the 128-byte preamble")
    try:
        with warnings.catch_warnings():
            # pydicom warns (rather than fails) on odd values; structural problems still raise below.
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data))
            tsuid = ds.file_meta.get("TransferSyntaxUID") if ds.file_meta is not None else None
            if not tsuid:
                raise InvalidImage("malformed DICOM: file meta information has no TransferSyntaxUID")
            if len(ds) == 0:
                raise InvalidImage("malformed DICOM: no data elements after the file meta information")
            for _ in ds.iterall():  # converts every raw element now, so bad encodings fail here
                pass
    except InvalidImage:
        raise
    except (InvalidDicomError, EOFError) as exc:
        raise InvalidImage(f"malformed DICOM: {exc}") from exc
    except Exception as exc:
        raise InvalidImage(f"cannot decode dicom: {type(exc).__name__}: {exc}") from exc
    return ds


def _decode_dicom(data: bytes, limits: Limits) -> Decoded:
    ds = read_dicom(data)
    modality = str(ds.get("Modality", "") or "").strip()
    if not modality:
        raise InvalidImage("DICOM has no Modality: only CR and DX radiographs are accepted")
    if modality not in ACCEPTED_MODALITIES:
        raise InvalidImage(f"unsupported modality {modality}: only CR and DX radiographs are accepted")
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise InvalidImage("DICOM float pixel data is not supported")
        raise InvalidImage("DICOM has no pixel data")
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not rows or not cols:
        raise InvalidImage("DICOM has no Rows/Columns")
    _check_pixels(int(cols), int(rows), limits)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB") and not photometric.startswith("YBR_"):
        raise InvalidImage(
            f"unsupported photometric interpretation {photometric or '(missing)'}: "
            "expected MONOCHROME1 or MONOCHROME2 (RGB/YBR are converted to grey)"
        )
    arr = _dicom_first_frame(ds)
    bits_stored = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    if arr.ndim == 3:
        # Colour is not valid for CR/DX but some exporters write it; luma keeps such files usable.
        rgb = arr.astype(np.float32) / float(2**bits_stored - 1)
        grey = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        return _dicom_decoded(np.clip(grey, 0.0, 1.0), bits_stored)
    if arr.ndim != 2:
        raise InvalidImage(f"cannot decode dicom: unexpected pixel array shape {arr.shape}")
    pixels = _dicom_display(arr, ds)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    return _dicom_decoded(pixels, bits_stored)


def _dicom_first_frame(ds: pydicom.Dataset) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        # index=0 decodes only the first frame, so a long multi-frame file costs one frame of memory.
        arr = pixel_array(ds, index=0)
    except Exception as exc:
        tsuid = ds.file_meta.get("TransferSyntaxUID")
        name = getattr(tsuid, "name", str(tsuid))
        raise InvalidImage(f"cannot decode dicom pixel data ({name}): {exc}") from exc
    if int(ds.get("NumberOfFrames") or 1) > 1 and arr.ndim == 4:
        arr = arr[0]
    return np.asarray(arr)


def _dicom_display(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Modality LUT, then the first VOI LUT or window, scaled to [0, 1] (MONOCHROME2 sense)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    voi_seq = ds.get("VOILUTSequence")
    if voi_seq:
        item = voi_seq[0]
        lut_bits = int(item.LUTDescriptor[2])
        out = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), dtype=np.float64)
        return np.clip(out / float(2**lut_bits - 1), 0.0, 1.0).astype(np.float32)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
        return _window(values, center, width, function)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - lo) / (hi - lo)).astype(np.float32)


def _first(value: object) -> float | None:
    """WindowCenter/WindowWidth may be multi-valued: the first is the default view."""
    if value is None or value == "":
        return None
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):  # list, tuple, MultiValue
        return float(value[0]) if len(value) else None
    if isinstance(value, SupportsFloat | str):  # DSfloat, DSdecimal, IS or a plain number
        return float(value)
    raise ValueError(f"not a number: {value!r}")


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing straight to [0, 1].

    Done here rather than with pydicom's apply_windowing because that maps onto the stored-value range,
    which would have to be undone to get [0, 1].
    """
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "LINEAR_EXACT":
        out = (values - (center - width / 2.0)) / width
    else:
        if width < 1.0:
            raise InvalidImage(f"invalid DICOM window width {width}: LINEAR needs >= 1")
        out = (values - (center - 0.5)) / max(width - 1.0, 1e-9) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _dicom_decoded(pixels: np.ndarray, bits_stored: int) -> Decoded:
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    height, width = pixels.shape
    return Decoded(pixels=pixels, format="dicom", width=width, height=height, bits_stored=bits_stored)
