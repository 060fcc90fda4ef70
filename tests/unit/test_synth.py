"""Synthetic radiographs: the ChestX-ray14 layout, determinism, and findings that show in the pixels."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from chexstack.commands.data import register
from chexstack.imageio import decode, read_dicom
from chexstack.labels import LABELS, NO_FINDING
from chexstack.synth import (
    DATA_ENTRY_HEADER,
    labels_field,
    make_dicom,
    make_jpeg,
    make_png,
    render_radiograph,
    synthesize,
)
from tests.conftest import LIMITS

SIZE = 256


def render(findings: list[str], seed: int = 5) -> np.ndarray:
    return render_radiograph(np.random.default_rng(seed), findings, SIZE)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, count=24, seed=3, size=SIZE, dicom_fraction=0.5)
    return out


def test_csv_header_and_rows(dataset: Path) -> None:
    text = (dataset / "Data_Entry_2017.csv").read_text()
    lines = text.splitlines()
    assert lines[0] == (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    )
    assert lines[0] == DATA_ENTRY_HEADER
    rows = list(csv.reader(lines[1:]))
    assert len(rows) == 24
    patients: dict[str, int] = {}
    seen_labels = set()
    for row in rows:
        assert len(row) == 11
        name, labels = row[0], row[1]
        assert (dataset / "images" / name).is_file()
        parts = labels.split("|")
        if labels == NO_FINDING:
            seen_labels.add(NO_FINDING)
        else:
            assert set(parts) <= set(LABELS)
            assert parts == [label for label in LABELS if label in parts]  # canonical order
            assert 1 <= len(parts) <= 3
            seen_labels.update(parts)
        assert row[5] in ("M", "F") and row[6] in ("PA", "AP")
        assert name == f"{int(row[3]):08d}_{int(row[2]):03d}.png"
        assert row[7:9] == [str(SIZE), str(SIZE)]
        patients[row[3]] = patients.get(row[3], 0) + 1
    assert NO_FINDING in seen_labels and len(seen_labels) > 5
    assert max(patients.values()) > 1  # several images per synthetic patient


def test_pngs_decode_including_16_bit(dataset: Path) -> None:
    bits = set()
    for path in sorted((dataset / "images").glob("*.png")):
        d = decode(path.read_bytes(), LIMITS)
        assert (d.width, d.height) == (SIZE, SIZE)
        bits.add(d.bits_stored)
    assert bits == {8, 16}


def test_dicom_files_decode_and_carry_fake_phi(dataset: Path) -> None:
    rows = list(csv.DictReader((dataset / "dicom_labels.csv").read_text().splitlines()))
    assert rows and len(rows) == len(list((dataset / "dicom").glob("*.dcm")))
    entries = {r[0]: r[1] for r in csv.reader((dataset / "Data_Entry_2017.csv").read_text().splitlines()[1:])}
    for row in rows:
        data = (dataset / row["file"]).read_bytes()
        d = decode(data, LIMITS)
        assert d.format == "dicom" and d.bits_stored == 12 and d.pixels.shape == (SIZE, SIZE)
        ds = read_dicom(data)
        assert ds.Modality in ("DX", "CR")
        number = row["patient_id"].removeprefix("SYN-")
        assert str(ds.PatientName) == f"SYNTH^PATIENT^{number}" and ds.PatientID == row["patient_id"]
        png_name = Path(row["file"]).with_suffix(".png").name
        assert entries[png_name] == row["labels"]
        # The DICOM is the same radiograph as the PNG.
        png = decode((dataset / "images" / png_name).read_bytes(), LIMITS)
        assert float(np.abs(png.pixels - d.pixels).max()) < 0.01


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 11), (b, 11), (c, 12)):
        synthesize(out, count=6, seed=seed, size=128, dicom_fraction=0.5)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "images").iterdir() and any(
        (a / rel).read_bytes() != (c / rel).read_bytes() for rel in files if (c / rel).exists()
    )


def test_render_is_grey_float_in_unit_range() -> None:
    p = render([])
    assert p.dtype == np.float32 and p.shape == (SIZE, SIZE)
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    # Chest-like: dark lungs either side of a brighter mediastinum.
    lung_l, mediastinum, lung_r = (
        p[90:150, 60:90].mean(),
        p[90:150, 120:136].mean(),
        p[90:150, 170:200].mean(),
    )
    assert mediastinum > lung_l + 0.2 and mediastinum > lung_r + 0.2
    with pytest.raises(ValueError, match="unknown findings"):
        render(["Broken_Bone"])


def test_cardiomegaly_enlarges_the_heart_shadow() -> None:
    normal, big = render([]), render(["Cardiomegaly"])
    # Left of the patient (image right), beside the normal heart border at heart level.
    region = (slice(int(0.45 * SIZE), int(0.72 * SIZE)), slice(int(0.62 * SIZE), int(0.78 * SIZE)))
    assert (big[region] > 0.4).sum() > (normal[region] > 0.4).sum() + 200


def test_effusion_whitens_a_lung_base() -> None:
    normal, wet = render([]), render(["Effusion"])
    bases = (slice(int(0.6 * SIZE), int(0.72 * SIZE)), slice(int(0.15 * SIZE), int(0.85 * SIZE)))
    assert wet[bases].mean() > normal[bases].mean() + 0.02


@pytest.mark.parametrize("label", LABELS)
def test_every_finding_changes_the_pixels(label: str) -> None:
    diff = render([label]) - render([])
    assert float(np.abs(diff).max()) > 0.1
    changed = np.abs(diff) > 0.03
    assert changed.mean() < 0.6  # local, not a different picture
    if label in ("Pneumothorax", "Emphysema"):
        assert diff[diff < 0].sum() < -abs(diff[diff > 0].sum())  # darker: more air
    elif label != "Hernia":
        assert diff[diff > 0].sum() > abs(diff[diff < 0].sum())  # brighter: an opacity


def test_nodule_is_small_and_mass_is_larger() -> None:
    nodule = (render(["Nodule"]) - render([])) > 0.1
    mass = (render(["Mass"]) - render([])) > 0.1
    assert 0 < nodule.sum() < mass.sum()
    assert nodule.sum() < 0.005 * SIZE * SIZE


def test_labels_field() -> None:
    assert labels_field([]) == NO_FINDING
    assert labels_field(["Hernia", "Atelectasis"]) == "Atelectasis|Hernia"


def test_encoders_round_trip() -> None:
    p = render(["Nodule"])
    assert decode(make_png(p, 16), LIMITS).bits_stored == 16
    assert decode(make_jpeg(p, exif_orientation=1, rgb=True), LIMITS).format == "jpeg"
    assert decode(make_dicom(p, modality="CR"), LIMITS).format == "dicom"


def test_empty_dataset_writes_headers(tmp_path: Path) -> None:
    summary = synthesize(tmp_path, count=0, seed=0, size=SIZE, dicom_fraction=0.25)
    assert summary.count == 0
    assert summary.csv_path.read_text() == DATA_ENTRY_HEADER + "\n"
    assert summary.dicom_labels_path.read_text() == "file,labels,patient_id\n"


def test_cli_synth(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        pass

    result = CliRunner().invoke(
        app, ["data", "synth", "--out", str(tmp_path), "--count", "4", "--size", "96"]
    )
    assert result.exit_code == 0, result.output
    assert "4 synthetic images" in result.output and "Data_Entry_2017.csv" in result.output
    assert len(list((tmp_path / "images").glob("*.png"))) == 4
    help_text = CliRunner().invoke(app, ["data", "synth", "--help"]).output
    assert "SYNTHETIC" in help_text
