"""`chexstack data prepare` end to end on `chexstack data synth` output: the shards training reads."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner, Result

from chexstack.commands.data import register
from chexstack.datasets import parse_labels
from chexstack.deid import pseudonym
from chexstack.imageio import decode
from chexstack.shards import ShardedDataset
from chexstack.transform import to_model_input
from tests.conftest import LIMITS

pytestmark = pytest.mark.integration

COUNT = 40
KEY = "integration-test-key"


def cli(*args: str) -> Result:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        pass

    return CliRunner().invoke(app, ["data", *args], env={"CHEXSTACK_PSEUDONYM_KEY": KEY})


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    result = cli("synth", "--out", str(out), "--count", str(COUNT), "--size", "256", "--seed", "2")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def prepared(source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    out = tmp_path_factory.mktemp("prepared") / "shards"
    result = cli(
        "prepare", str(source), "--out", str(out), "--workers", "2", "--shard-size", "16", "--seed", "5"
    )
    assert result.exit_code == 0, result.output
    return out, result


def entries(source: Path) -> dict[str, list[str]]:
    with (source / "Data_Entry_2017.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    return {row[0]: row for row in rows}


def test_counts_splits_and_summary(source: Path, prepared: tuple[Path, Result]) -> None:
    out, result = prepared
    ds = ShardedDataset.open(out)
    splits = ds.meta["splits"]
    assert ds.image_size == 224 and ds.meta["source"]["kind"] == "chestxray14"
    assert sum(s["count"] for s in splits.values()) == COUNT
    assert splits["val"]["count"] >= 1 and splits["test"]["count"] >= 1
    assert len(splits["train"]["shards"]) == -(-splits["train"]["count"] // 16)
    rows = entries(source)
    patients: dict[str, set[str]] = {}
    for name in ("train", "val", "test"):
        reader = ds.split(name)
        assert len(reader) == splits[name]["count"]
        index = reader.index()
        patients[name] = {p for _, p in index}
        assert len(patients[name]) == splits[name]["patients"]
        _, labels = reader.all()
        for (image, patient), label_row in zip(index, labels, strict=True):
            assert tuple(label_row) == parse_labels(rows[image][1])
            assert patient == pseudonym(KEY.encode(), rows[image][3])
    # Every patient in exactly one split, and all of them somewhere.
    assert sum(len(p) for p in patients.values()) == len(set().union(*patients.values()))
    assert len(set().union(*patients.values())) == len({r[3] for r in rows.values()})
    for name in ("train", "val", "test"):
        assert f"{name:<5} {splits[name]['count']:>7} images" in result.output
    assert f"prepared {COUNT} images" in result.output and f"checksum {ds.checksum}" in result.output


def test_pixels_identical_to_the_preprocess_worker(source: Path, prepared: tuple[Path, Result]) -> None:
    ds = ShardedDataset.open(prepared[0])
    for split in ("train", "test"):
        reader = ds.split(split)
        picks = np.array([0, len(reader) - 1])
        images, _ = reader.take(picks)
        for k, i in enumerate(picks):
            name = reader.index()[i][0]
            expected = to_model_input(decode((source / "images" / name).read_bytes(), LIMITS))
            np.testing.assert_array_equal(images[k], expected)


def test_same_seed_same_checksum(source: Path, prepared: tuple[Path, Result], tmp_path: Path) -> None:
    first = ShardedDataset.open(prepared[0])
    again = tmp_path / "again"
    result = cli(
        "prepare", str(source), "--out", str(again), "--workers", "1", "--shard-size", "16", "--seed", "5"
    )
    assert result.exit_code == 0, result.output
    assert ShardedDataset.open(again).checksum == first.checksum
    other = tmp_path / "other"
    result = cli(
        "prepare", str(source), "--out", str(other), "--workers", "1", "--shard-size", "16", "--seed", "6"
    )
    assert result.exit_code == 0, result.output
    other_ds = ShardedDataset.open(other)
    assert other_ds.checksum != first.checksum
    assert other_ds.split("test").index() != first.split("test").index()


def test_bad_rows_stop_or_are_skipped(source: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(source, bad)
    csv_path = bad / "Data_Entry_2017.csv"
    lines = csv_path.read_text().splitlines()
    names = [line.split(",")[0] for line in lines[1:]]
    (bad / "images" / names[2]).write_bytes(b"not an image at all")  # line 4
    (bad / "images" / names[5]).unlink()  # line 7
    lines[9] = lines[9].replace(lines[9].split(",")[1], "Pneumonia|Tuberculosis", 1)  # line 10
    csv_path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"

    result = cli("prepare", str(bad), "--out", str(out), "--workers", "1", "--image-size", "32")
    assert result.exit_code == 1
    assert "3 bad row(s); nothing was written" in result.output
    assert f"line 4: {names[2]}: invalid image: unsupported format (looks like text)" in result.output
    assert f"line 7: {names[5]}: image not found" in result.output
    assert "line 10: " in result.output and "unknown label 'Tuberculosis'" in result.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad"]

    args = ["prepare", str(bad), "--out", str(out), "--workers", "1", "--image-size", "32", "--skip-bad-rows"]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert "skipped 3 bad row(s)" in result.output
    meta = json.loads((out / "dataset.json").read_text())
    assert [r["line"] for r in meta["skipped_rows"]] == [4, 7, 10]
    assert sum(s["count"] for s in meta["splits"].values()) == COUNT - 3
    assert ShardedDataset.open(out).split("train").all()[0].shape[1:] == (32, 32)

    result = cli(*args)
    assert result.exit_code == 2 and "not empty (pass --force" in result.output
    assert cli(*args, "--force").exit_code == 0


def test_manifest_with_dicom(source: Path, tmp_path: Path) -> None:
    manifest = source / "dicom_labels.csv"
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows, "synth wrote no DICOM; raise the count"
    out = tmp_path / "dicom"
    result = cli("prepare", str(manifest), "--out", str(out), "--workers", "1", "--test-fraction", "0.2")
    assert result.exit_code == 0, result.output
    ds = ShardedDataset.open(out)
    assert ds.meta["source"]["kind"] == "manifest"
    assert sum(s["count"] for s in ds.meta["splits"].values()) == len(rows)
    by_file = {r["file"]: r for r in rows}
    train = ds.split("train")
    images, labels = train.take(np.arange(min(3, len(train))))
    for k, (name, patient) in enumerate(train.index()[: len(images)]):
        row = by_file[name]
        assert patient == pseudonym(KEY.encode(), row["patient_id"])
        assert tuple(labels[k]) == parse_labels(row["labels"])
        dcm = decode((source / name).read_bytes(), LIMITS)
        assert dcm.format == "dicom"
        np.testing.assert_array_equal(images[k], to_model_input(dcm))
    written = "".join(p.read_text() for p in out.glob("*.index.csv")) + (out / "dataset.json").read_text()
    assert "SYN-" not in written  # no raw patient id anywhere in the output
