"""`chexstack data synth`: synthetic chest radiographs (not patient data) for tests, demos and smoke runs."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

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


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
