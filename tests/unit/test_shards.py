"""The shard contract: files written, memory-mapped reads, checksum, and clear errors on bad directories."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from chexstack.labels import LABELS
from chexstack.shards import (
    FORMAT,
    ShardedDataset,
    ShardError,
    UnknownSplitError,
    compute_checksum,
    finish_dataset,
    write_shards,
)

S = 16
Sample = tuple[str, str, np.ndarray, np.ndarray]


def make_samples(n: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [
        (
            f"img{i:03d}.png",
            f"p-{i // 3:016x}",
            rng.integers(0, 256, (S, S), dtype=np.uint8),
            (rng.random(len(LABELS)) < 0.3).astype(np.uint8),
        )
        for i in range(n)
    ]


def build(root: Path, samples: list[Sample], shard_size: int = 4) -> ShardedDataset:
    splits = {
        "train": {"shards": write_shards(root, "train", samples[:10], S, shard_size)},
        "val": {"shards": write_shards(root, "val", samples[10:13], S, shard_size)},
        "test": {"shards": write_shards(root, "test", [], S, shard_size)},
    }
    return finish_dataset(
        root, S, splits, {"kind": "manifest", "path": "/data/m.csv"}, [{"line": 7, "reason": "x"}]
    )


def test_files_follow_the_contract(tmp_path: Path) -> None:
    samples = make_samples(13)
    ds = build(tmp_path, samples)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["format"] == FORMAT == "chexstack-shards/1"
    assert meta["image_size"] == S and meta["labels"] == list(LABELS)
    assert meta["source"] == {"kind": "manifest", "path": "/data/m.csv"}
    assert meta["splits"]["train"] == {
        "count": 10,
        "patients": 4,
        "shards": ["train-00000", "train-00001", "train-00002"],
    }
    assert meta["splits"]["val"] == {"count": 3, "patients": 2, "shards": ["val-00000"]}
    assert meta["splits"]["test"] == {"count": 0, "patients": 0, "shards": []}
    assert meta["skipped_rows"] == [{"line": 7, "reason": "x"}]
    assert meta["checksum"] == ds.checksum and len(ds.checksum) == 64
    assert "created_at" in meta
    # Plain .npy files that numpy memory-maps; the last shard holds the remainder.
    images = np.load(tmp_path / "train-00002.images.npy", mmap_mode="r")
    labels = np.load(tmp_path / "train-00002.labels.npy", mmap_mode="r")
    assert isinstance(images, np.memmap) and images.dtype == np.uint8 and images.shape == (2, S, S)
    assert labels.dtype == np.uint8 and labels.shape == (2, len(LABELS))
    np.testing.assert_array_equal(images[1], samples[9][2])
    index = (tmp_path / "train-00002.index.csv").read_text().splitlines()
    assert index == ["image,patient", f"img008.png,{samples[8][1]}", f"img009.png,{samples[9][1]}"]
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_take_all_and_label_counts(tmp_path: Path) -> None:
    samples = make_samples(13)
    ds = ShardedDataset.open(build(tmp_path, samples).root)
    train = ds.split("train")
    assert len(train) == 10
    order = np.array([9, 0, 4, 4, 3, 8])  # across shards, repeated, unsorted
    images, labels = train.take(order)
    assert images.shape == (6, S, S) and labels.shape == (6, len(LABELS))
    for k, i in enumerate(order):
        np.testing.assert_array_equal(images[k], samples[i][2])
        np.testing.assert_array_equal(labels[k], samples[i][3])
    all_images, all_labels = train.all()
    np.testing.assert_array_equal(all_labels, np.stack([s[3] for s in samples[:10]]))
    np.testing.assert_array_equal(all_images, np.stack([s[2] for s in samples[:10]]))
    np.testing.assert_array_equal(train.labels(), all_labels)  # without reading an image
    np.testing.assert_array_equal(train.label_counts, np.stack([s[3] for s in samples[:10]]).sum(0))
    assert train.label_counts.dtype == np.int64
    assert train.index()[3] == ("img003.png", samples[3][1])
    empty_images, empty_labels = ds.split("test").all()
    assert ds.split("test").labels().shape == (0, len(LABELS))
    assert empty_images.shape == (0, S, S) and empty_labels.shape == (0, len(LABELS))
    with pytest.raises(IndexError, match=r"index 10 out of range"):
        train.take(np.array([1, 10]))
    with pytest.raises(IndexError, match=r"out of range"):
        train.take(np.array([-1]))


def test_reader_pickles_without_its_pixels(tmp_path: Path) -> None:
    ds = build(tmp_path, make_samples(13))
    train = ds.split("train")
    blob = pickle.dumps(train)
    assert len(blob) < 2000  # reopened from the files, not a copy of the memory maps
    copy = pickle.loads(blob)
    np.testing.assert_array_equal(copy.take(np.array([5]))[0], train.take(np.array([5]))[0])


def test_checksum_is_content_and_stable(tmp_path: Path) -> None:
    a = build(tmp_path / "a", make_samples(13))
    b = build(tmp_path / "b", make_samples(13))
    c = build(tmp_path / "c", make_samples(13, seed=1))
    assert a.checksum == b.checksum != c.checksum
    a.verify()
    path = tmp_path / "a" / "val-00000.images.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert compute_checksum(a.root, a.meta["splits"]) != a.checksum
    with pytest.raises(ShardError, match=r"checksum mismatch"):
        a.verify()


def test_write_shards_rejects_bad_samples(tmp_path: Path) -> None:
    good = make_samples(1)[0]
    with pytest.raises(ShardError, match=r"sample 0 .*pixels must be uint8 \(16, 16\)"):
        write_shards(tmp_path, "train", [(good[0], good[1], good[2].astype(np.float32), good[3])], S)
    with pytest.raises(ShardError, match=r"labels must be uint8"):
        write_shards(tmp_path, "train", [(good[0], good[1], good[2], good[3][:5])], S)
    with pytest.raises(ShardError, match=r"labels must be 0 or 1"):
        write_shards(tmp_path, "train", [(good[0], good[1], good[2], good[3] * 2 + 1)], S)
    with pytest.raises(ShardError, match=r"invalid split name"):
        write_shards(tmp_path, "../x", [good], S)


def test_finish_checks_counts(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, "train", make_samples(3), S)
    with pytest.raises(ShardError, match=r"count is 4 but the shards hold 3"):
        finish_dataset(tmp_path, S, {"train": {"shards": shards, "count": 4}}, {}, [])
    assert not (tmp_path / "dataset.json").exists()


def test_open_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match=r"not a prepared data set .*chexstack data prepare"):
        ShardedDataset.open(tmp_path)
    root = tmp_path / "ds"
    build(root, make_samples(13))
    ds = ShardedDataset.open(root)
    with pytest.raises(UnknownSplitError, match=r"no split 'holdout' .*train, val, test") as info:
        ds.split("holdout")
    assert isinstance(info.value, KeyError)

    meta = json.loads((root / "dataset.json").read_text())
    for change, message in (
        ({"format": "chexstack-shards/0"}, "format is 'chexstack-shards/0'"),
        ({"labels": list(reversed(LABELS))}, "labels differ"),
        ({"image_size": "224"}, "image_size must be a positive integer"),
        ({"checksum": "abc"}, "checksum must be 64 hex digits"),
    ):
        bad = tmp_path / "bad"
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(root, bad)
        (bad / "dataset.json").write_text(json.dumps(meta | change))
        with pytest.raises(ShardError, match=message):
            ShardedDataset.open(bad)
    (root / "val-00000.labels.npy").unlink()
    with pytest.raises(ShardError, match=r"val-00000.labels.npy: shard file missing"):
        ShardedDataset.open(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(ShardError, match=r"dataset.json: unreadable"):
        ShardedDataset.open(root)


def test_truncated_shard_is_reported(tmp_path: Path) -> None:
    ds = build(tmp_path, make_samples(13))
    path = tmp_path / "train-00000.images.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ShardError, match=r"train-00000.images.npy: not a readable .npy file"):
        ds.split("train")


def test_training_tells_a_damaged_split_from_a_missing_one(tmp_path: Path) -> None:
    from chexstack.training.run import TrainError, _split

    ds = ShardedDataset.open(build(tmp_path, make_samples(13)).root)
    assert _split(ds, "nonexistent") is None
    assert _split(ds, "test") is None  # empty
    path = tmp_path / "train-00000.labels.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(TrainError, match=r"the train split cannot be read: .*train-00000.labels.npy"):
        _split(ds, "train")
