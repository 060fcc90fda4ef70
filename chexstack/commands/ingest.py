"""`chexstack ingest serve`: the ingest service, uploads over HTTP for clients without the pseudonym key."""

from __future__ import annotations

from typing import Annotated

import typer

from chexstack.settings import (
    DEFAULT_KAFKA,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_TOPIC_PREFIX,
    KafkaOpt,
    Limits,
    MaxBytesOpt,
    MaxPixelsOpt,
    PseudonymKeyOpt,
    StoreOpt,
    TopicPrefixOpt,
    option,
    secret,
)
from chexstack.topics import Topics

DEFAULT_INGEST_PORT = 8700

ingest_app = typer.Typer(
    help="The ingest service: uploads over HTTP, for clients that must not hold the pseudonym key.",
    no_args_is_help=True,
)


def fail(message: object) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@ingest_app.command("serve")
def serve(
    host: Annotated[
        str, option("--ingest-host", "Address the API binds (127.0.0.1: this machine only).", alias="--host")
    ] = "127.0.0.1",
    port: Annotated[
        int, option("--ingest-port", "Port of the API.", alias="--port", min=0, max=65535)
    ] = DEFAULT_INGEST_PORT,
    token: Annotated[
        str | None,
        option(
            "--ingest-token",
            "Bearer token every upload needs; CHEXSTACK_INGEST_TOKEN_FILE names a file holding it instead."
            " Unset: no token (anybody who reaches the port can upload).",
            show_default=False,
        ),
    ] = None,
    kafka: KafkaOpt = DEFAULT_KAFKA,
    store: StoreOpt = None,
    pseudonym_key: PseudonymKeyOpt = None,
    max_bytes: MaxBytesOpt = DEFAULT_MAX_BYTES,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    topic_prefix: TopicPrefixOpt = DEFAULT_TOPIC_PREFIX,
) -> None:
    """Serve uploads (POST /v1/uploads) until SIGTERM/SIGINT: each is validated, de-identified, stored and
    published as `chexstack upload` does it, with this process's key, store and Kafka user.

    Exit status: 2 when the token, the key or the store is unusable or the port is taken.
    """
    import signal
    import threading

    from chexstack.ingest.api import IngestServer
    from chexstack.ingest.uploader import open_uploader

    limits = Limits(max_bytes=max_bytes, max_pixels=max_pixels)
    try:
        token = token if token is not None else secret("CHEXSTACK_INGEST_TOKEN")
        uploader = open_uploader(kafka, store, pseudonym_key, limits, Topics(topic_prefix))
    except (OSError, ValueError) as exc:
        raise fail(exc) from exc
    try:
        server = IngestServer((host, port), uploader, token=token)
    except OSError as exc:
        uploader.close()
        raise fail(f"cannot listen on {host}:{port}: {exc}") from exc
    # serve_forever runs here; a signal asks it to stop from another thread (shutdown() blocks).
    stop = lambda *_: threading.Thread(target=server.shutdown, daemon=True).start()  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    required = "required" if token else "off"
    typer.echo(f"ingest API on {server.url} (store {uploader.store.root}, Kafka {kafka}, token {required})")
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        uploader.close()


def register(app: typer.Typer) -> None:
    app.add_typer(ingest_app, name="ingest")
