"""`chexstack serve`: a TF Serving-compatible model server (REST + gRPC) in Python."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from chexstack.settings import env_name


def _opt(default: Any, flag: str, help_: str, **kw: Any) -> Any:
    """Flags mirror tensorflow_model_server's (dashes for underscores); each also reads CHEXSTACK_<FLAG>."""
    return typer.Option(default, flag, envvar=env_name(flag), help=help_, show_envvar=True, **kw)


def serve(
    model_config_file: Path | None = _opt(
        None, "--model-config-file", "models.config (ModelServerConfig text proto)."
    ),
    model_name: str | None = _opt(None, "--model-name", "Name of the single model (with --model-base-path)."),
    model_base_path: str | None = _opt(None, "--model-base-path", "Directory holding numbered version dirs."),
    port: int = _opt(8500, "--port", "gRPC port.", min=0, max=65535),
    rest_api_port: int = _opt(8501, "--rest-api-port", "HTTP/REST port.", min=0, max=65535),
    host: str = _opt("127.0.0.1", "--host", "Address to bind both ports to."),
    model_config_file_poll_wait_seconds: float = _opt(
        30.0, "--model-config-file-poll-wait-seconds", "Re-read the config file this often (0: never)."
    ),
    file_system_poll_wait_seconds: float = _opt(
        2.0, "--file-system-poll-wait-seconds", "Scan base paths for new versions this often (0: never)."
    ),
    enable_batching: bool = _opt(False, "--enable-batching", "Batch concurrent requests server-side."),
    batching_parameters_file: Path | None = _opt(
        None, "--batching-parameters-file", "BatchingParameters text proto."
    ),
    monitoring_config_file: Path | None = _opt(
        None, "--monitoring-config-file", "MonitoringConfig text proto (Prometheus endpoint)."
    ),
) -> None:
    """Serve SavedModels over TF Serving's REST and gRPC APIs until SIGTERM/SIGINT."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from chexstack.serve.config import ConfigError
    from chexstack.serve.server import ServeOptions, run

    options = ServeOptions(
        model_config_file=model_config_file,
        model_name=model_name,
        model_base_path=model_base_path,
        host=host,
        port=port,
        rest_api_port=rest_api_port,
        model_config_file_poll_wait_seconds=model_config_file_poll_wait_seconds,
        file_system_poll_wait_seconds=file_system_poll_wait_seconds,
        enable_batching=enable_batching,
        batching_parameters_file=batching_parameters_file,
        monitoring_config_file=monitoring_config_file,
    )
    try:
        run(options)
    except (ConfigError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
