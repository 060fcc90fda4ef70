"""The `chexstack` command line. Each command group lives in chexstack/commands/<name>.py.

Heavy imports (TensorFlow, pydicom) happen inside the commands, so `chexstack --help` stays fast.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from types import ModuleType
from typing import Annotated

import typer
import typer.rich_utils

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


def _help_width() -> int:
    """--help at the terminal's width; 100 columns into a pipe or a file (click and rich would say 80)."""
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return 100


HELP_WIDTH = _help_width()
# typer's rich help reads its width from here (its own TERMINAL_WIDTH variable wins when set).
if typer.rich_utils.MAX_WIDTH is None:
    typer.rich_utils.MAX_WIDTH = HELP_WIDTH

app = typer.Typer(
    name="chexstack",
    # click's own help (TYPER_USE_RICH=0): the same width.
    context_settings={"terminal_width": HELP_WIDTH, "max_content_width": HELP_WIDTH},
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
    # How this one call reports, not a setting: CHEXSTACK_LOG_LEVEL=DEBUG is the variable that does the same.
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            help="Log at DEBUG, with librdkafka's connection log and TensorFlow's start-up lines "
            "(as CHEXSTACK_LOG_LEVEL=DEBUG).",
        ),
    ] = False,
) -> None:
    level = "DEBUG" if verbose else os.environ.get("CHEXSTACK_LOG_LEVEL", "INFO").upper()
    if level not in logging.getLevelNamesMapping():
        typer.echo(
            f"error: CHEXSTACK_LOG_LEVEL={level}: not a log level (DEBUG, INFO, WARNING, ERROR)", err=True
        )
        raise typer.Exit(2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _quiet_tensorflow(verbose=level == "DEBUG")
    from chexstack.kafka_auth import client_security

    # Kafka credentials are read by every client; a half-set pair fails here, once, naming both.
    try:
        client_security()
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


# What TensorFlow's C++ libraries print while they load, before their logging is configured (so
# TF_CPP_MIN_LOG_LEVEL does not hide it): absl's "WARNING: All log messages before absl::InitializeLog()",
# its I/W/E lines (oneDNN, CPU instructions, CUDA factories) and their continuation.
_TF_BANNER = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\)|[IWE]\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+:\d+\] |"
    r"To enable the following instructions:"
)


def _quiet_tensorflow(*, verbose: bool) -> None:
    """TensorFlow's start-up banner stays off the terminal unless --verbose, for every command that
    imports it (serve, train, models, route, ab set through serving's protos)."""
    if verbose:
        # The commands that set TF_CPP_MIN_LOG_LEVEL themselves (setdefault) keep this.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if "tensorflow" not in sys.modules and not any(
        isinstance(f, _QuietTensorflowImport) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietTensorflowImport())


class _QuietTensorflowImport(importlib.abc.MetaPathFinder):
    """Imports the `tensorflow` package, the first time anything does, with file descriptor 2 going to a
    temporary file, then writes back to stderr every line of it but the banner (_TF_BANNER). A finder
    because TensorFlow is imported lazily, inside commands and modules that are not the CLI's."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once, and the real finders find the spec
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def quiet_exec(module: ModuleType) -> None:
            sys.stderr.flush()
            saved = os.dup(2)
            with tempfile.TemporaryFile(mode="w+b") as captured:
                os.dup2(captured.fileno(), 2)
                try:
                    exec_module(module)
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)
                    captured.seek(0)
                    kept = [
                        line
                        for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                        if not _TF_BANNER.match(line)
                    ]
                    sys.stderr.write("".join(kept))

        loader.exec_module = quiet_exec  # type: ignore[method-assign]
        return spec


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
    from chexstack.bus import PublishError, ReadError

    # A broker that cannot be read or written is the user's to fix (address, credentials): no traceback.
    try:
        app()
    except (ReadError, PublishError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from exc
