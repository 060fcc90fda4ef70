"""`chexstack data synth|prepare`: synthetic radiographs (not patient data), and shards for training."""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from chexstack.settings import (
    DEFAULT_SEED,
    IMAGE_SIZE,
    PseudonymKeyOpt,
    StoreOpt,
    configured_pseudonym_key,
    option,
)

data_app = typer.Typer(help="Data sets.", no_args_is_help=True)


@data_app.command("synth")
def synth(
    out: Annotated[Path, option("--out", "Output directory (created if missing).", env=False)],
    count: Annotated[int, option("--count", "Number of images.", min=0, env=False)],
    seed: Annotated[
        int, option("--seed", "Random seed: the same seed gives byte-identical files.")
    ] = DEFAULT_SEED,
    size: Annotated[int, option("--size", "Width and height in pixels.", min=64)] = 512,
    dicom_fraction: Annotated[
        float, option("--dicom-fraction", "Fraction of images also written as DICOM.", min=0.0, max=1.0)
    ] = 0.25,
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
    source: Annotated[
        Path,
        typer.Argument(
            help="ChestX-ray14 folder (with Data_Entry_2017.csv) or a manifest CSV.", show_default=False
        ),
    ],
    out: Annotated[
        Path, option("--out", "Output folder for the shards (must be empty unless --force).", env=False)
    ],
    fmt: Annotated[SourceFormat, option("--format", "Source layout.")] = SourceFormat.auto,
    image_size: Annotated[int, option("--image-size", "Shard images are S x S pixels.", min=8)] = IMAGE_SIZE,
    val_fraction: Annotated[
        float,
        option("--val-fraction", "Share of images (by patient) for validation.", min=0.0, max=0.9),
    ] = 0.1,
    test_fraction: Annotated[
        float,
        option(
            "--test-fraction",
            "Share for test when the source does not fix it (manifest without split, no test_list.txt).",
            min=0.0,
            max=0.9,
        ),
    ] = 0.1,
    seed: Annotated[
        int, option("--seed", "Seed of the patient split: the same seed gives the same data set.")
    ] = DEFAULT_SEED,
    skip_bad_rows: Annotated[
        bool,
        option(
            "--skip-bad-rows", "Leave bad rows out (listed in dataset.json) instead of stopping.", env=False
        ),
    ] = False,
    shard_size: Annotated[int, option("--shard-size", "Images per shard file.", min=1)] = 4096,
    workers: Annotated[
        int | None, option("--workers", "Decoding processes. Default: the CPU count, at most 4.", min=1)
    ] = None,
    force: Annotated[
        bool, option("--force", "Replace a non-empty --out (only once the new one is complete).", env=False)
    ] = False,
    store: StoreOpt = None,
    pseudonym_key: PseudonymKeyOpt = None,
) -> None:
    """Turn a data set into uint8 shards with the preprocess worker's transform, split by patient.

    Bad rows (missing file, unknown label, unreadable image, wrong field count) are listed with their CSV
    line; the run stops before writing anything unless --skip-bad-rows. Patient ids are replaced by the
    same keyed-hash pseudonyms uploads get (--pseudonym-key or its _FILE, else the store's key).

    Exit status: 0 prepared, 1 bad rows, 2 unusable data set or output folder.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from chexstack.blobstore import open_store
    from chexstack.datasets import BadRowsError, DatasetError
    from chexstack.datasets import prepare as prepare_dataset
    from chexstack.deid import load_or_create_key
    from chexstack.shards import ShardError

    try:
        key = load_or_create_key(open_store(store), configured_pseudonym_key(pseudonym_key))
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
