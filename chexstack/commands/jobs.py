"""`chexstack jobs list|show|rerun`: train and serve jobs recorded in the model information hub."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from chexstack.commands.hub import fail, print_json, service
from chexstack.settings import HubOpt, JsonOpt, option

if TYPE_CHECKING:
    from chexstack.hub.store import Job

jobs_app = typer.Typer(help="Train and serve jobs in the model information hub.", no_args_is_help=True)


# `jobs list`: always these columns in this order (scripts may cut them; --json is the stable format).
COLUMNS = ("JOB", "KIND", "STATUS", "CREATED (UTC)", "MODEL", "SUMMARY")
WIDTH = 100  # the line length the table keeps to; only SUMMARY is shortened to fit


def _created(stamp: str) -> str:
    """2026-12-06T20:02:15.123Z -> 2026-12-06 20:02 (the hub stores UTC)."""
    return stamp[:16].replace("T", " ")


def _serve_summary(job: Job) -> str:
    spec, results = job.spec, job.results
    action = str(spec.get("action") or "serve")
    if "label" in spec and "version" in spec:
        return f"{action} {spec['label']} -> v{spec['version']}"
    if isinstance(spec.get("weights"), dict):
        return f"{action} " + " ".join(f"{k}={v}" for k, v in spec["weights"].items())
    if isinstance(results.get("replayed"), list):
        return f"{action} {len(results['replayed'])} replayed, {len(results.get('skipped') or [])} skipped"
    return action


def summary(job: Job) -> str:
    """One phrase on the outcome: the train job's AUROC, the serve job's action, or the error."""
    parts = []
    if job.status == "failed" and job.error:
        parts.append(job.error.splitlines()[0])
    if job.kind == "serve":
        parts.append(_serve_summary(job))
    elif isinstance(job.results.get("mean_auroc"), int | float):
        parts.append(f"AUROC {job.results['mean_auroc']:.3f} ({job.results.get('eval_split') or '?'})")
    if job.rerun_of:
        parts.append(f"rerun of {job.rerun_of}")
    return "; ".join(parts) or "-"


def table_rows(jobs: list[Job]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for job in jobs:
        version = f" v{job.model_version}" if job.model_version is not None else ""
        rows.append((job.id, job.kind, job.status, _created(job.created_at), job.model_name + version,
                     summary(job)))  # fmt: skip
    return rows


def render_table(rows: list[tuple[str, ...]]) -> str:
    """A header row and one row per job, columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS) - 1)]
    room = max(len(COLUMNS[-1]), WIDTH - sum(widths) - 2 * len(widths))
    lines = []
    for row in [COLUMNS, *rows]:
        last = row[-1] if len(row[-1]) <= room else row[-1][: room - 3] + "..."
        lines.append("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), last]))
    return "\n".join(lines)


@jobs_app.command("list")
def list_jobs(
    kind: Annotated[str | None, option("--kind", "train or serve.", env=False)] = None,
    limit: Annotated[int, option("--limit", "Newest N jobs.", min=1, env=False)] = 50,
    as_json: JsonOpt = False,
    hub: HubOpt = None,
) -> None:
    """Jobs, newest first."""
    if kind is not None and kind not in ("train", "serve"):
        raise fail(f"bad --kind {kind!r}: use train or serve")
    with service(hub) as svc:
        found = svc.list_jobs(kind=kind, limit=limit)
    if as_json:
        print_json([j.to_dict() for j in found])
        return
    if not found:
        typer.echo("no jobs")
        return
    typer.echo(render_table(table_rows(found)))


@jobs_app.command("show")
def show(
    job_id: Annotated[str, typer.Argument(help="Job id (or a unique prefix of 4+ characters).")],
    as_json: JsonOpt = False,
    hub: HubOpt = None,
) -> None:
    """One job with its spec snapshot and results."""
    import yaml

    with service(hub) as svc:
        job = svc.show_job(job_id)
    if as_json:
        print_json(job.to_dict())
        return
    typer.echo(yaml.safe_dump(job.to_dict(), sort_keys=False).rstrip())


@jobs_app.command("rerun")
def rerun(
    job_id: Annotated[str, typer.Argument(help="Id of the train job to run again with its recorded config.")],
    hub: HubOpt = None,
) -> None:
    """Run `chexstack train` again with the job's config snapshot; recorded as a new job (rerun of ID)."""
    with service(hub) as svc:
        new, rc = svc.rerun_job(job_id, wait=True)
    typer.echo(render_table(table_rows([new])))
    if rc != 0 or new.status != "succeeded":
        raise fail(f"rerun {new.id} of {job_id} {new.status}: {new.error or f'exit code {rc}'}")


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
