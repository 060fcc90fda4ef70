"""Read and atomically rewrite TF Serving's models.config (ModelServerConfig text proto).

Only the fields asked for change; every other model, field and policy is written back as parsed.
A leading comment block (the one the serving role writes) is kept, other comments are not (text
proto has no place for them). Writers hold an flock on `<file>.lock` so two promotions never lose
each other's change, and the new text replaces the old with os.replace so serving never reads half
a file (the serving role mounts the directory, so the rename is visible in the container).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from chexstack.serve.config import ConfigError, parse_model_server_config


class ModelsConfigError(ValueError):
    """models.config is missing, malformed, or lacks the model asked for."""


def _header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if line.startswith("#"):
            lines.append(line)
        else:
            break
    return "".join(line + "\n" for line in lines)


def read(path: Path) -> Any:
    """The validated ModelServerConfig in `path`."""
    return parse(_read_text(path), path)


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError as exc:
        raise ModelsConfigError(f"models.config {path} does not exist") from exc
    except OSError as exc:
        raise ModelsConfigError(f"cannot read models.config {path}: {exc}") from exc


def parse(text: str, path: Path | str = "models.config") -> Any:
    try:
        return parse_model_server_config(text)
    except ConfigError as exc:
        raise ModelsConfigError(f"{path}: {exc}") from exc


def to_text(config: Any, header: str = "") -> str:
    return header + str(text_format.MessageToString(config))


def model(config: Any, name: str, path: Path | str = "models.config") -> Any:
    """The ModelConfig of one model (a reference: changes go into `config`)."""
    for entry in config.model_config_list.config:
        if entry.name == name:
            return entry
    names = ", ".join(m.name for m in config.model_config_list.config) or "none"
    raise ModelsConfigError(f"{path} has no model {name!r} (models: {names})")


def model_names(config: Any) -> list[str]:
    return [m.name for m in config.model_config_list.config]


def labels(config: Any, name: str) -> dict[str, int]:
    return dict(sorted(model(config, name).version_labels.items()))


def policy_text(config: Any, name: str) -> str:
    """`latest 1`, `all`, or `specific 1,2`: how the model's version policy reads in a listing."""
    policy = model(config, name).model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "specific":
        return "specific " + ",".join(str(v) for v in sorted(policy.specific.versions))
    if choice == "all":
        return "all"
    return f"latest {policy.latest.num_versions or 1 if choice == 'latest' else 1}"


def policy_selects(config: Any, name: str, version: int) -> bool | None:
    """Whether the version policy names `version`; None when it depends on what is on disk (latest)."""
    policy = model(config, name).model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "specific":
        return version in set(policy.specific.versions)
    if choice == "all":
        return True
    return None


def set_label(config: Any, name: str, label: str, version: int) -> int | None:
    """version_labels[label] = version; returns the version it had before (None: new label)."""
    if version < 1:
        raise ModelsConfigError(f"label {label!r}: version must be positive, got {version}")
    entry = model(config, name)
    previous = entry.version_labels.get(label)
    entry.version_labels[label] = version
    return None if previous is None else int(previous)


def remove_label(config: Any, name: str, label: str) -> int | None:
    entry = model(config, name)
    if label not in entry.version_labels:
        return None
    previous = int(entry.version_labels[label])
    del entry.version_labels[label]
    return previous


def add_specific_version(config: Any, name: str, version: int) -> bool:
    """Add `version` to a `specific` version policy; False when there is nothing to add.

    A `latest` or `all` policy (or none, which means latest 1) is left alone: changing its kind would
    change which other versions serving keeps.
    """
    if version < 1:
        raise ModelsConfigError(f"version must be positive, got {version}")
    policy = model(config, name).model_version_policy
    if policy.WhichOneof("policy_choice") != "specific" or version in policy.specific.versions:
        return False
    versions = sorted({*policy.specific.versions, version})
    del policy.specific.versions[:]
    policy.specific.versions.extend(versions)
    return True


def write(path: Path, config: Any, header: str = "") -> None:
    """Replace `path` atomically with `config` (validated first), keeping the file's mode."""
    path = Path(path)
    text = to_text(config, header)
    parse(text, path)  # never write a file serving would refuse
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def edit(path: Path, then: Callable[[Any], None] | None = None) -> Iterator[Any]:
    """`with edit(path) as config:` change the proto; it is written back (atomically) if it changed.

    Holds an exclusive lock on `<path>.lock` from the read to the write, and through `then(config)`,
    which runs after the write (the hand-off asks serving to reload there, so two writers' reloads
    reach serving in the order of their writes).
    """
    path = Path(path)
    lock_path = path.with_name(path.name + ".lock")
    try:
        lock = open(lock_path, "a")  # noqa: SIM115 - closed below, after the write
    except OSError as exc:
        raise ModelsConfigError(f"cannot lock {path} (via {lock_path}): {exc}") from exc
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        text = _read_text(path)
        config = parse(text, path)
        before = config.SerializeToString(deterministic=True)
        yield config
        if config.SerializeToString(deterministic=True) != before:
            write(path, config, _header(text))
        if then is not None:
            then(config)
    finally:
        lock.close()
