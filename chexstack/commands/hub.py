"""`chexstack hub serve|projects`: the hub's HTTP API; helpers the hub commands share."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from chexstack.settings import (
    DEFAULT_KAFKA,
    DEFAULT_SERVING,
    HubOpt,
    KafkaOpt,
    ModelBaseOpt,
    ModelConfigFileOpt,
    ServingOpt,
    TopicPrefixOpt,
    _opt,
    default_hub,
    env_name,
)

if TYPE_CHECKING:
    from chexstack.hub.service import Service

hub_app = typer.Typer(
    help="The model information hub (projects, models, jobs) and its HTTP API.", no_args_is_help=True
)

HubTokenOpt = _opt(
    None,
    "--hub-token",
    "Bearer token the hub API requires (all but /healthz). Unset: no token.",
    show_default=False,
)


def fail(message: object) -> typer.Exit:
    """One line on stderr, exit 1: every hub command's answer to bad input or a refused operation."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@contextmanager
def service(
    hub: Path | None,
    *,
    model_config_file: Path | None = None,
    model_base: Path | None = None,
    serving: str = DEFAULT_SERVING,
    kafka: str = DEFAULT_KAFKA,
    topic_prefix: str = "",
) -> Iterator[Service]:
    """Open the hub and yield the service; hub, models.config and service errors become `fail`."""
    from chexstack.hub.handoff import HandoffError
    from chexstack.hub.modelsconfig import ModelsConfigError
    from chexstack.hub.service import Service, ServiceError, Settings
    from chexstack.hub.store import Hub, HubError

    try:
        store = Hub.open(hub or default_hub())
    except HubError as exc:
        raise fail(exc) from exc
    settings = Settings(
        hub_path=store.path,
        model_config_file=model_config_file,
        model_base=model_base,
        serving=serving,
        kafka=kafka,
        topic_prefix=topic_prefix,
    )
    try:
        yield Service(store, settings)
    except (ServiceError, HubError, ModelsConfigError, HandoffError) as exc:
        raise fail(exc) from exc
    finally:
        store.close()


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


@hub_app.command("serve")
def serve(
    # --host/--port as asked for, but the variables are CHEXSTACK_HUB_HOST/PORT: CHEXSTACK_HOST and
    # CHEXSTACK_PORT already belong to `chexstack serve`.
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        "--hub-host",
        envvar=env_name("--hub-host"),
        show_envvar=True,
        help="Address the hub API binds (127.0.0.1: this machine only).",
    ),
    port: int = typer.Option(
        8600,
        "--port",
        "--hub-port",
        envvar=env_name("--hub-port"),
        show_envvar=True,
        min=0,
        max=65535,
        help="Port of the hub API.",
    ),
    token: str | None = HubTokenOpt,  # type: ignore[assignment]
    reruns: bool = typer.Option(
        True,
        "--reruns/--no-reruns",
        envvar=env_name("--hub-reruns"),
        show_envvar=True,
        help="Let POST /v1/jobs/ID/rerun train in this process's environment (off where it has no data).",
    ),
    hub: Path | None = HubOpt,  # type: ignore[assignment]
    model_config_file: Path | None = ModelConfigFileOpt,  # type: ignore[assignment]
    model_base: Path | None = ModelBaseOpt,  # type: ignore[assignment]
    serving: str = ServingOpt,  # type: ignore[assignment]
    kafka: str = KafkaOpt,  # type: ignore[assignment]
    topic_prefix: str = TopicPrefixOpt,  # type: ignore[assignment]
) -> None:
    """Serve the hub's JSON HTTP API until SIGTERM/SIGINT."""
    import signal
    import threading

    from chexstack.hub.api import make_server

    with service(hub, model_config_file=model_config_file, model_base=model_base, serving=serving,
                 kafka=kafka, topic_prefix=topic_prefix) as svc:  # fmt: skip
        try:
            server = make_server(svc, host, port, token, reruns)
        except OSError as exc:
            raise fail(f"cannot listen on {host}:{port}: {exc}") from exc
        # serve_forever runs here; a signal asks it to stop from another thread (shutdown() blocks).
        stop = lambda *_: threading.Thread(target=server.shutdown, daemon=True).start()  # noqa: E731
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        typer.echo(f"hub API on {server.url} (hub {svc.hub.path}, token {'required' if token else 'off'})")
        try:
            server.serve_forever(poll_interval=0.5)
        finally:
            server.server_close()


@hub_app.command("projects")
def projects(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    hub: Path | None = HubOpt,  # type: ignore[assignment]
) -> None:
    """Projects and their model variations, with job counts."""
    with service(hub) as svc:
        found = svc.projects()
    if as_json:
        print_json(found)
        return
    for p in found:
        typer.echo(p["name"])
        for v in p["variations"]:
            typer.echo(f"  {v['name']}: {v['jobs']} job(s), last {v['last_job_at'] or '-'}")


def register(app: typer.Typer) -> None:
    app.add_typer(hub_app, name="hub")
