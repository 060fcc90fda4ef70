"""Prepared data sets: uint8 pixel shards that training memory-maps (`chexstack data prepare` writes them).

Layout of a data set directory (format "chexstack-shards/1"):

    dataset.json             what is in it: image size, label order, source, splits, checksum, skipped rows
    <shard>.images.npy       uint8 [n, S, S]: chexstack.transform.resize01 then rint(x * 255), the same
                             pixels the preprocess worker sends to serving (at S = 224)
    <shard>.labels.npy       uint8 [n, 14] in chexstack.labels.LABELS order, 0 or 1
    <shard>.index.csv        `image,patient` per row: the image's name and its keyed-hash patient pseudonym

Shards are named `<split>-00000`, `<split>-00001`, ... in row order. The checksum is the data set's
version: SHA-256 over every shard file, split by split in dataset.json order, shard by shard, and for
each shard its images, labels and index file; each file is fed as `<file name>\\n<size>\\n<bytes>` so
renaming or moving bytes between files changes it. dataset.json is written last, atomically, so a
directory with a dataset.json is complete.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

import numpy as np

from chexstack.labels import LABELS, NUM_LABELS

FORMAT: Final = "chexstack-shards/1"
DATASET_JSON: Final = "dataset.json"
SPLITS: Final = ("train", "val", "test")
SHARD_SUFFIXES: Final = (".images.npy", ".labels.npy", ".index.csv")
INDEX_HEADER: Final = ("image", "patient")

# A fixed-length .npy header (a multiple of 64 bytes, as numpy aligns them) lets a shard be streamed
# to disk before its row count is known: the header is rewritten in place when the shard closes.
_NPY_HEADER_LEN: Final = 128
_NPY_MAGIC: Final = b"\x93NUMPY\x01\x00"
_SPLIT_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*$")

__all__ = [
    "DATASET_JSON",
    "FORMAT",
    "SPLITS",
    "ShardError",
    "ShardedDataset",
    "SplitReader",
    "UnknownSplitError",
    "compute_checksum",
    "finish_dataset",
    "shard_files",
    "write_shards",
]


class ShardError(ValueError):
    """A prepared data set that is missing, corrupt or of another format; str(exc) says which file and why."""


class UnknownSplitError(ShardError, KeyError):
    """`ShardedDataset.split` with a name the data set does not have."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def shard_files(shard: str) -> tuple[str, str, str]:
    """File names of one shard: images, labels, index."""
    return (f"{shard}.images.npy", f"{shard}.labels.npy", f"{shard}.index.csv")


# --------------------------------------------------------------------------------------------- writing


def _npy_header(shape: tuple[int, ...]) -> bytes:
    dims = "".join(f"{d}, " for d in shape)
    text = "{'descr': '|u1', 'fortran_order': False, 'shape': (" + dims + "), }"
    body = text.encode("latin1")
    pad = _NPY_HEADER_LEN - len(_NPY_MAGIC) - 2 - len(body) - 1
    if pad < 0:
        raise ShardError(f"shape {shape} does not fit the fixed .npy header")
    return _NPY_MAGIC + (_NPY_HEADER_LEN - 10).to_bytes(2, "little") + body + b" " * pad + b"\n"


class _ShardWriter:
    """One shard being written: pixels streamed to disk, labels and index rows buffered (they are small)."""

    def __init__(self, root: Path, name: str, image_size: int) -> None:
        self.root, self.name, self.size = root, name, image_size
        images, _, index = shard_files(name)
        self.count = 0
        self.labels: list[np.ndarray] = []
        self.images: IO[bytes] = (root / images).open("wb")
        self.images.write(_npy_header((0, image_size, image_size)))
        self.index_fh = (root / index).open("w", newline="", encoding="utf-8")
        self.index = csv.writer(self.index_fh, lineterminator="\n")
        self.index.writerow(INDEX_HEADER)

    def add(self, image_name: str, patient: str, pixels: np.ndarray, labels: np.ndarray) -> None:
        self.images.write(np.ascontiguousarray(pixels).tobytes())
        self.labels.append(labels)
        self.index.writerow((image_name, patient))
        self.count += 1

    def close(self) -> None:
        self.images.seek(0)
        self.images.write(_npy_header((self.count, self.size, self.size)))
        self.images.close()
        self.index_fh.close()
        labels = np.stack(self.labels) if self.labels else np.zeros((0, NUM_LABELS), np.uint8)
        np.save(self.root / shard_files(self.name)[1], labels.astype(np.uint8), allow_pickle=False)

    def abort(self) -> None:
        self.images.close()
        self.index_fh.close()


def _check_sample(i: int, sample: tuple[str, str, np.ndarray, np.ndarray], size: int) -> None:
    name, patient, pixels, labels = sample
    where = f"sample {i} ({name!r})"
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.shape != (size, size):
        got = f"{pixels.dtype} {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise ShardError(f"{where}: pixels must be uint8 ({size}, {size}), got {got}")
    if not isinstance(labels, np.ndarray) or labels.shape != (NUM_LABELS,) or labels.dtype != np.uint8:
        got = f"{labels.dtype} {labels.shape}" if isinstance(labels, np.ndarray) else type(labels).__name__
        raise ShardError(f"{where}: labels must be uint8 ({NUM_LABELS},), got {got}")
    if labels.max(initial=0) > 1:
        raise ShardError(f"{where}: labels must be 0 or 1")
    if not patient:
        raise ShardError(f"{where}: empty patient pseudonym")


def write_shards(
    root: Path,
    split: str,
    samples: Iterable[tuple[str, str, np.ndarray, np.ndarray]],
    image_size: int,
    shard_size: int = 4096,
) -> list[str]:
    """Write `samples` (image name, patient pseudonym, uint8 [S, S] pixels, uint8 [14] labels) as shards.

    Returns the shard names in order (empty for no samples). Pixels are streamed, so memory stays at one
    image plus the labels of one shard whatever the shard size.
    """
    if not _SPLIT_NAME.match(split):
        raise ShardError(f"invalid split name {split!r}: use lower-case letters, digits and _")
    if image_size < 1 or shard_size < 1:
        raise ShardError(f"image_size and shard_size must be >= 1 (got {image_size}, {shard_size})")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    writer: _ShardWriter | None = None
    try:
        for i, sample in enumerate(samples):
            _check_sample(i, sample, image_size)
            if writer is None or writer.count >= shard_size:
                if writer is not None:
                    writer.close()
                writer = _ShardWriter(root, f"{split}-{len(names):05d}", image_size)
                names.append(writer.name)
            writer.add(*sample)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    return names


def compute_checksum(root: Path, splits: dict[str, dict[str, Any]]) -> str:
    """The data set version: SHA-256 over every shard file in order (see the module docstring)."""
    digest = hashlib.sha256()
    for info in splits.values():
        for shard in info["shards"]:
            for fname in shard_files(shard):
                path = Path(root) / fname
                try:
                    size = path.stat().st_size
                    digest.update(f"{fname}\n{size}\n".encode())
                    with path.open("rb") as fh:
                        while chunk := fh.read(1 << 20):
                            digest.update(chunk)
                except FileNotFoundError as exc:
                    raise ShardError(f"{path}: shard file missing") from exc
    return digest.hexdigest()


def finish_dataset(
    root: Path,
    image_size: int,
    splits: dict[str, dict[str, Any]],
    source: dict[str, Any],
    skipped_rows: list[dict[str, Any]],
) -> ShardedDataset:
    """Check the shards, compute the checksum and write dataset.json (atomically, last); open the result.

    `splits` maps a split name to {"shards": [...]} and optionally "count" and "patients"; both are
    computed from the files, and a given value that disagrees is an error.
    """
    root = Path(root)
    final: dict[str, dict[str, Any]] = {}
    for name, info in splits.items():
        if not _SPLIT_NAME.match(name):
            raise ShardError(f"invalid split name {name!r}")
        shards = [str(s) for s in info.get("shards", [])]
        reader = SplitReader(root, name, image_size, shards)
        patients = len({p for _, p in reader.index()})
        for key, actual in (("count", len(reader)), ("patients", patients)):
            if key in info and int(info[key]) != actual:
                raise ShardError(f"split {name}: {key} is {info[key]} but the shards hold {actual}")
        final[name] = {"count": len(reader), "patients": patients, "shards": shards}
    meta = {
        "format": FORMAT,
        "image_size": int(image_size),
        "labels": list(LABELS),
        "source": source,
        "splits": final,
        "checksum": compute_checksum(root, final),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "skipped_rows": [{"line": int(r["line"]), "reason": str(r["reason"])} for r in skipped_rows],
    }
    tmp = root / f".{DATASET_JSON}.{os.getpid()}.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / DATASET_JSON)
    return ShardedDataset.open(root)


# --------------------------------------------------------------------------------------------- reading


class SplitReader:
    """Rows of one split across its shards, memory-mapped; pickles cheaply (workers reopen the files)."""

    def __init__(self, root: Path, split: str, image_size: int, shards: list[str]) -> None:
        self.root, self.split, self.image_size, self.shards = Path(root), split, image_size, list(shards)
        self._open()

    def _open(self) -> None:
        s = self.image_size
        self._images: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        counts = []
        for shard in self.shards:
            images_f, labels_f, _ = (self.root / f for f in shard_files(shard))
            images = _load(images_f)
            labels = _load(labels_f)
            n = images.shape[0] if images.ndim == 3 else -1
            if images.dtype != np.uint8 or images.shape[1:] != (s, s) or n < 0:
                raise ShardError(
                    f"{images_f}: expected uint8 [n, {s}, {s}], got {images.dtype} {images.shape}"
                )
            if labels.dtype != np.uint8 or labels.shape != (n, NUM_LABELS):
                raise ShardError(
                    f"{labels_f}: expected uint8 [{n}, {NUM_LABELS}], got {labels.dtype} {labels.shape}"
                )
            self._images.append(images)
            self._labels.append(labels)
            counts.append(n)
        self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self.label_counts: np.ndarray = np.zeros(NUM_LABELS, np.int64)
        for labels in self._labels:
            self.label_counts += labels.sum(axis=0, dtype=np.int64)

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "split": self.split, "image_size": self.image_size, "shards": self.shards}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.root, self.split = state["root"], state["split"]
        self.image_size, self.shards = state["image_size"], state["shards"]
        self._open()

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        return f"SplitReader({self.split!r}, {len(self)} images, {len(self.shards)} shards, {self.root})"

    def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8 [k, S, S] and labels uint8 [k, 14] of rows `indices` (any order, repeats allowed)."""
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise IndexError(f"indices must be a 1-D integer array, got {idx.dtype} {idx.shape}")
        idx = idx.astype(np.int64, copy=False)
        n, s = len(self), self.image_size
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            bad = int(idx[(idx < 0) | (idx >= n)][0])
            raise IndexError(f"index {bad} out of range for split {self.split!r} with {n} images")
        images = np.empty((idx.size, s, s), np.uint8)
        labels = np.empty((idx.size, NUM_LABELS), np.uint8)
        shard_of = np.searchsorted(self._offsets, idx, side="right") - 1
        for k in np.unique(shard_of):
            mask = shard_of == k
            local = idx[mask] - self._offsets[k]
            images[mask] = self._images[k][local]
            labels[mask] = self._labels[k][local]
        return images, labels

    def labels(self) -> np.ndarray:
        """Every row's labels uint8 [n, 14] without touching an image (evaluation needs only these)."""
        if not self._labels:
            return np.zeros((0, NUM_LABELS), np.uint8)
        return np.concatenate([np.asarray(labels) for labels in self._labels])

    def all(self) -> tuple[np.ndarray, np.ndarray]:
        """Every row as one in-memory copy (for small sets and evaluation)."""
        return self.take(np.arange(len(self)))

    def index(self) -> list[tuple[str, str]]:
        """(image name, patient pseudonym) for every row, in row order."""
        rows: list[tuple[str, str]] = []
        for k, shard in enumerate(self.shards):
            path = self.root / shard_files(shard)[2]
            try:
                with path.open(newline="", encoding="utf-8") as fh:
                    reader = csv.reader(fh)
                    if tuple(next(reader, ())) != INDEX_HEADER:
                        raise ShardError(f"{path}: header must be {','.join(INDEX_HEADER)}")
                    part = [(r[0], r[1]) for r in reader if len(r) == 2]
            except OSError as exc:
                raise ShardError(f"{path}: cannot read the shard index: {exc}") from exc
            expected = int(self._offsets[k + 1] - self._offsets[k])
            if len(part) != expected:
                raise ShardError(f"{path}: {len(part)} rows but the shard holds {expected} images")
            rows += part
        return rows


def _load(path: Path) -> np.ndarray:
    try:
        arr: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as exc:
        raise ShardError(f"{path}: shard file missing") from exc
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path}: not a readable .npy file: {exc}") from exc
    return arr


@dataclass(frozen=True)
class ShardedDataset:
    """An opened data set directory; `meta` is dataset.json as written."""

    root: Path
    image_size: int
    checksum: str
    meta: dict[str, Any] = field(repr=False)

    @classmethod
    def open(cls, root: Path) -> ShardedDataset:
        root = Path(root)
        path = root / DATASET_JSON
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ShardError(
                f"{root}: not a prepared data set (no {DATASET_JSON}); run `chexstack data prepare`"
            ) from exc
        except (OSError, ValueError) as exc:
            raise ShardError(f"{path}: unreadable: {exc}") from exc
        if not isinstance(meta, dict):
            raise ShardError(f"{path}: expected a JSON object")
        if meta.get("format") != FORMAT:
            raise ShardError(f"{path}: format is {meta.get('format')!r}, this version reads {FORMAT!r}")
        if meta.get("labels") != list(LABELS):
            raise ShardError(f"{path}: labels differ from the canonical order {list(LABELS)}")
        size, checksum, splits = meta.get("image_size"), meta.get("checksum"), meta.get("splits")
        if not isinstance(size, int) or size < 1:
            raise ShardError(f"{path}: image_size must be a positive integer, got {size!r}")
        if not isinstance(checksum, str) or not re.fullmatch(r"[0-9a-f]{64}", checksum):
            raise ShardError(f"{path}: checksum must be 64 hex digits, got {checksum!r}")
        if not isinstance(splits, dict):
            raise ShardError(f"{path}: splits must be an object")
        for name, info in splits.items():
            shards = info.get("shards") if isinstance(info, dict) else None
            if not isinstance(shards, list) or not isinstance(info.get("count"), int):
                raise ShardError(f"{path}: split {name!r} needs a shards list and an integer count")
            for shard in shards:
                for fname in shard_files(str(shard)):
                    if not (root / fname).is_file():
                        raise ShardError(f"{root / fname}: shard file missing (listed in {path})")
        return cls(root=root, image_size=size, checksum=checksum, meta=meta)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.meta["splits"])

    def split(self, name: str) -> SplitReader:
        info = self.meta["splits"].get(name)
        if info is None:
            raise UnknownSplitError(f"{self.root}: no split {name!r} (have: {', '.join(self.splits)})")
        reader = SplitReader(self.root, name, self.image_size, info["shards"])
        if len(reader) != info["count"]:
            raise ShardError(
                f"{self.root}: split {name!r} should hold {info['count']} images, has {len(reader)}"
            )
        return reader

    def verify(self) -> None:
        """Recompute the checksum from the files (reads everything); ShardError if it differs."""
        actual = compute_checksum(self.root, self.meta["splits"])
        if actual != self.checksum:
            raise ShardError(
                f"{self.root}: checksum mismatch: dataset.json says {self.checksum}, files give {actual}"
            )
