"""Every setting has one name: the CLI flag `--x-y` and the environment variable `CHEXSTACK_X_Y`.

The typer options below are shared by all commands so a setting is spelled the same everywhere;
role variables in the platform use the same names in lower case (`chexstack_kafka`, ...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import typer

DEFAULT_KAFKA: Final = "127.0.0.1:9092"
DEFAULT_SERVING: Final = "127.0.0.1:8500"
DEFAULT_MODEL_NAME: Final = "chexnet"
IMAGE_SIZE: Final = 224


def default_home() -> Path:
    """Where local state lives when nothing else is configured (blob store, broker data, caches)."""
    return Path(os.environ.get("CHEXSTACK_HOME", Path.home() / ".local" / "share" / "chexstack"))


def default_cache() -> Path:
    """Download caches (Maven jars): kept across fresh clones so CI does not download twice."""
    return Path(os.environ.get("CHEXSTACK_CACHE", Path.home() / ".cache" / "chexstack"))


def default_store() -> str:
    return str(default_home() / "blobs")


def default_hub() -> Path:
    return default_home() / "hub" / "hub.sqlite"


def default_model_base(model_name: str = DEFAULT_MODEL_NAME) -> Path:
    return default_home() / "models" / model_name


def default_logs() -> Path:
    return default_home() / "logs"


def env_name(flag: str) -> str:
    """`--max-bytes` -> `CHEXSTACK_MAX_BYTES`: the one rule that links flags and variables."""
    return "CHEXSTACK_" + flag.lstrip("-").replace("-", "_").upper()


def _opt(default: object, flag: str, help_: str, **kw: object) -> object:
    return typer.Option(default, flag, envvar=env_name(flag), help=help_, show_envvar=True, **kw)  # type: ignore[call-overload, arg-type]


KafkaOpt = _opt(DEFAULT_KAFKA, "--kafka", "Kafka bootstrap servers.")
StoreOpt = _opt(None, "--store", "Blob store location (directory). Default: $CHEXSTACK_HOME/blobs.")
ServingOpt = _opt(DEFAULT_SERVING, "--serving", "TF Serving gRPC target host:port.")
PseudonymKeyOpt = _opt(
    None,
    "--pseudonym-key",
    "Secret key for patient pseudonyms (keyed hash). Generated into the store if unset.",
)
ModelNameOpt = _opt(DEFAULT_MODEL_NAME, "--model-name", "Model name in serving.")
MaxBytesOpt = _opt(64 * 1024 * 1024, "--max-bytes", "Largest accepted upload in bytes.", min=1)
MaxPixelsOpt = _opt(
    60_000_000, "--max-pixels", "Largest accepted image in pixels (decompression-bomb guard).", min=1
)
TopicPrefixOpt = _opt("", "--topic-prefix", "Prefix for every topic name (isolates tenants and test runs).")
GroupOpt = _opt(None, "--group", "Kafka consumer group (default: chexstack-<worker>).")
# Training and the model information hub.
HubOpt = _opt(
    None, "--hub", "Model information hub database (SQLite file). Default: $CHEXSTACK_HOME/hub/hub.sqlite."
)
ModelBaseOpt = _opt(
    None,
    "--model-base",
    "Directory of the model's numbered SavedModel versions. Default: $CHEXSTACK_HOME/models/<model-name>.",
)
ModelConfigFileOpt = _opt(
    None, "--model-config-file", "The serving models.config whose version labels promote/rollback rewrite."
)
LogsDirOpt = _opt(
    None, "--logs-dir", "TensorBoard log directory (one run per job). Default: $CHEXSTACK_HOME/logs."
)


@dataclass(frozen=True)
class Limits:
    """Upload limits; both are enforced before any pixel is decoded where the format allows."""

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 60_000_000
