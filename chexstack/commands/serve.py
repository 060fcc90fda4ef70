"""`chexstack serve`: a TF Serving-compatible model server (REST + gRPC) in Python."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from chexstack.settings import (
    DEFAULT_MODEL_NAME,
    DEFAULT_SERVING,
    DEFAULT_SERVING_REST,
    ModelBaseOpt,
    ServingOpt,
    ServingRestOpt,
    option,
)

# The variables of serve's former --host/--port/--rest-api-port. Nothing reads them any more, so one left in
# an environment would silently move serving to other ports than the ones it names: refused instead.
REMOVED_VARIABLES = {
    "CHEXSTACK_HOST": "CHEXSTACK_SERVING and CHEXSTACK_SERVING_REST (HOST:PORT each)",
    "CHEXSTACK_PORT": "CHEXSTACK_SERVING=HOST:PORT",
    "CHEXSTACK_REST_API_PORT": "CHEXSTACK_SERVING_REST=HOST:PORT",
}


def serve(  # the flags mirror tensorflow_model_server's (dashes for underscores), but for the addresses
    ctx: typer.Context,
    model_config_file: Annotated[
        Path | None, option("--model-config-file", "models.config (ModelServerConfig text proto).")
    ] = None,
    model_name: Annotated[
        str, option("--model-name", "Name of the single model served from --model-base-path.")
    ] = DEFAULT_MODEL_NAME,
    model_base_path: ModelBaseOpt = None,
    serving: ServingOpt = DEFAULT_SERVING,
    serving_rest: ServingRestOpt = DEFAULT_SERVING_REST,
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
    """Serve SavedModels over TF Serving's REST (--serving-rest) and gRPC (--serving) APIs until
    SIGTERM/SIGINT."""
    # Everything that can be checked without TensorFlow is, first: a wrong flag or file fails at once.
    from chexstack.serve.config import ConfigError
    from chexstack.serve.options import ServeOptions, parse_address

    try:
        for name, instead in REMOVED_VARIABLES.items():
            if name in os.environ:
                raise ConfigError(f"{name} is no longer read: set {instead} instead")
        # CHEXSTACK_MODEL_CONFIG_FILE and CHEXSTACK_MODEL_BASE_PATH are shared with the commands that write
        # versions and labels, so a variable gives way to the other flag; both flags at once is a conflict.
        # With both variables, the config file wins: it names every model's base path.
        if model_config_file is not None and model_base_path is not None:
            config_flag, base_flag = _from_flag(ctx, "model_config_file"), _from_flag(ctx, "model_base_path")
            if base_flag and not config_flag:
                model_config_file = None
            elif not base_flag:
                model_base_path = None
        options = ServeOptions(
            model_config_file=model_config_file,
            model_name=model_name,
            model_base_path=model_base_path,
            grpc=parse_address("--serving", serving),
            rest=parse_address("--serving-rest", serving_rest),
            model_config_file_poll_wait_seconds=model_config_file_poll_wait_seconds,
            file_system_poll_wait_seconds=file_system_poll_wait_seconds,
            enable_batching=enable_batching,
            batching_parameters_file=batching_parameters_file,
            monitoring_config_file=monitoring_config_file,
        )
        options.check()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from chexstack.serve.server import run

    try:
        run(options)
    except (ConfigError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _from_flag(ctx: typer.Context, name: str) -> bool:
    """Whether the option came from the command line (not its variable or default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
