"""`chexstack data synth|prepare`: synthetic radiographs (not patient data), and shards for training."""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from pathlib import Path

import typer

from chexstack.settings import PseudonymKeyOpt, StoreOpt

data_app = typer.Typer(help="Data sets.", no_args_is_help=True)


@data_app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Output directory (created if missing)."),
    count: int = typer.Option(..., "--count", min=0, help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives byte-identical files."),
    size: int = typer.Option(512, "--size", min=64, help="Width and height in pixels."),
    dicom_fraction: float = typer.Option(
        0.25, "--dicom-fraction", min=0.0, max=1.0, help="Fraction of images also written as DICOM."
    ),
) -> None:
    """Write SYNTHETIC chest radiographs with visible findings in the ChestX-ray14 layout.

    The images are drawn by a program, not taken from patients, and every name and ID in them is fake
    (SYNTH^PATIENT^0007, SYN-0007). Writes OUT/images/*.png and OUT/Data_Entry_2017.csv, plus
    OUT/dicom/*.dcm and OUT/dicom_labels.csv for about --dicom-fraction of the images.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from chexstack.synth import synthesize

    logging.getLogger("openjpeg").setLevel(logging.WARNING)  # it logs every encoded tile at INFO

    with Progress(
        TextColumn("synthetic radiographs"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task("synth", total=count)
        summary = synthesize(
            out,
            count,
            seed=seed,
            size=size,
            dicom_fraction=dicom_fraction,
            on_image=lambda _name: progress.advance(task),
        )
    typer.echo(
        f"wrote {summary.count} synthetic images of {summary.patients} patients "
        f"({summary.png8} PNG 8-bit, {summary.png16} PNG 16-bit, {summary.dicom} also as DICOM; "
        f"{summary.no_finding} No Finding): {summary.csv_path}"
    )


class SourceFormat(StrEnum):
    auto = "auto"
    chestxray14 = "chestxray14"
    manifest = "manifest"


@data_app.command("prepare")
def prepare(
    source: Path = typer.Argument(
        ..., help="ChestX-ray14 folder (with Data_Entry_2017.csv) or a manifest CSV.", show_default=False
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output folder for the shards (must be empty unless --force)."
    ),
    fmt: SourceFormat = typer.Option(SourceFormat.auto, "--format", help="Source layout."),
    image_size: int = typer.Option(224, "--image-size", min=8, help="Shard images are S x S pixels."),
    val_fraction: float = typer.Option(
        0.1, "--val-fraction", min=0.0, max=0.9, help="Share of images (by patient) for validation."
    ),
    test_fraction: float = typer.Option(
        0.1,
        "--test-fraction",
        min=0.0,
        max=0.9,
        help="Share for test when the source does not fix it (manifest without split, no test_list.txt).",
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed of the patient split: the same seed gives the same data set."
    ),
    skip_bad_rows: bool = typer.Option(
        False, "--skip-bad-rows", help="Leave bad rows out (listed in dataset.json) instead of stopping."
    ),
    shard_size: int = typer.Option(4096, "--shard-size", min=1, help="Images per shard file."),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Decoding processes. Default: the CPU count, at most 4."
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace a non-empty --out (only once the new one is complete)."
    ),
    store: str | None = StoreOpt,  # type: ignore[assignment]
    pseudonym_key: str | None = PseudonymKeyOpt,  # type: ignore[assignment]
) -> None:
    """Turn a data set into uint8 shards with the preprocess worker's transform, split by patient.

    Bad rows (missing file, unknown label, unreadable image, wrong field count) are listed with their CSV
    line; the run stops before writing anything unless --skip-bad-rows. Patient ids are replaced by the
    same keyed-hash pseudonyms uploads get (the store's key, or --pseudonym-key).

    Exit status: 0 prepared, 1 bad rows, 2 unusable data set or output folder.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from chexstack.blobstore import open_store
    from chexstack.datasets import BadRowsError, DatasetError
    from chexstack.datasets import prepare as prepare_dataset
    from chexstack.deid import load_or_create_key
    from chexstack.shards import ShardError

    try:
        key = load_or_create_key(open_store(store), pseudonym_key)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: pseudonym key: {exc}", err=True)
        raise typer.Exit(2) from exc
    n_workers = workers or min(4, os.cpu_count() or 1)
    try:
        with Progress(
            TextColumn("preparing shards"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=True,
        ) as progress:
            task = progress.add_task("prepare", total=None)
            dataset, skipped = prepare_dataset(
                source,
                out,
                key=key,
                fmt=fmt.value,
                image_size=image_size,
                val_fraction=val_fraction,
                test_fraction=test_fraction,
                seed=seed,
                skip_bad_rows=skip_bad_rows,
                shard_size=shard_size,
                workers=n_workers,
                force=force,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except BadRowsError as exc:
        typer.echo(
            f"error: {exc.source}: {len(exc.rows)} bad row(s); nothing was written "
            "(fix them or pass --skip-bad-rows):",
            err=True,
        )
        for row in exc.rows:
            typer.echo(f"  line {row.line}: {row.reason}", err=True)
        raise typer.Exit(1) from exc
    except (DatasetError, ShardError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except OSError as exc:  # e.g. the disk filled up: the output folder is only renamed into place on success
        typer.echo(f"error: cannot write {out}: {exc.strerror or exc}; nothing was written", err=True)
        raise typer.Exit(2) from exc
    splits = dataset.meta["splits"]
    images = sum(s["count"] for s in splits.values())
    patients = sum(s["patients"] for s in splits.values())
    typer.echo(
        f"prepared {images} images of {patients} patients at {dataset.image_size}x{dataset.image_size} "
        f"from {dataset.meta['source']['kind']} {source} into {out}"
    )
    for name, info in splits.items():
        typer.echo(
            f"  {name:<5} {info['count']:>7} images {info['patients']:>6} patients "
            f"{len(info['shards']):>4} shards"
        )
    if skipped:
        typer.echo(f"skipped {len(skipped)} bad row(s):")
        for row in skipped:
            typer.echo(f"  line {row.line}: {row.reason}")
    typer.echo(f"checksum {dataset.checksum}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
