"""Synthetic data sets in the ChestX-ray14 layout (images/ + Data_Entry_2017.csv), for tests, demos and
smoke training runs; a fraction of the images is also written as DICOM (dicom/ + dicom_labels.csv).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian

from chexstack.labels import LABELS, NO_FINDING
from chexstack.synth.draw import render_radiograph
from chexstack.synth.encode import PIXEL_SPACING_MM, make_dicom, make_png

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

DATA_ENTRY_CSV: Final = "Data_Entry_2017.csv"
DICOM_LABELS_CSV: Final = "dicom_labels.csv"
# The real file's header: two columns are named with a comma inside, so they split into four fields.
DATA_ENTRY_HEADER: Final = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
DICOM_LABELS_HEADER: Final = ("file", "labels", "patient_id")

# P(0, 1, 2, 3 findings): about a third of the images are "No Finding".
_FINDING_COUNT_P: Final = (1 / 3, 1 / 3, 0.2, 2 / 15)


@dataclass(frozen=True)
class SynthSummary:
    """What `synthesize` wrote."""

    out: Path
    count: int
    patients: int
    png8: int
    png16: int
    dicom: int
    no_finding: int
    label_counts: dict[str, int]
    csv_path: Path
    dicom_labels_path: Path


def labels_field(findings: Sequence[str]) -> str:
    """ChestX-ray14's "Finding Labels": canonical order joined with '|', or "No Finding"."""
    ordered = [label for label in LABELS if label in set(findings)]
    return "|".join(ordered) if ordered else NO_FINDING


def draw_findings(rng: np.random.Generator) -> list[str]:
    """0-3 distinct findings in canonical order; about a third of draws are empty ("No Finding")."""
    k = int(rng.choice(len(_FINDING_COUNT_P), p=_FINDING_COUNT_P))
    picked = rng.choice(len(LABELS), size=k, replace=False)
    return [LABELS[i] for i in sorted(picked)]


def synthesize(
    out: Path,
    count: int,
    *,
    seed: int,
    size: int,
    dicom_fraction: float,
    on_image: Callable[[str], None] | None = None,
) -> SynthSummary:
    """Write `count` synthetic radiographs in the ChestX-ray14 layout under `out` (deterministic per seed).

    Every image is a PNG in images/ (a quarter of them 16-bit) listed in Data_Entry_2017.csv; about
    `dicom_fraction` of them are also written as DICOM in dicom/ and listed in dicom_labels.csv.
    `on_image(name)` is called after each image (progress reporting).
    """
    from pydicom.uid import JPEG2000Lossless, RLELossless

    if count < 0:
        raise ValueError("count must be >= 0")
    if not 0.0 <= dicom_fraction <= 1.0:
        raise ValueError("dicom_fraction must lie in [0, 1]")
    if size < 64:
        raise ValueError("size must be >= 64")
    images_dir, dicom_dir = out / "images", out / "dicom"
    images_dir.mkdir(parents=True, exist_ok=True)
    dicom_dir.mkdir(parents=True, exist_ok=True)
    meta_rng = np.random.default_rng([seed, 0xC4E5])
    rows: list[list[str]] = []
    dicom_rows: list[list[str]] = []
    label_counts = dict.fromkeys(LABELS, 0)
    png8 = png16 = n_dicom = no_finding = 0
    patient, follow_up, visits = 0, 0, 0
    age, gender, view = 0, "M", "PA"
    for i in range(count):
        if follow_up >= visits:  # next synthetic patient: 1-4 studies each, like the real data set
            patient += 1
            follow_up, visits = 0, int(meta_rng.integers(1, 5))
            age, gender = int(meta_rng.integers(18, 90)), str(meta_rng.choice(["M", "F"]))
        view = "AP" if meta_rng.random() < 0.3 else "PA"
        # One stream per image: image i is the same whatever the count.
        img_rng = np.random.default_rng([seed, i])
        findings = draw_findings(img_rng)
        pixels = render_radiograph(img_rng, findings, size)
        name = f"{patient:08d}_{follow_up:03d}"
        labels = labels_field(findings)
        bits: Literal[8, 16] = 16 if meta_rng.random() < 0.25 else 8
        (images_dir / f"{name}.png").write_bytes(make_png(pixels, bits))
        png16 += bits == 16
        png8 += bits == 8
        spacing = str(PIXEL_SPACING_MM)
        rows.append(
            [
                f"{name}.png",
                labels,
                str(follow_up),
                str(patient),
                str(age),
                gender,
                view,
                str(size),
                str(size),
            ]
        )
        rows[-1] += [spacing, spacing]
        for f in findings:
            label_counts[f] += 1
        no_finding += not findings
        if meta_rng.random() < dicom_fraction:
            pid = f"SYN-{patient:04d}"
            pick = meta_rng.random()
            ts = RLELossless if pick < 0.15 else JPEG2000Lossless if pick < 0.25 else ExplicitVRLittleEndian

            def _fill(ds: Dataset, age: int = age, gender: str = gender, view: str = view) -> None:
                ds.PatientAge = f"{age:03d}Y"
                ds.PatientSex = gender
                ds.ViewPosition = view

            dcm = make_dicom(
                pixels,
                modality=str(meta_rng.choice(["DX", "CR"])),
                photometric=str(meta_rng.choice(["MONOCHROME2", "MONOCHROME1"])),
                patient_name=f"SYNTH^PATIENT^{patient:04d}",
                patient_id=pid,
                transfer_syntax=ts,
                extra=_fill,
            )
            (dicom_dir / f"{name}.dcm").write_bytes(dcm)
            dicom_rows.append([f"dicom/{name}.dcm", labels, pid])
            n_dicom += 1
        follow_up += 1
        if on_image is not None:
            on_image(name)
    csv_path, dicom_csv = out / DATA_ENTRY_CSV, out / DICOM_LABELS_CSV
    with csv_path.open("w", newline="") as fh:
        fh.write(DATA_ENTRY_HEADER + "\n")
        csv.writer(fh, lineterminator="\n").writerows(rows)
    with dicom_csv.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(DICOM_LABELS_HEADER)
        writer.writerows(dicom_rows)
    return SynthSummary(
        out=out,
        count=count,
        patients=patient,
        png8=png8,
        png16=png16,
        dicom=n_dicom,
        no_finding=no_finding,
        label_counts=label_counts,
        csv_path=csv_path,
        dicom_labels_path=dicom_csv,
    )
