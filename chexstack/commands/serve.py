"""`chexstack serve`: a TF Serving-compatible model server (REST + gRPC) in Python."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from chexstack.settings import DEFAULT_MODEL_NAME, option


def serve(  # the flags mirror tensorflow_model_server's (dashes for underscores)
    model_config_file: Annotated[
        Path | None, option("--model-config-file", "models.config (ModelServerConfig text proto).")
    ] = None,
    model_name: Annotated[
        str, option("--model-name", "Name of the single model served from --model-base-path.")
    ] = DEFAULT_MODEL_NAME,
    model_base_path: Annotated[
        str | None, option("--model-base-path", "Directory holding numbered version dirs.")
    ] = None,
    port: Annotated[int, option("--port", "gRPC port.", min=0, max=65535)] = 8500,
    rest_api_port: Annotated[int, option("--rest-api-port", "HTTP/REST port.", min=0, max=65535)] = 8501,
    host: Annotated[str, option("--host", "Address to bind both ports to.")] = "127.0.0.1",
    model_config_file_poll_wait_seconds: Annotated[
        float,
        option("--model-config-file-poll-wait-seconds", "Re-read the config file this often (0: never)."),
    ] = 30.0,
    file_system_poll_wait_seconds: Annotated[
        float,
        option("--file-system-poll-wait-seconds", "Scan base paths for new versions this often (0: never)."),
    ] = 2.0,
    enable_batching: Annotated[
        bool, option("--enable-batching", "Batch concurrent requests server-side.")
    ] = False,
    batching_parameters_file: Annotated[
        Path | None, option("--batching-parameters-file", "BatchingParameters text proto.")
    ] = None,
    monitoring_config_file: Annotated[
        Path | None,
        option("--monitoring-config-file", "MonitoringConfig text proto (Prometheus endpoint)."),
    ] = None,
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
