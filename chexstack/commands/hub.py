"""`chexstack hub serve|projects`: the hub's HTTP API; helpers the hub commands share."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from chexstack.settings import (
    DEFAULT_KAFKA,
    DEFAULT_SERVING,
    DEFAULT_TOPIC_PREFIX,
    DEFAULT_WAIT_S,
    HubOpt,
    JsonOpt,
    KafkaOpt,
    ModelBaseOpt,
    ModelConfigFileOpt,
    ServingOpt,
    TopicPrefixOpt,
    WaitOpt,
    default_hub,
    option,
    secret,
)

if TYPE_CHECKING:
    from chexstack.hub.service import Service

hub_app = typer.Typer(
    help="The model information hub (projects, models, jobs) and its HTTP API.", no_args_is_help=True
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
    topic_prefix: str = DEFAULT_TOPIC_PREFIX,
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
    # The variables are CHEXSTACK_HUB_HOST/PORT/RERUNS (a bare CHEXSTACK_PORT would not say whose port);
    # the short --host/--port/--reruns stay as aliases for scripts and the role.
    host: Annotated[
        str,
        option("--hub-host", "Address the hub API binds (127.0.0.1: this machine only).", alias="--host"),
    ] = "127.0.0.1",
    port: Annotated[
        int, option("--hub-port", "Port of the hub API.", alias="--port", min=0, max=65535)
    ] = 8600,
    token: Annotated[
        str | None,
        option(
            "--hub-token",
            "Bearer token the hub API requires (all but /healthz); CHEXSTACK_HUB_TOKEN_FILE names a file"
            " holding it instead. Unset: no token.",
            show_default=False,
        ),
    ] = None,
    read_token: Annotated[
        str | None,
        option(
            "--hub-read-token",
            "A second bearer token that may only GET (list and show; no rerun, hand-off, promote, rollback"
            " or A/B change); CHEXSTACK_HUB_READ_TOKEN_FILE names a file holding it instead."
            " Needs --hub-token.",
            show_default=False,
        ),
    ] = None,
    reruns: Annotated[
        bool,
        option(
            "--hub-reruns/--no-hub-reruns",
            "Let POST /v1/jobs/ID/rerun train in this process's environment (off where it has no data).",
            alias="--reruns/--no-reruns",
        ),
    ] = True,
    wait_s: WaitOpt = DEFAULT_WAIT_S,
    hub: HubOpt = None,
    model_config_file: ModelConfigFileOpt = None,
    model_base: ModelBaseOpt = None,
    serving: ServingOpt = DEFAULT_SERVING,
    kafka: KafkaOpt = DEFAULT_KAFKA,
    topic_prefix: TopicPrefixOpt = DEFAULT_TOPIC_PREFIX,
) -> None:
    """Serve the hub's JSON HTTP API until SIGTERM/SIGINT."""
    import signal
    import threading

    from chexstack.hub.api import make_server

    try:
        token = token if token is not None else secret("CHEXSTACK_HUB_TOKEN")
        read_token = read_token if read_token is not None else secret("CHEXSTACK_HUB_READ_TOKEN")
    except ValueError as exc:
        raise fail(str(exc)) from exc
    with service(hub, model_config_file=model_config_file, model_base=model_base, serving=serving,
                 kafka=kafka, topic_prefix=topic_prefix) as svc:  # fmt: skip
        try:
            server = make_server(svc, host=host, port=port, token=token, reruns=reruns, label_wait_s=wait_s,
                                 read_token=read_token)  # fmt: skip
        except OSError as exc:
            raise fail(f"cannot listen on {host}:{port}: {exc}") from exc
        except ValueError as exc:  # the server's rules for the two tokens
            raise fail(f"--hub-read-token: {exc}") from exc
        # serve_forever runs here; a signal asks it to stop from another thread (shutdown() blocks).
        stop = lambda *_: threading.Thread(target=server.shutdown, daemon=True).start()  # noqa: E731
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        tokens = ("required" + (", read token too" if read_token else "")) if token else "off"
        typer.echo(f"hub API on {server.url} (hub {svc.hub.path}, token {tokens})")
        try:
            server.serve_forever(poll_interval=0.5)
        finally:
            server.server_close()


@hub_app.command("projects")
def projects(
    as_json: JsonOpt = False,
    hub: HubOpt = None,
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
