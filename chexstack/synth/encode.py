"""Encoding synthetic pixels as the files uploads arrive in: PNG (8/16-bit), JPEG and DICOM with fake PHI.

Every patient name and identifier is fake (SYNTH^PATIENT^0007, SYN-0007), and the files are
deterministic: the same pixels and arguments give byte-identical output.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Literal

import numpy as np
from PIL import Image
from pydicom.uid import UID, ExplicitVRLittleEndian

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

PIXEL_SPACING_MM: Final = 0.143  # ChestX-ray14's typical spacing, kept so the CSV looks like the real one
SYNTH_UID_PREFIX: Final = "1.2.826.0.1.3680043.8.498."  # pydicom's prefix for generated UIDs


def _quantise(pixels01: np.ndarray, levels: int) -> np.ndarray:
    out: np.ndarray = np.rint(np.clip(pixels01, 0.0, 1.0) * levels)
    return out


def make_png(pixels01: np.ndarray, bits: Literal[8, 16] = 8) -> bytes:
    """Grey PNG (8- or 16-bit) of float [0, 1] pixels."""
    if bits == 16:
        img = Image.fromarray(_quantise(pixels01, 65535).astype(np.uint16))
    else:
        img = Image.fromarray(_quantise(pixels01, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_jpeg(
    pixels01: np.ndarray, quality: int = 90, exif_orientation: int | None = None, rgb: bool = False
) -> bytes:
    """JPEG of float [0, 1] grey pixels; optionally RGB, and an EXIF Orientation tag (pixels not rotated)."""
    grey = _quantise(pixels01, 255).astype(np.uint8)
    img = Image.fromarray(np.stack([grey] * 3, axis=-1) if rgb else grey)
    buf = io.BytesIO()
    if exif_orientation is None:
        img.save(buf, format="JPEG", quality=quality)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation  # Orientation
        img.save(buf, format="JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


def _uid(*parts: str) -> UID:
    from pydicom.uid import generate_uid

    # Derived from content, not random, so the same inputs always give byte-identical files.
    return generate_uid(SYNTH_UID_PREFIX, entropy_srcs=list(parts))


def make_dicom(
    pixels01: np.ndarray,
    *,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    patient_name: str = "SYNTH^PATIENT",
    patient_id: str = "SYN-0001",
    transfer_syntax: UID = ExplicitVRLittleEndian,
    with_pixels: bool = True,
    extra: Callable[[Dataset], None] | None = None,
) -> bytes:
    """A DICOM Part 10 file of float [0, 1] display pixels: 12 bits stored in 16, with fake PHI.

    Stored values are inverted for MONOCHROME1 so every photometric shows the same picture. The
    rescale (slope 1, intercept -1024) and window (centre 1024, width 4096) are chosen so that a
    conforming viewer maps stored value s to display s / 4095 exactly. `extra` runs on the dataset
    before compression, e.g. to add nested sequences with PHI or change the window.
    transfer_syntax: ExplicitVRLittleEndian (default), RLELossless, JPEG2000Lossless, or any other
    syntax pydicom can encode with the installed plugins.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
    )

    ts = transfer_syntax
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, not {photometric!r}")
    if pixels01.ndim != 2:
        raise ValueError(f"expected 2-D grey pixels, got shape {pixels01.shape}")
    display = np.clip(pixels01, 0.0, 1.0)
    stored = _quantise(1.0 - display if photometric == "MONOCHROME1" else display, 4095).astype(np.uint16)
    digest = hashlib.sha256(stored.tobytes()).hexdigest()
    sop_class = (
        ComputedRadiographyImageStorage if modality == "CR" else DigitalXRayImageStorageForPresentation
    )
    sop_uid = _uid("sop", patient_id, modality, photometric, str(ts), digest)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = _uid("study", patient_id)
    ds.SeriesInstanceUID = _uid("series", patient_id, modality)
    ds.Modality = modality
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20200101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = "SYNACC" + "".join(ch for ch in patient_id if ch.isdigit())
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "CheXStack synthetic"
    ds.InstitutionName = "SYNTHETIC GENERAL HOSPITAL"
    ds.ReferringPhysicianName = "SYNTH^REFERRER"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImagerPixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.set_pixel_data(stored, photometric, 12, generate_instance_uid=False)
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 1024
    ds.WindowWidth = 4096
    if extra is not None:
        extra(ds)
    if not with_pixels:
        del ds.PixelData
    elif ts != ExplicitVRLittleEndian:
        ds.compress(ts, generate_instance_uid=False)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
