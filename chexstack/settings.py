"""Every setting has one name: the CLI flag `--x-y` and the environment variable `CHEXSTACK_X_Y`.

Every command declares its options with `option()` below (typer's Annotated form); the options several
commands share are the `*Opt` aliases. Role variables in the platform use the same names in lower case
(`chexstack_kafka`, `workers_max_bytes`, ...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

import typer

DEFAULT_KAFKA: Final = "127.0.0.1:9092"
DEFAULT_SERVING: Final = "127.0.0.1:8500"
DEFAULT_SERVING_REST: Final = "127.0.0.1:8501"
DEFAULT_MODEL_NAME: Final = "chexnet"
# --seed of every command that draws random numbers (data synth/prepare, models export, train).
DEFAULT_SEED: Final = 0
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


def secret(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """A secret setting: $NAME, else the first line of the file named by $NAME_FILE, else None.

    The platform hands tokens to containers as compose secrets (files under /run/secrets named by
    `*_FILE` variables), so they never appear in `docker inspect`. A `*_FILE` that names a file that
    cannot be read, or an empty one, is an error that names the variable: silently running without a
    token would turn authentication off.
    """
    e = os.environ if env is None else env
    if e.get(name):
        return e[name]
    path = e.get(f"{name}_FILE")
    if not path:
        return None
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name}_FILE={path}: cannot read the secret: {exc}") from exc
    if not value:
        raise ValueError(f"{name}_FILE={path}: the file is empty")
    return value


def env_name(flag: str) -> str:
    """`--max-bytes` -> `CHEXSTACK_MAX_BYTES`: the one rule that links flags and variables."""
    return "CHEXSTACK_" + flag.lstrip("-").replace("-", "_").upper()


def option(flag: str, help: str, *, alias: str | None = None, env: bool = True, **kw: Any) -> Any:
    """The one way to declare a CLI option, in typer's Annotated form:

        max_batch: Annotated[int, option("--max-batch", "Messages per transaction.", min=1)] = 16

    The parameter's default is the option's default: with the role default, the only place it is
    written. The option also reads `CHEXSTACK_<FLAG>` (env_name of `flag`, the part before "/" for an
    on/off pair such as "--export/--no-export"); `alias` is a second spelling, e.g. a short "-f".
    `env=False` for an input of one call rather than a setting (which patient, which image, where to
    write, print JSON): a variable left in a shell must not silently apply to every later call (a
    CHEXSTACK_PATIENT_ID would give every upload one patient's pseudonym).
    Returns typer's OptionInfo; `kw` are typer.Option's other arguments (min, max, show_default, ...).
    """
    decls = (flag,) if alias is None else (flag, alias)
    if not env:
        return typer.Option(*decls, help=help, **kw)
    return typer.Option(*decls, envvar=env_name(flag.split("/")[0]), help=help, show_envvar=True, **kw)


# Options several commands share, with their defaults: `kafka: KafkaOpt = DEFAULT_KAFKA`.
KafkaOpt = Annotated[str, option("--kafka", "Kafka bootstrap servers.")]
StoreOpt = Annotated[
    str | None, option("--store", "Blob store location (directory). Default: $CHEXSTACK_HOME/blobs.")
]
# Serving's addresses: `chexstack serve` binds them, the router and `ab set` connect to --serving.
ServingOpt = Annotated[str, option("--serving", "TF Serving gRPC address HOST:PORT.")]
ServingRestOpt = Annotated[str, option("--serving-rest", "TF Serving HTTP/REST address HOST:PORT.")]
PseudonymKeyOpt = Annotated[
    str | None,
    option(
        "--pseudonym-key",
        "Secret key for patient pseudonyms (keyed hash); CHEXSTACK_PSEUDONYM_KEY_FILE names a file holding"
        " it instead. Unset: generated once into the store.",
        show_default=False,
    ),
]


def configured_pseudonym_key(flag: str | None) -> str | None:
    """The key --pseudonym-key gave, else CHEXSTACK_PSEUDONYM_KEY(_FILE), else None (the store's own).

    Raises ValueError for a _FILE that cannot be read or is empty (see `secret`)."""
    return flag if flag else secret("CHEXSTACK_PSEUDONYM_KEY")


ModelNameOpt = Annotated[str, option("--model-name", "Model name in serving.")]
MaxBytesOpt = Annotated[int, option("--max-bytes", "Largest accepted upload in bytes.", min=1)]
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
MaxPixelsOpt = Annotated[
    int, option("--max-pixels", "Largest accepted image in pixels (decompression-bomb guard).", min=1)
]
DEFAULT_MAX_PIXELS: Final = 60_000_000
TopicPrefixOpt = Annotated[
    str, option("--topic-prefix", "Prefix for every topic name (isolates tenants and test runs).")
]
DEFAULT_TOPIC_PREFIX: Final = ""
# How long the broker lets a transaction stay open before aborting it (the default of
# --transaction-timeout-s). A worker killed mid-transaction holds back every read_committed reader of the
# partitions it wrote to (and the offset fetch of whoever takes over its input partitions) until then,
# plus up to 10 s (the broker's transaction.abort.timed.out.transaction.cleanup.interval.ms); librdkafka's
# default is 60 s. A batch's transaction is opened only after its handler ran, so it lasts as long as its
# produce and commit.
DEFAULT_TRANSACTION_TIMEOUT_S: Final = 30.0
GroupOpt = Annotated[str | None, option("--group", "Kafka consumer group (default: chexstack-<worker>).")]
JsonOpt = Annotated[bool, option("--json", "Print JSON.", env=False)]
# Training and the model information hub.
WaitOpt = Annotated[
    float,
    option("--wait-s", "How long to wait for serving to apply the new label (0: do not wait).", min=0.0),
]
DEFAULT_WAIT_S: Final = 60.0
HubOpt = Annotated[
    Path | None,
    option("--hub", "Model information hub database (SQLite file). Default: $CHEXSTACK_HOME/hub/hub.sqlite."),
]
# The name `chexstack serve` has (after tensorflow_model_server's --model_base_path), in every command.
ModelBaseOpt = Annotated[
    Path | None,
    option(
        "--model-base-path",
        "Directory of the model's numbered SavedModel versions (serving's base_path). "
        "Default: $CHEXSTACK_HOME/models/<model-name>.",
    ),
]
ModelConfigFileOpt = Annotated[
    Path | None,
    option("--model-config-file", "The serving models.config whose version labels promote/rollback rewrite."),
]
LogsDirOpt = Annotated[
    Path | None,
    option("--logs-dir", "TensorBoard log directory (one run per job). Default: $CHEXSTACK_HOME/logs."),
]


@dataclass(frozen=True)
class Limits:
    """Upload limits; both are enforced before any pixel is decoded where the format allows."""

    # No defaults: the CLI options (DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS) and the role are their home.
    max_bytes: int
    max_pixels: int
