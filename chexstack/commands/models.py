"""`chexstack models list|promote|rollback`: versions, serving state and the stable/canary labels."""

from __future__ import annotations

from pathlib import Path

import typer

from chexstack.commands.hub import print_json, service
from chexstack.settings import HubOpt, ModelBaseOpt, ModelConfigFileOpt, ServingOpt

models_app = typer.Typer(help="Model versions, their serving state and version labels.", no_args_is_help=True)

WaitOpt = typer.Option(
    60.0, "--wait-s", min=0.0, help="How long to wait for serving to apply the new label (0: do not wait)."
)


@models_app.command("list")
def list_models(
    name: str | None = typer.Argument(None, help="Model name (default: every model in models.config)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    hub: Path | None = HubOpt,  # type: ignore[assignment]
    model_config_file: Path | None = ModelConfigFileOpt,  # type: ignore[assignment]
    model_base: Path | None = ModelBaseOpt,  # type: ignore[assignment]
    serving: str = ServingOpt,  # type: ignore[assignment]
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
    name: str = typer.Argument(..., help="Model name, e.g. chexnet."),
    version: int = typer.Argument(..., help="Version to label."),
    label: str = typer.Option(..., "--label", help="stable or canary."),
    wait_s: float = WaitOpt,
    hub: Path | None = HubOpt,  # type: ignore[assignment]
    model_config_file: Path | None = ModelConfigFileOpt,  # type: ignore[assignment]
    serving: str = ServingOpt,  # type: ignore[assignment]
) -> None:
    """Point a label at a version serving has loaded (refused otherwise); recorded as a serve job."""
    with service(hub, model_config_file=model_config_file, serving=serving) as svc:
        job = svc.promote(name, version, label, wait_s=wait_s)
    _report(job.results, name, job.id)


@models_app.command("rollback")
def rollback(
    name: str = typer.Argument(..., help="Model name, e.g. chexnet."),
    label: str = typer.Option("stable", "--label", help="The label to roll back."),
    wait_s: float = WaitOpt,
    hub: Path | None = HubOpt,  # type: ignore[assignment]
    model_config_file: Path | None = ModelConfigFileOpt,  # type: ignore[assignment]
    serving: str = ServingOpt,  # type: ignore[assignment]
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


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
