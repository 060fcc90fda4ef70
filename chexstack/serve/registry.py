"""Which model versions are loaded: version policy, version labels, file-system polling.

Semantics follow TF Serving: a base path holds numbered version directories; the policy picks
which of them to serve; a label may only be set to a version that is loaded (AVAILABLE);
versions that leave the policy or the disk are unloaded and then report END.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chexstack.serve.config import ConfigError, select_versions
from chexstack.serve.errors import not_found

log = logging.getLogger(__name__)

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclass
class Servable:
    """One loaded SavedModel version."""

    name: str
    version: int
    path: Path
    signatures: dict[str, Any]  # signature name -> ConcreteFunction
    signature_defs: dict[str, Any]  # signature name -> tensorflow SignatureDef proto, as saved
    handle: Any = None  # keeps the loaded object (and its variables) alive


@dataclass
class VersionStatus:
    state: str
    error_code: str = "OK"
    error_message: str = ""


@dataclass
class _Model:
    config: Any  # ModelConfig proto
    versions: dict[int, Servable] = field(default_factory=dict)
    status: dict[int, VersionStatus] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    problem: str | None = None  # why nothing is served, as last logged: logged again only when it changes


Loader = Callable[[str, int, Path], Servable]


def load_servable(name: str, version: int, path: Path) -> Servable:
    """tf.saved_model.load plus the SignatureDefs exactly as stored (what GetModelMetadata returns)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    handle = tf.saved_model.load(str(path))
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / "saved_model.pb").read_bytes())
    defs = {k: v for k, v in saved.meta_graphs[0].signature_def.items()}
    return Servable(name, version, path, dict(handle.signatures), defs, handle)


def versions_on_disk(base_path: Path) -> list[int]:
    """Numbered subdirectories; anything else (e.g. an export's temp dir) is ignored, like TF Serving."""
    try:
        entries = list(base_path.iterdir())
    except OSError:
        return []
    return sorted(int(p.name) for p in entries if p.name.isdigit() and p.is_dir())


def nothing_to_serve(base_path: Path, on_disk: list[int], desired: set[int]) -> str | None:
    """Why a model's base path gives no version to serve (None: it gives one), in words for the log."""
    if desired:
        return None
    if on_disk:
        return f"none of the versions {on_disk} under {base_path} is selected by its model_version_policy"
    try:
        next(base_path.iterdir(), None)
    except FileNotFoundError:
        why = "does not exist"
    except NotADirectoryError:
        why = "is not a directory"
    except OSError as exc:
        why = f"cannot be read ({exc.strerror or exc})"
    else:
        why = "holds no numbered version directory"
    return f"base path {base_path} {why}; waiting for a numbered version directory such as {base_path / '1'}"


class Registry:
    def __init__(self, loader: Loader = load_servable) -> None:
        self._loader = loader
        self._models: dict[str, _Model] = {}
        self._lock = threading.RLock()  # guards _models; never held while loading
        self._poll_lock = threading.Lock()  # one poll (load/unload pass) at a time

    # --- configuration -----------------------------------------------------------------

    def apply_config(self, config: Any) -> None:
        """Switch to a ModelServerConfig: add/remove models, load versions, then set labels.

        Raises ConfigError (after loading) when a label names a version that is not available;
        the previous labels of that model stay in place, as in TF Serving.
        """
        wanted = {m.name: m for m in config.model_config_list.config}
        with self._poll_lock:
            with self._lock:
                for name in list(self._models):
                    old = self._models[name]
                    if name not in wanted or wanted[name].base_path != old.config.base_path:
                        self._unload_all(name, old)
                        del self._models[name]
                for name, model_config in wanted.items():
                    entry = self._models.setdefault(name, _Model(model_config))
                    entry.config = model_config
            self._poll_locked()
            errors: list[str] = []
            with self._lock:
                for name, model_config in wanted.items():
                    entry = self._models[name]
                    labels = dict(model_config.version_labels)
                    bad = {k: v for k, v in labels.items() if v not in entry.versions}
                    if bad:
                        errors += [
                            f"Request to assign label {k!r} to version {v} of model {name!r}, "
                            "which is not currently available for inference"
                            for k, v in sorted(bad.items())
                        ]
                    else:
                        entry.labels = labels
        if errors:
            raise ConfigError("; ".join(errors))

    # --- polling ------------------------------------------------------------------------

    def poll(self) -> None:
        """One pass over every base path: load versions the policy now selects, unload the rest."""
        with self._poll_lock:
            self._poll_locked()

    def _poll_locked(self) -> None:
        with self._lock:
            plans = [(name, m.config) for name, m in self._models.items()]
        for name, config in plans:
            base = Path(config.base_path)
            on_disk = versions_on_disk(base)
            desired = select_versions(config.model_version_policy, on_disk)
            with self._lock:
                entry = self._models.get(name)
                if entry is None:
                    continue
                entry.failed &= set(on_disk)  # a failed version that reappears gets another try
                to_load = sorted(desired - set(entry.versions) - entry.failed)
                to_unload = sorted(set(entry.versions) - desired)
                # Said once, not every poll: it is the same until someone changes the disk or the config.
                problem = nothing_to_serve(base, on_disk, desired)
                if problem != entry.problem:
                    entry.problem = problem
                    if problem is not None:
                        log.warning("model %s: nothing to serve: %s", name, problem)
            for version in to_load:
                self._load(name, version, base / str(version))
            for version in to_unload:
                self._unload(name, version)

    def _load(self, name: str, version: int, path: Path) -> None:
        self._set_state(name, version, VersionStatus(LOADING))
        try:
            servable = self._loader(name, version, path)
        except Exception as exc:  # any load failure leaves the version END with the error
            log.error("failed to load servable version {name: %s version: %d}: %s", name, version, exc)
            with self._lock:
                entry = self._models.get(name)
                if entry is not None:
                    entry.failed.add(version)
                    entry.status[version] = VersionStatus(END, "UNKNOWN", str(exc)[:2000])
            return
        with self._lock:
            entry = self._models.get(name)
            if entry is None:
                return
            entry.versions[version] = servable
            entry.status[version] = VersionStatus(AVAILABLE)
        log.info("Successfully loaded servable version {name: %s version: %d} from %s", name, version, path)

    def _unload(self, name: str, version: int) -> None:
        with self._lock:
            entry = self._models.get(name)
            if entry is None or version not in entry.versions:
                return
            entry.status[version] = VersionStatus(UNLOADING)
            # In-flight requests hold their own reference; dropping ours lets the version go when they finish.
            del entry.versions[version]
            entry.status[version] = VersionStatus(END)
        log.info("Unloaded servable version {name: %s version: %d}", name, version)

    def _unload_all(self, name: str, entry: _Model) -> None:
        for version in sorted(entry.versions):
            self._unload(name, version)

    def _set_state(self, name: str, version: int, status: VersionStatus) -> None:
        with self._lock:
            entry = self._models.get(name)
            if entry is not None:
                entry.status[version] = status

    def close(self) -> None:
        with self._poll_lock, self._lock:
            for name, entry in list(self._models.items()):
                self._unload_all(name, entry)

    # --- lookups ------------------------------------------------------------------------

    def _entry(self, name: str) -> _Model:
        entry = self._models.get(name)
        if entry is None:
            raise not_found(f"Servable not found for request: Latest({name})")
        return entry

    def _version_for(self, entry: _Model, name: str, version: int | None, label: str | None) -> int | None:
        if label is not None:
            if label not in entry.labels:
                raise not_found(f"Unrecognized servable version label: {label}")
            return entry.labels[label]
        return version

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a request addresses: a version, a label, or else the latest available one."""
        with self._lock:
            entry = self._entry(name)
            wanted = self._version_for(entry, name, version, label)
            if wanted is None:
                if not entry.versions:
                    raise not_found(f"Servable not found for request: Latest({name})")
                return entry.versions[max(entry.versions)]
            servable = entry.versions.get(wanted)
            if servable is None:
                raise not_found(f"Servable not found for request: Specific({name}, {wanted})")
            return servable

    def status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> dict[int, VersionStatus]:
        with self._lock:
            entry = self._entry(name)
            wanted = self._version_for(entry, name, version, label)
            if wanted is None:
                if not entry.status:
                    raise not_found(f"Could not find any versions of model {name}")
                return dict(sorted(entry.status.items()))
            if wanted not in entry.status:
                raise not_found(f"Could not find version {wanted} of model {name}")
            return {wanted: entry.status[wanted]}

    def loaded_versions(self) -> dict[str, list[int]]:
        with self._lock:
            return {name: sorted(m.versions) for name, m in self._models.items()}

    def labels(self, name: str) -> dict[str, int]:
        with self._lock:
            return dict(self._entry(name).labels)
