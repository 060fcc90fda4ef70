"""`chexstack model export`: build CheXNet and write it as a TF Serving SavedModel version."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from chexstack.settings import env_name

model_app = typer.Typer(help="CheXNet model: export for serving.", no_args_is_help=True)


@model_app.command("export")
def export(
    out: Path = typer.Option(..., "--out", help="Model base path, e.g. MODEL_BASE/chexnet."),
    version: int | None = typer.Option(None, "--version", min=1, help="Version number (default: next free)."),
    weights: str = typer.Option(
        "random",
        "--weights",
        envvar=env_name("--weights"),
        show_envvar=True,
        help="random, imagenet (needs network) or a local .weights.h5 file (model or DenseNet-121 backbone).",
    ),
    seed: int | None = typer.Option(None, "--seed", help="Random seed for random initialisation."),
) -> None:
    """Write OUT/<version>/ atomically and print its path."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from chexstack.model import WeightsError, build_chexnet, export_saved_model

    try:
        model = build_chexnet(weights, seed=seed)
        path = export_saved_model(model, out, version, weights_source=weights)
    except (WeightsError, FileExistsError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
