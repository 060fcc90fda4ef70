"""`chexstack jobs list|show|rerun`: train and serve jobs recorded in the model information hub."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from chexstack.commands.hub import fail, print_json, service
from chexstack.settings import HubOpt, JsonOpt, option

if TYPE_CHECKING:
    from chexstack.hub.store import Job

jobs_app = typer.Typer(help="Train and serve jobs in the model information hub.", no_args_is_help=True)


def _line(job: Job) -> str:
    version = f"v{job.model_version}" if job.model_version is not None else "-"
    extra = f"  rerun of {job.rerun_of}" if job.rerun_of else ""
    action = job.spec.get("action") if job.kind == "serve" else None
    return (
        f"{job.id}  {job.kind:<5}  {job.status:<9}  {job.project}/{job.variation}  {job.model_name} {version}"
        f"{'  ' + str(action) if action else ''}  {job.created_at}{extra}"
    )


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
    for job in found:
        typer.echo(_line(job))


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
    typer.echo(_line(new))
    if rc != 0 or new.status != "succeeded":
        raise fail(f"rerun {new.id} of {job_id} {new.status}: {new.error or f'exit code {rc}'}")


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
