"""The `chexstack` command line. Each command group lives in chexstack/commands/<name>.py.

Heavy imports (TensorFlow, pydicom) happen inside the commands, so `chexstack --help` stays fast.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from chexstack import __version__
from chexstack.commands import (
    ab,
    data,
    dlq,
    hub,
    ingest,
    jobs,
    kafka,
    models,
    predictions,
    schemas,
    serve,
    train,
    upload,
    workers,
)

app = typer.Typer(
    name="chexstack",
    help=(
        "CheXStack: chest X-ray ML platform. Every setting --flag can also be set as CHEXSTACK_<FLAG>"
        " (--help lists each one's variable; inputs of one call such as --patient-id have none)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    # An action like --help, not a setting: no CHEXSTACK_VERSION.
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    logging.basicConfig(
        level=os.environ.get("CHEXSTACK_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from chexstack.kafka_auth import client_security

    # Kafka credentials are read by every client; a half-set pair fails here, once, naming both.
    try:
        client_security()
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


for module in (
    kafka,
    schemas,
    upload,
    ingest,
    data,
    serve,
    workers,
    predictions,
    dlq,
    ab,
    train,
    jobs,
    models,
    hub,
):
    module.register(app)


def main() -> None:
    from chexstack.bus import ReadError

    # A broker that cannot be read is the user's to fix (address, credentials): no traceback.
    try:
        app()
    except ReadError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from exc
