"""Chest X-ray data sets -> rows -> patient-disjoint splits -> uint8 shards (`chexstack data prepare`).

Two sources are read:
- the ChestX-ray14 layout: Data_Entry_2017.csv (its exact header), images in images/ or
  images_*/images/ (the NIH download ships images_001..012), optional train_val_list.txt and
  test_list.txt (official split: test from test_list, validation carved out of train_val by patient);
- a manifest CSV with the columns path (or file),labels,patient_id (paths relative to the CSV) and an
  optional split column (train|val|test; without any val row, validation is carved out of train).

Labels are `|`-joined canonical names; "No Finding" alone means all zeros. Patient ids are replaced by
keyed-hash pseudonyms as soon as a row is read, so no raw patient id reaches the output. Every bad row
(missing file, unknown label, wrong field count, unreadable image, ...) is reported with its CSV line
number; the output directory appears only when the whole run succeeded (it is built in a temporary
sibling directory and renamed).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Final, Literal

import numpy as np

from chexstack.deid import pseudonym
from chexstack.labels import LABELS, NO_FINDING, NUM_LABELS
from chexstack.shards import SPLITS, ShardedDataset, finish_dataset, write_shards

SourceKind = Literal["chestxray14", "manifest"]
# "train_val" rows are divided between train and val; None means any split (decided by patient).
FixedSplit = Literal["train", "val", "test", "train_val"]

DATA_ENTRY_CSV: Final = "Data_Entry_2017.csv"
# Same text as chexstack.synth.DATA_ENTRY_HEADER (kept here so reading data does not import the
# synthesiser); two column names contain a comma, so the header and every row have 11 fields.
DATA_ENTRY_HEADER: Final = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
DATA_ENTRY_FIELDS: Final = 11
TRAIN_VAL_LIST: Final = "train_val_list.txt"
TEST_LIST: Final = "test_list.txt"
MANIFEST_COLUMNS: Final = ("path", "labels", "patient_id")
# synth's dicom_labels.csv (and many exports) call the path column "file".
_COLUMN_ALIASES: Final = {"file": "path"}
_SPLIT_ALIASES: Final[dict[str, FixedSplit]] = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
_LABEL_KEYS: Final = {name.lower(): i for i, name in enumerate(LABELS)}
_MIN_ID_SCRUB: Final = 3  # shorter ids would match unrelated digits in file names

__all__ = [
    "DATA_ENTRY_CSV",
    "DATA_ENTRY_HEADER",
    "BadRow",
    "BadRowsError",
    "DatasetError",
    "Listing",
    "Row",
    "assign_splits",
    "detect_format",
    "load_pixels",
    "parse_labels",
    "prepare",
    "read_chestxray14",
    "read_dataset",
    "read_manifest",
    "shard_pixels",
]


class DatasetError(ValueError):
    """The data set as a whole cannot be used (bad header, no images folder, ...); str(exc) says why."""


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be used: its line in the CSV (the header is line 1) and why."""

    line: int
    reason: str

    def as_dict(self) -> dict[str, int | str]:
        return {"line": self.line, "reason": self.reason}


class BadRowsError(DatasetError):
    """Bad rows without skip_bad_rows: nothing was written. `rows` lists every one."""

    def __init__(self, source: Path, rows: Sequence[BadRow], shown: int = 50) -> None:
        self.source, self.rows = source, list(rows)
        lines = [f"  line {r.line}: {r.reason}" for r in self.rows[:shown]]
        if len(self.rows) > shown:
            lines.append(f"  ... and {len(self.rows) - shown} more")
        super().__init__(
            f"{source}: {len(self.rows)} bad row(s); nothing was written "
            "(fix them or pass --skip-bad-rows to leave them out):\n" + "\n".join(lines)
        )


@dataclass(frozen=True)
class Row:
    """One usable row. `patient` is already the pseudonym; `name` is what the shard index records."""

    line: int
    name: str
    path: Path
    labels: tuple[int, ...]
    patient: str
    split: FixedSplit | None = None


@dataclass
class Listing:
    """What a reader found: usable rows (CSV order) and bad rows."""

    kind: SourceKind
    source: Path
    rows: list[Row]
    bad: list[BadRow]


# ---------------------------------------------------------------------------------------------- parsing


def parse_labels(text: str) -> tuple[int, ...]:
    """`A|B` -> 14 zeros and ones in LABELS order; "No Finding" alone -> all zeros. ValueError says why.

    Case and space-vs-underscore differences are forgiven ("pleural thickening"); anything else is not.
    """
    parts = [p.strip() for p in text.split("|")]
    if not text.strip():
        raise ValueError(f"empty labels (write {NO_FINDING!r} for a normal image)")
    out = [0] * NUM_LABELS
    finding = False
    for part in parts:
        if part.lower() == NO_FINDING.lower():
            finding = True
            continue
        index = _LABEL_KEYS.get(part.lower().replace(" ", "_"))
        if index is None:
            raise ValueError(f"unknown label {part!r} in {text!r}")
        out[index] = 1
    if finding and any(out):
        raise ValueError(f"{NO_FINDING!r} together with findings in {text!r}")
    return tuple(out)


def _open_csv(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for every non-blank record; a BOM is ignored."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            for fields in reader:
                if fields and any(f.strip() for f in fields):
                    yield reader.line_num, fields
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except csv.Error as exc:
        raise DatasetError(f"{path}: malformed CSV: {exc}") from exc
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _image_folders(root: Path) -> list[Path]:
    folders = [root / "images"] if (root / "images").is_dir() else []
    return folders + sorted(p for p in root.glob("images_*/images") if p.is_dir())


def _index_images(folders: list[Path]) -> dict[str, Path]:
    """File name -> path over all image folders; the first folder wins on a duplicate name."""
    found: dict[str, Path] = {}
    for folder in folders:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.is_file():
                    found.setdefault(entry.name, Path(entry.path))
    return found


def _read_list(path: Path) -> set[str] | None:
    if not path.is_file():
        return None
    return {line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()}


def read_chestxray14(root: Path, key: bytes) -> Listing:
    """Read the ChestX-ray14 layout under `root` (the folder holding Data_Entry_2017.csv)."""
    csv_path = root / DATA_ENTRY_CSV
    if not csv_path.is_file():
        raise DatasetError(f"{root}: no {DATA_ENTRY_CSV} (not the ChestX-ray14 layout)")
    _check_data_entry_header(csv_path)
    folders = _image_folders(root)
    if not folders:
        raise DatasetError(f"{root}: no images/ or images_*/images/ folder next to {DATA_ENTRY_CSV}")
    images = _index_images(folders)
    test_list, train_val_list = _read_list(root / TEST_LIST), _read_list(root / TRAIN_VAL_LIST)
    rows: list[Row] = []
    bad: list[BadRow] = []
    first_line: dict[str, int] = {}
    records = _open_csv(csv_path)
    next(records, None)  # the header, checked above
    for line, fields in records:
        if not (
            len(fields) == DATA_ENTRY_FIELDS or (len(fields) == DATA_ENTRY_FIELDS + 1 and not fields[-1])
        ):
            bad.append(BadRow(line, f"expected {DATA_ENTRY_FIELDS} fields, found {len(fields)}"))
            continue
        name, label_text, raw_patient = fields[0].strip(), fields[1], fields[3].strip()
        problem = _common_checks(name, raw_patient, first_line, line)
        path = images.get(name)
        if problem is None and path is None:
            problem = f"{name}: image not found in images/ or images_*/images/"
        try:
            labels = parse_labels(label_text)
        except ValueError as exc:
            problem = problem or f"{name}: {exc}"
        split: FixedSplit | None = None
        if test_list is not None or train_val_list is not None:
            in_test = test_list is not None and name in test_list
            in_train_val = train_val_list is not None and name in train_val_list
            if in_test and in_train_val:
                problem = problem or f"{name}: listed in both {TEST_LIST} and {TRAIN_VAL_LIST}"
            elif in_test or (test_list is None and not in_train_val):
                split = "test"
            elif in_train_val or train_val_list is None:
                split = "train_val"
            else:
                problem = problem or f"{name}: listed in neither {TEST_LIST} nor {TRAIN_VAL_LIST}"
        if problem is not None or path is None:
            bad.append(BadRow(line, problem or name))
            continue
        first_line.setdefault(name, line)
        rows.append(Row(line, name, path, labels, pseudonym(key, raw_patient), split))
    return Listing("chestxray14", root, rows, bad)


def _check_data_entry_header(csv_path: Path) -> None:
    try:
        with csv_path.open(encoding="utf-8-sig") as fh:
            header = fh.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{csv_path}: cannot read the header: {exc}") from exc
    # The NIH release ends every line with a comma (an unnamed empty 12th column); accept that too.
    if header.removesuffix(",") != DATA_ENTRY_HEADER:
        raise DatasetError(
            f"{csv_path}: line 1: not the ChestX-ray14 header\n"
            f"  expected: {DATA_ENTRY_HEADER}\n  found:    {header}"
        )


def _common_checks(name: str, raw_patient: str, first_line: dict[str, int], line: int) -> str | None:
    if not name:
        return "empty image name"
    if name in first_line:
        return f"{name}: duplicate of line {first_line[name]}"
    if not raw_patient:
        return f"{name}: empty patient id"
    return None


def read_manifest(csv_path: Path, key: bytes) -> Listing:
    """Read a manifest CSV: path,labels,patient_id[,split] (extra columns are ignored)."""
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: manifest not found")
    records = _open_csv(csv_path)
    first = next(records, None)
    if first is None:
        raise DatasetError(f"{csv_path}: empty manifest (expected the header {','.join(MANIFEST_COLUMNS)})")
    header_line, header = first
    columns = [c.strip().lower() for c in header]
    if "path" not in columns:
        columns = [_COLUMN_ALIASES.get(c, c) for c in columns]
    missing = [c for c in MANIFEST_COLUMNS if c not in columns]
    if missing:
        raise DatasetError(
            f"{csv_path}: line {header_line}: header lacks column(s) {', '.join(missing)} "
            f"(need {','.join(MANIFEST_COLUMNS)}, optional split; found {','.join(header)})"
        )
    col = {c: columns.index(c) for c in (*MANIFEST_COLUMNS, "split") if c in columns}
    base = csv_path.parent
    rows: list[Row] = []
    bad: list[BadRow] = []
    first_line: dict[str, int] = {}
    for line, fields in records:
        if len(fields) != len(header):
            bad.append(BadRow(line, f"expected {len(header)} fields, found {len(fields)}"))
            continue
        rel, raw_patient = fields[col["path"]].strip(), fields[col["patient_id"]].strip()
        path = base / rel
        pseudo = pseudonym(key, raw_patient) if raw_patient else ""
        # Reasons reach dataset.json and the terminal: the path as shown there carries no raw patient id.
        shown = _scrub(rel, raw_patient, pseudo) if raw_patient else rel
        problem = _common_checks(shown, raw_patient, first_line, line)
        if problem is None and not path.is_file():
            problem = f"{shown}: file not found" if not path.exists() else f"{shown}: not a file"
        split: FixedSplit | None = None
        if "split" in col:
            value = _SPLIT_ALIASES.get(fields[col["split"]].strip().lower())
            if value is None:
                problem = problem or f"{shown}: split {fields[col['split']]!r} is not train, val or test"
            split = value
        try:
            labels = parse_labels(fields[col["labels"]])
        except ValueError as exc:
            problem = problem or f"{shown}: {exc}"
        if problem is not None:
            bad.append(BadRow(line, problem))
            continue
        first_line.setdefault(shown, line)
        rows.append(Row(line, shown, path, labels, pseudo, split))
    if "split" in col and rows and not any(r.split == "val" for r in rows):
        # train/test only: validation comes out of train, by patient, like ChestX-ray14's train_val.
        rows = [
            Row(r.line, r.name, r.path, r.labels, r.patient, "train_val") if r.split == "train" else r
            for r in rows
        ]
    return Listing("manifest", csv_path, rows, bad)


def _scrub(name: str, raw_patient: str, pseudo: str) -> str:
    """Paths often embed the patient id (CheXpert: train/patient00001/...): the pseudonym replaces it."""
    if len(raw_patient) < _MIN_ID_SCRUB:
        return name
    return re.sub(re.escape(raw_patient), pseudo, name, flags=re.IGNORECASE)


def detect_format(source: Path) -> SourceKind:
    """chestxray14 for a folder with Data_Entry_2017.csv (or that file itself), manifest for another CSV."""
    if source.is_dir():
        if (source / DATA_ENTRY_CSV).is_file():
            return "chestxray14"
        raise DatasetError(
            f"{source}: folder without {DATA_ENTRY_CSV}; for a manifest pass the CSV file itself"
        )
    if source.name == DATA_ENTRY_CSV:
        return "chestxray14"
    if source.is_file():
        return "manifest"
    raise DatasetError(f"{source}: no such file or folder")


def read_dataset(
    source: Path, key: bytes, fmt: Literal["auto", "chestxray14", "manifest"] = "auto"
) -> Listing:
    """Read `source` in the given format (auto: see detect_format)."""
    kind = detect_format(source) if fmt == "auto" else fmt
    if kind == "chestxray14":
        return read_chestxray14(source.parent if source.is_file() else source, key)
    if source.is_dir():
        raise DatasetError(f"{source}: a manifest is a CSV file, not a folder")
    return read_manifest(source, key)


# --------------------------------------------------------------------------------------------- splitting


def assign_splits(
    rows: Sequence[Row], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Row]]:
    """Rows -> train/val/test with every patient in exactly one split (rows keep their CSV order).

    Rows fixed by the source stay where they are; "train_val" patients are divided between train and val
    (val_fraction of their images); unfixed patients get test_fraction and val_fraction of theirs. Patients
    are drawn in a seeded random order until a split has its share of images.
    """
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise DatasetError(f"{name} must lie in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise DatasetError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    by_patient: dict[str, list[Row]] = {}
    for row in rows:
        by_patient.setdefault(row.patient, []).append(row)
    conflicts = []
    for patient_rows in by_patient.values():
        fixed = {r.split for r in patient_rows}
        if len(fixed) > 1:
            where = ", ".join(f"line {r.line} ({r.split or 'unassigned'})" for r in patient_rows[:6])
            conflicts.append(f"  one patient in several splits: {where}")
    if conflicts:
        raise DatasetError(
            f"{len(conflicts)} patient(s) appear in more than one given split (a patient must stay in one):\n"
            + "\n".join(conflicts[:20])
        )
    rng = np.random.default_rng(seed)
    chosen: dict[str, str] = {}
    pools: dict[FixedSplit | None, list[str]] = {}
    for patient, patient_rows in by_patient.items():
        fixed_split = patient_rows[0].split
        if fixed_split in ("train", "val", "test"):
            chosen[patient] = str(fixed_split)
        else:
            pools.setdefault(fixed_split, []).append(patient)
    for pool_kind in (None, "train_val"):  # fixed order, so the seed alone decides the draw
        pool = pools.get(pool_kind, [])
        order = [pool[i] for i in rng.permutation(len(pool))]
        total = sum(len(by_patient[p]) for p in pool)
        shares = (
            [("val", val_fraction)]
            if pool_kind == "train_val"
            else [("test", test_fraction), ("val", val_fraction)]
        )
        for split, fraction in shares:
            target, taken = round(fraction * total), 0
            while taken < target and order:
                patient = order.pop()
                chosen[patient] = split
                taken += len(by_patient[patient])
        for patient in order:
            chosen[patient] = "train"
    out: dict[str, list[Row]] = {s: [] for s in SPLITS}
    for row in rows:
        out[chosen[row.patient]].append(row)
    patient_sets = {s: {r.patient for r in out[s]} for s in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            if patient_sets[a] & patient_sets[b]:  # cannot happen by construction; never ship a leak
                raise DatasetError(f"internal error: patients shared between {a} and {b}")
    if rows and not out["train"]:
        raise DatasetError(
            f"no patient left for training ({len(by_patient)} patients): lower --val-fraction/--test-fraction"
        )
    return out


# ---------------------------------------------------------------------------------------------- pixels


def shard_pixels(pixels01: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 [S, S]: the preprocess worker's transform (chexstack.transform.to_model_input at S = 224)."""
    from chexstack.transform import resize01

    return np.rint(resize01(pixels01, image_size) * 255.0).astype(np.uint8)


def load_pixels(path: Path, image_size: int) -> np.ndarray:
    """Read, decode (chexstack.imageio.decode, the upload path's limits) and transform one image.

    Raises chexstack.imageio.InvalidImage with the reason, or OSError when the file cannot be read.
    """
    from chexstack.imageio import decode
    from chexstack.settings import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, Limits

    limits = Limits(max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS)
    return shard_pixels(decode(path.read_bytes(), limits).pixels, image_size)


def _load_job(job: tuple[str, int]) -> tuple[np.ndarray | None, str | None]:
    """Process-pool task: pixels, or the reason the image is unusable (never raises for a bad file)."""
    from chexstack.imageio import InvalidImage

    path, size = job
    try:
        return load_pixels(Path(path), size), None
    except InvalidImage as exc:
        return None, f"invalid image: {exc}"
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"


# -------------------------------------------------------------------------------------------- preparing


def _check_out(out: Path, force: bool, source: Path | None = None) -> None:
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder")
    if source is not None and source.resolve().is_relative_to(out.resolve()):
        raise DatasetError(f"{out}: holds the source {source}; write the shards to another folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise DatasetError(f"{out}: not empty (pass --force to replace it)")
        # --force replaces earlier shards, never a folder of something else.
        if not (out / "dataset.json").is_file():
            raise DatasetError(
                f"{out}: not empty and not a `data prepare` output (--force replaces only those)"
            )


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished tmp folder to `out`, replacing what was there only now that tmp is complete."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def prepare(
    source: Path,
    out: Path,
    *,
    key: bytes,
    fmt: Literal["auto", "chestxray14", "manifest"] = "auto",
    image_size: int = 224,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    skip_bad_rows: bool = False,
    shard_size: int = 4096,
    workers: int = 1,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ShardedDataset, list[BadRow]]:
    """Turn a data set into shards under `out`; returns the opened data set and the skipped rows.

    Raises BadRowsError (every bad row, nothing written) unless skip_bad_rows, DatasetError for a
    problem with the data set as a whole. `progress(done, total)` is called as images are decoded.
    """
    if image_size < 8:
        raise DatasetError(f"image size must be >= 8, got {image_size}")
    if shard_size < 1:
        raise DatasetError(f"shard size must be >= 1, got {shard_size}")
    out = Path(out)
    _check_out(out, force, Path(source))
    listing = read_dataset(Path(source), key, fmt)
    splits = assign_splits(listing.rows, val_fraction, test_fraction, seed)
    bad = list(listing.bad)
    ordered = [row for s in SPLITS for row in splits[s]]
    total = len(ordered)
    if progress is not None:
        progress(0, total)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    pool: Executor | None = None
    try:
        jobs = [(str(r.path), image_size) for r in ordered]
        if workers > 1 and total > 1:
            # spawn, not fork: the caller may hold TensorFlow or Kafka threads that a fork would copy.
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
            results = pool.map(_load_job, jobs, chunksize=max(1, min(16, total // (workers * 4))))
        else:
            results = map(_load_job, jobs)
        done = 0
        split_info: dict[str, dict[str, list[str]]] = {}

        def samples(rows: list[Row]) -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
            nonlocal done
            for row in rows:
                pixels, reason = next(results)
                done += 1
                if progress is not None:
                    progress(done, total)
                if pixels is None:
                    bad.append(BadRow(row.line, f"{row.name}: {reason}"))
                elif skip_bad_rows or not bad:  # once the run is doomed, only keep checking
                    yield row.name, row.patient, pixels, np.asarray(row.labels, np.uint8)

        for split in SPLITS:
            split_info[split] = {
                "shards": write_shards(tmp, split, samples(splits[split]), image_size, shard_size)
            }
        bad.sort(key=lambda r: r.line)
        if bad and not skip_bad_rows:
            raise BadRowsError(listing.source, bad)
        dataset = finish_dataset(
            tmp,
            image_size,
            split_info,
            {"kind": listing.kind, "path": str(Path(source).resolve())},
            [b.as_dict() for b in bad],
        )
        if dataset.meta["splits"]["train"]["count"] == 0:
            raise DatasetError(f"{listing.source}: no usable training image")
        _check_out(out, force)  # again: another run may have filled it meanwhile
        _replace_dir(tmp, out)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return ShardedDataset.open(out), bad
