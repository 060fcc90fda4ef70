"""Write, read and atomically rewrite TF Serving's models.config (ModelServerConfig text proto).

The one writer of models.config: `render` builds the first file from the serving role's model list
(`serving_models`, through the role's filter plugin), and `edit` rewrites it for the hub. Only the
fields asked for change; every other model, field and policy is written back as parsed.
A leading comment block (the one the serving role writes) is kept, other comments are not (text
proto has no place for them). Writers hold an flock on `<file>.lock` so two promotions never lose
each other's change, and the new text replaces the old with os.replace so serving never reads half
a file (the serving role mounts the directory, so the rename is visible in the container).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from chexstack.serve.config import ConfigError, parse_model_server_config

# The keys of one model in `from_models` (the serving role's serving_models entries).
MODEL_KEYS = ("name", "base_path", "version_policy", "version_labels")
POLICY_KEYS = ("latest", "all", "specific")


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


def from_models(models: Sequence[Mapping[str, Any]], models_dir: str) -> Any:
    """The ModelServerConfig of a list of models, e.g. the serving role's `serving_models`.

    Each model is a mapping with
      name            the model's name in the API;
      base_path       its directory of numbered versions (default `<models_dir>/<name>`);
      version_policy  one of {latest: N}, {all: true}, {specific: [versions]}; default: the versions
                      version_labels names (else none, which TF Serving reads as latest 1);
      version_labels  {label: version}.
    A label of a `specific` policy must name one of its versions: TF Serving refuses the whole file
    otherwise. Bad input raises ModelsConfigError naming the model and the field.
    """
    if isinstance(models, (str, bytes)) or not isinstance(models, Sequence) or not models:
        raise ModelsConfigError(f"the model list must name at least one model, got {models!r}")
    config = model_server_config_pb2.ModelServerConfig()
    seen: set[str] = set()
    for index, spec in enumerate(models):
        if not isinstance(spec, Mapping):
            raise ModelsConfigError(f"model #{index + 1}: expected a mapping with a name, got {spec!r}")
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise ModelsConfigError(f"model #{index + 1}: `name` must be a non-empty string, got {name!r}")
        unknown = sorted(set(spec) - set(MODEL_KEYS))
        if unknown:
            raise ModelsConfigError(
                f"model {name!r}: unknown keys {unknown} (known: {', '.join(MODEL_KEYS)})"
            )
        if name in seen:
            raise ModelsConfigError(f"model {name!r} is listed twice")
        seen.add(name)
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = str(spec.get("base_path") or f"{models_dir.rstrip('/')}/{name}")
        entry.model_platform = "tensorflow"
        labels = _labels(name, spec.get("version_labels"))
        _set_policy(entry.model_version_policy, name, spec.get("version_policy"), labels)
        for label, version in labels.items():
            entry.version_labels[label] = version
    return config


def render(models: Sequence[Mapping[str, Any]], models_dir: str, header: str = "") -> str:
    """models.config text of `from_models(models, models_dir)` after `header` (comment lines)."""
    if any(line and not line.startswith("#") for line in header.splitlines()):
        raise ModelsConfigError(f"the header must be comment lines (starting with #), got {header!r}")
    text = to_text(from_models(models, models_dir), header)
    parse(text)  # never hand out a file serving would refuse
    return text


def _version(name: str, what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise ModelsConfigError(f"model {name!r}: {what} must be a positive version number, got {value!r}")
    version = int(value)
    if version < 1:
        raise ModelsConfigError(f"model {name!r}: {what} must be a positive version number, got {value!r}")
    return version


def _labels(name: str, labels: Any) -> dict[str, int]:
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise ModelsConfigError(f"model {name!r}: version_labels must map labels to versions, got {labels!r}")
    out: dict[str, int] = {}
    for label in sorted(labels, key=str):
        if not isinstance(label, str) or not label:
            raise ModelsConfigError(
                f"model {name!r}: a version label must be a non-empty string, got {label!r}"
            )
        out[label] = _version(name, f"label {label!r}", labels[label])
    return out


def _set_policy(policy: Any, name: str, spec: Any, labels: dict[str, int]) -> None:
    spec = {} if spec is None else spec
    if not isinstance(spec, Mapping):
        raise ModelsConfigError(f"model {name!r}: version_policy must be a mapping, got {spec!r}")
    unknown = sorted(set(spec) - set(POLICY_KEYS))
    if unknown:
        raise ModelsConfigError(
            f"model {name!r}: unknown version_policy keys {unknown} (one of latest, all, specific)"
        )
    # `all: false` chooses nothing, like a missing key.
    chosen = [k for k in POLICY_KEYS if spec.get(k) is not None and spec.get(k) is not False]
    if len(chosen) > 1:
        raise ModelsConfigError(
            f"model {name!r}: version_policy must be one of latest, all, specific, got {chosen}"
        )
    kind = chosen[0] if chosen else None
    if kind == "latest":
        policy.latest.num_versions = _version(name, "version_policy.latest", spec["latest"])
    elif kind == "all":
        if spec["all"] is not True:
            raise ModelsConfigError(f"model {name!r}: version_policy.all must be true, got {spec['all']!r}")
        policy.all.SetInParent()
    elif kind == "specific" or labels:
        raw = spec.get("specific") if kind == "specific" else list(labels.values())
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence) or not raw:
            raise ModelsConfigError(
                f"model {name!r}: version_policy.specific must list versions, got {raw!r}"
            )
        versions = sorted({_version(name, "version_policy.specific", v) for v in raw})
        unloaded = {label: v for label, v in labels.items() if v not in versions}
        if unloaded:
            raise ModelsConfigError(
                f"model {name!r}: version_labels {unloaded} name versions version_policy.specific "
                f"{versions} does not load (TF Serving would refuse the whole models.config)"
            )
        policy.specific.versions.extend(versions)


def write(path: Path, config: Any, header: str = "", *, overwrite: bool = True) -> None:
    """Replace `path` atomically with `config` (validated first), keeping the file's mode.

    overwrite=False creates the file and raises ModelsConfigError if it exists (checked by the link
    itself, so a file another process creates meanwhile is not replaced either).
    """
    path = Path(path)
    text = to_text(config, header)
    parse(text, path)  # never write a file serving would refuse
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ModelsConfigError(f"cannot write models.config {path}: {exc}") from exc
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError as exc:
        raise ModelsConfigError(f"{path} exists; --force replaces it") from exc
    except OSError as exc:
        raise ModelsConfigError(f"cannot write models.config {path}: {exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)


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
