"""`chexstack models list|promote|rollback|export`: versions, serving state, stable/canary labels, export."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from chexstack.commands.hub import print_json, service
from chexstack.settings import (
    DEFAULT_SEED,
    DEFAULT_SERVING,
    DEFAULT_WAIT_S,
    HubOpt,
    JsonOpt,
    ModelBaseOpt,
    ModelConfigFileOpt,
    ServingOpt,
    WaitOpt,
    option,
)

models_app = typer.Typer(
    help="Model versions, their serving state and version labels; CheXNet export for serving.",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="Model name, e.g. chexnet.")]


@models_app.command("list")
def list_models(
    name: Annotated[
        str | None, typer.Argument(help="Model name (default: every model in models.config).")
    ] = None,
    as_json: JsonOpt = False,
    hub: HubOpt = None,
    model_config_file: ModelConfigFileOpt = None,
    model_base: ModelBaseOpt = None,
    serving: ServingOpt = DEFAULT_SERVING,
) -> None:
    """Versions on disk, their state in serving, their labels and the train job behind each."""
    with service(hub, model_config_file=model_config_file, model_base=model_base, serving=serving) as svc:
        found = svc.list_models(name)
    if as_json:
        print_json(found)
        return
    for m in found:
        typer.echo(f"{m['name']}  policy: {m['policy'] or '-'}  base: {m['model_base']}")
        if m["serving_error"]:
            typer.echo(f"  serving {m['serving']} unreachable: {m['serving_error']}")
        for v in m["versions"]:
            typer.echo(
                f"  v{v['version']:<4} {v['state'] or '-':<10} {'disk' if v['on_disk'] else 'missing':<8}"
                f" {','.join(v['labels']) or '-':<14} job {v['train_job'] or '-'}"
            )


@models_app.command("promote")
def promote(
    name: NameArg,
    version: Annotated[int, typer.Argument(help="Version to label.")],
    label: Annotated[str, option("--label", "stable or canary.", env=False)],
    wait_s: WaitOpt = DEFAULT_WAIT_S,
    hub: HubOpt = None,
    model_config_file: ModelConfigFileOpt = None,
    serving: ServingOpt = DEFAULT_SERVING,
) -> None:
    """Point a label at a version serving has loaded (refused otherwise); recorded as a serve job."""
    with service(hub, model_config_file=model_config_file, serving=serving) as svc:
        job = svc.promote(name, version, label, wait_s=wait_s)
    _report(job.results, name, job.id)


@models_app.command("rollback")
def rollback(
    name: NameArg,
    label: Annotated[str, option("--label", "The label to roll back.", env=False)] = "stable",
    wait_s: WaitOpt = DEFAULT_WAIT_S,
    hub: HubOpt = None,
    model_config_file: ModelConfigFileOpt = None,
    serving: ServingOpt = DEFAULT_SERVING,
) -> None:
    """Return the label (stable by default) to the version it had before."""
    with service(hub, model_config_file=model_config_file, serving=serving) as svc:
        job = svc.rollback(name, label, wait_s=wait_s)
    _report(job.results, name, job.id)


def _report(results: dict[str, object], name: str, job_id: str) -> None:
    applied = "" if results.get("applied") else " (serving has not applied it yet; it re-reads models.config)"
    typer.echo(
        f"{name}: {results['label']} -> v{results['version']} (was {results['previous_version'] or 'unset'})"
        f"{applied}; job {job_id}"
    )


@models_app.command("export")
def export(
    out: Annotated[Path, option("--out", "Model base path, e.g. MODEL_BASE/chexnet.", env=False)],
    version: Annotated[
        int | None, option("--version", "Version number (default: next free).", min=1, env=False)
    ] = None,
    weights: Annotated[
        str,
        option(
            "--weights",
            "random, imagenet (needs network) or a local .weights.h5 file (model or DenseNet-121 backbone).",
        ),
    ] = "random",
    seed: Annotated[int, option("--seed", "Random seed for random initialisation.")] = DEFAULT_SEED,
) -> None:
    """Build CheXNet, write it as the SavedModel version OUT/<version>/ atomically and print its path."""
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
    app.add_typer(models_app, name="models")
