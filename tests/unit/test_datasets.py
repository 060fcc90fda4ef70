"""Reading ChestX-ray14 folders and manifests, patient splits, bad rows, and `prepare` without the CLI."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chexstack import synth
from chexstack.datasets import (
    DATA_ENTRY_HEADER,
    BadRowsError,
    DatasetError,
    Row,
    assign_splits,
    detect_format,
    parse_labels,
    prepare,
    read_chestxray14,
    read_dataset,
    read_manifest,
    shard_pixels,
)
from chexstack.deid import pseudonym
from chexstack.imageio import decode
from chexstack.labels import LABELS
from chexstack.shards import ShardedDataset
from chexstack.transform import to_model_input
from tests.conftest import LIMITS

KEY = b"test-key"


def png(seed: int, size: int = 40) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def entry(name: str, labels: str, patient: int) -> str:
    return f"{name},{labels},0,{patient},40,M,PA,40,40,0.143,0.143"


def cxr14(root: Path, rows: list[str], folders: tuple[str, ...] = ("images",)) -> Path:
    """A ChestX-ray14 folder with an image for every listed row (spread over `folders`)."""
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        name = row.split(",")[0]
        (root / folders[i % len(folders)] / name).write_bytes(png(i))
    (root / "Data_Entry_2017.csv").write_text("\n".join([DATA_ENTRY_HEADER, *rows]) + "\n")
    return root


def test_parse_labels() -> None:
    assert parse_labels("No Finding") == (0,) * 14
    both = parse_labels("Effusion|Hernia")
    assert [LABELS[i] for i, v in enumerate(both) if v] == ["Effusion", "Hernia"]
    assert parse_labels("pleural thickening") == parse_labels("Pleural_Thickening")
    with pytest.raises(ValueError, match="unknown label 'Efusion'"):
        parse_labels("Efusion")
    with pytest.raises(ValueError, match="'No Finding' together with findings"):
        parse_labels("No Finding|Mass")
    with pytest.raises(ValueError, match="empty labels"):
        parse_labels(" ")


def test_header_is_chestxray14s() -> None:
    assert DATA_ENTRY_HEADER == synth.DATA_ENTRY_HEADER


def test_wrong_header_fails_clearly(tmp_path: Path) -> None:
    root = cxr14(tmp_path, [entry("00000001_000.png", "Mass", 1)])
    csv_path = root / "Data_Entry_2017.csv"
    csv_path.write_text(csv_path.read_text().replace("Patient ID", "PatientID", 1))
    with pytest.raises(DatasetError, match=r"Data_Entry_2017.csv: line 1: not the ChestX-ray14 header"):
        read_chestxray14(root, KEY)
    # The NIH file ends each line with a comma: still accepted.
    text = DATA_ENTRY_HEADER + ",\n" + entry("00000001_000.png", "Mass", 1) + ",\n"
    csv_path.write_text(text)
    listing = read_chestxray14(root, KEY)
    assert [r.name for r in listing.rows] == ["00000001_000.png"] and not listing.bad


def test_chestxray14_rows_folders_and_bad_rows(tmp_path: Path) -> None:
    rows = [
        entry("00000001_000.png", "No Finding", 1),  # line 2
        entry("00000001_001.png", "Effusion|Mass", 1),  # line 3
        entry("00000002_000.png", "Efusion", 2),  # line 4: unknown label
        entry("00000003_000.png", "Hernia", 3),  # line 5
    ]
    root = cxr14(tmp_path, rows, folders=("images_001/images", "images_002/images"))
    csv_path = root / "Data_Entry_2017.csv"
    with csv_path.open("a") as fh:
        fh.write(entry("00000004_000.png", "Mass", 4) + "\n")  # line 6: no such image
        fh.write("00000005_000.png,Mass,0\n")  # line 7: wrong field count
        fh.write(entry("00000003_000.png", "Hernia", 3) + "\n")  # line 8: duplicate
    listing = read_dataset(root, KEY)
    assert listing.kind == "chestxray14"
    assert [(r.line, r.name) for r in listing.rows] == [
        (2, "00000001_000.png"),
        (3, "00000001_001.png"),
        (5, "00000003_000.png"),
    ]
    assert listing.rows[1].path == root / "images_002/images/00000001_001.png"
    assert listing.rows[1].labels == parse_labels("Effusion|Mass")
    assert listing.rows[0].patient == pseudonym(KEY, "1") and listing.rows[0].split is None
    assert [(b.line, b.reason) for b in listing.bad] == [
        (4, "00000002_000.png: unknown label 'Efusion' in 'Efusion'"),
        (6, "00000004_000.png: image not found in images/ or images_*/images/"),
        (7, "expected 11 fields, found 3"),
        (8, "00000003_000.png: duplicate of line 5"),
    ]


def test_chestxray14_official_lists(tmp_path: Path) -> None:
    rows = [entry(f"{p:08d}_000.png", "Mass", p) for p in range(1, 7)]
    root = cxr14(tmp_path, rows)
    (root / "test_list.txt").write_text("00000001_000.png\n00000002_000.png\n")
    (root / "train_val_list.txt").write_text("\n".join(f"{p:08d}_000.png" for p in range(3, 6)) + "\n")
    listing = read_chestxray14(root, KEY)
    assert [r.split for r in listing.rows] == ["test", "test", "train_val", "train_val", "train_val"]
    assert [(b.line, b.reason) for b in listing.bad] == [
        (7, "00000006_000.png: listed in neither test_list.txt nor train_val_list.txt")
    ]
    splits = assign_splits(listing.rows, val_fraction=0.34, test_fraction=0.5, seed=0)
    assert [r.name for r in splits["test"]] == [
        "00000001_000.png",
        "00000002_000.png",
    ]  # test_fraction unused
    assert len(splits["val"]) == 1 and len(splits["train"]) == 2


def test_manifest_paths_splits_and_pseudonyms(tmp_path: Path) -> None:
    (tmp_path / "img" / "PAT-0042").mkdir(parents=True)
    (tmp_path / "img" / "PAT-0042" / "a.png").write_bytes(png(1))
    (tmp_path / "img" / "PAT-0047").mkdir(parents=True)
    (tmp_path / "img" / "PAT-0047" / "a.png").write_bytes(png(4))
    (tmp_path / "b.png").write_bytes(png(2))
    (tmp_path / "c.png").write_bytes(png(3))
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,labels,patient_id,split,site\n"
        "img/PAT-0042/a.png,Nodule,PAT-0042,train,x\n"
        "b.png,No Finding,PAT-0043,TEST,y\n"
        "missing.png,Mass,PAT-0044,train,z\n"
        "c.png,Mass,PAT-0045,holdout,z\n"
        "img/PAT-0046/gone.png,Mass,PAT-0046,train,z\n"
        "img/PAT-0047/a.png,Bogus,PAT-0047,train,z\n"
    )
    assert detect_format(manifest) == "manifest"
    listing = read_manifest(manifest, KEY)
    first, second = listing.rows
    assert first.path == tmp_path / "img/PAT-0042/a.png"
    # The raw id never reaches the index, even where the path embeds it.
    assert first.name == f"img/{pseudonym(KEY, 'PAT-0042')}/a.png" and "PAT-0042" not in first.name
    assert first.patient == pseudonym(KEY, "pat-0042 ")  # ids are normalised before hashing
    assert (first.split, second.split) == ("train_val", "test")  # no val rows: val comes out of train
    assert [(b.line, b.reason) for b in listing.bad] == [
        (4, "missing.png: file not found"),
        (5, "c.png: split 'holdout' is not train, val or test"),
        (6, f"img/{pseudonym(KEY, 'PAT-0046')}/gone.png: file not found"),
        (7, f"img/{pseudonym(KEY, 'PAT-0047')}/a.png: unknown label 'Bogus' in 'Bogus'"),
    ]
    # Bad-row reasons reach dataset.json and the terminal: no raw id in them either.
    assert not any("PAT-004" in b.reason for b in listing.bad)


def test_manifest_header_errors(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,labels,patient\nx.png,Mass,1\n")
    with pytest.raises(DatasetError, match=r"m.csv: line 1: header lacks column\(s\) path, patient_id"):
        read_manifest(manifest, KEY)
    manifest.write_text("")
    with pytest.raises(DatasetError, match="empty manifest"):
        read_manifest(manifest, KEY)
    with pytest.raises(DatasetError, match=r"folder without Data_Entry_2017.csv"):
        detect_format(tmp_path)


def fake_rows(patients: int, per_patient: int = 2) -> list[Row]:
    return [
        Row(
            line=2 + p * per_patient + k,
            name=f"{p}_{k}.png",
            path=Path("x"),
            labels=(0,) * 14,
            patient=f"p{p}",
        )
        for p in range(patients)
        for k in range(per_patient)
    ]


def test_assign_splits_by_patient() -> None:
    rows = fake_rows(50)
    splits = assign_splits(rows, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [70, 10, 20]
    patients = {s: {r.patient for r in splits[s]} for s in splits}
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"])
    assert not patients["val"] & patients["test"]
    assert all(splits[s] == sorted(splits[s], key=lambda r: r.line) for s in splits)  # CSV order kept
    assert assign_splits(rows, 0.1, 0.2, seed=3) == splits
    assert assign_splits(rows, 0.1, 0.2, seed=4)["test"] != splits["test"]
    with pytest.raises(DatasetError, match="val_fraction \\+ test_fraction must be < 1"):
        assign_splits(rows, 0.5, 0.5, seed=0)
    with pytest.raises(DatasetError, match="no patient left for training"):
        assign_splits(fake_rows(1), 0.5, 0.4, seed=0)


def test_patient_in_two_given_splits_is_refused() -> None:
    rows = fake_rows(3)
    rows[1] = Row(rows[1].line, rows[1].name, rows[1].path, rows[1].labels, rows[1].patient, "test")
    with pytest.raises(DatasetError, match=r"line 2 \(unassigned\), line 3 \(test\)"):
        assign_splits(rows, 0.1, 0.1, seed=0)


def test_shard_pixels_match_the_preprocess_worker() -> None:
    decoded = decode(png(7, size=300), LIMITS)
    np.testing.assert_array_equal(shard_pixels(decoded.pixels, 224), to_model_input(decoded))


def test_prepare_stops_before_writing_on_bad_rows(tmp_path: Path) -> None:
    rows = [entry(f"{p:08d}_000.png", "Mass", p) for p in range(1, 11)]
    root = cxr14(tmp_path / "src", rows)
    (root / "images" / "00000004_000.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    (root / "images" / "00000007_000.png").unlink()
    out = tmp_path / "out"
    with pytest.raises(BadRowsError) as info:
        prepare(root, out, key=KEY, image_size=16)
    assert [(r.line, r.reason.split(":")[0]) for r in info.value.rows] == [
        (5, "00000004_000.png"),
        (8, "00000007_000.png"),
    ]
    assert "invalid image: truncated or malformed PNG" in info.value.rows[0].reason
    assert "line 5: 00000004_000.png" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no output, no partial folder

    dataset, skipped = prepare(root, out, key=KEY, image_size=16, skip_bad_rows=True, shard_size=3)
    assert [r.line for r in skipped] == [5, 8]
    assert dataset.meta["skipped_rows"] == [r.as_dict() for r in skipped]
    assert sum(s["count"] for s in dataset.meta["splits"].values()) == 8
    assert ShardedDataset.open(out).checksum == dataset.checksum

    with pytest.raises(DatasetError, match=r"not empty .*--force"):
        prepare(root, out, key=KEY, image_size=16, skip_bad_rows=True)
    (root / "images" / "00000004_000.png").write_bytes(png(99))
    again, skipped = prepare(root, out, key=KEY, image_size=16, skip_bad_rows=True, force=True)
    assert [r.line for r in skipped] == [8]
    assert sum(s["count"] for s in again.meta["splits"].values()) == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]

    # --force never replaces a folder that is not shards, nor one holding the source.
    with pytest.raises(DatasetError, match="holds the source"):
        prepare(root, tmp_path, key=KEY, image_size=16, skip_bad_rows=True, force=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a `data prepare` output"):
        prepare(root, tmp_path / "other", key=KEY, image_size=16, skip_bad_rows=True, force=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
