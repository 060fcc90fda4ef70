"""Hand a new model version to serving: version policy, wait until loaded, then the label.

TF Serving refuses a models.config whose label names a version that is not loaded, so the
version goes into the `specific` policy first, and the label follows only once serving reports
the version AVAILABLE. After each rewrite serving is also asked to reload the config over gRPC
(HandleReloadConfigRequest), so the change does not wait for its next poll of the file; where
that call is not possible the file poll still picks the change up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from chexstack.hub import modelsconfig

if TYPE_CHECKING:
    from chexstack.hub.store import Hub

log = logging.getLogger(__name__)

AVAILABLE: Final = "AVAILABLE"
POLL_S: Final = 0.5
RPC_TIMEOUT_S: Final = 10.0  # one status or metadata call while polling


class HandoffError(RuntimeError):
    """The version could not be handed to serving; the message says where it stopped."""


def _channel(serving: str) -> Any:
    import grpc

    return grpc.insecure_channel(serving)


def version_states(serving: str, model_name: str, *, timeout_s: float) -> dict[int, str]:
    """Version -> state name as serving reports it (raises ServingError when it cannot answer)."""
    from chexstack.serving_client import ServingClient

    with ServingClient(serving, timeout_s=timeout_s) as client:
        return client.model_status(model_name)


def label_version(serving: str, model_name: str, label: str, *, timeout_s: float) -> int | None:
    """The version serving resolves `label` to right now; None if it does not know the label."""
    from chexstack.serving_client import ServingClient

    with ServingClient(serving, timeout_s=timeout_s) as client:
        return client.label_version(model_name, label)


def reload_config(serving: str, config: Any, timeout_s: float) -> str | None:
    """Ask serving to apply `config` now; returns why not (None: applied). Never raises."""
    import grpc
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(config)
    channel = _channel(serving)
    try:
        response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            request, timeout=max(timeout_s, 1.0)
        )
    except grpc.RpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    finally:
        channel.close()
    if response.status.error_code:
        return response.status.error_message or f"error code {response.status.error_code}"
    return None


class _Reload:
    """`then` of modelsconfig.edit: ask serving to reload right after the write, under the lock."""

    def __init__(self, serving: str, deadline: float) -> None:
        self.serving, self.deadline = serving, deadline
        self.why: str | None = "not attempted"

    def __call__(self, config: Any) -> None:
        self.why = reload_config(self.serving, config, self.deadline - time.monotonic())


def wait_available(serving: str, model_name: str, version: int, deadline: float) -> None:
    from chexstack.serving_client import ServingError

    state = "not reported"
    while True:
        try:
            state = version_states(serving, model_name, timeout_s=RPC_TIMEOUT_S).get(version, "not reported")
        except ServingError as exc:
            state = f"serving did not answer ({exc})"
        if state == AVAILABLE:
            return
        if time.monotonic() >= deadline:
            raise HandoffError(
                f"serving at {serving} has not loaded version {version} of {model_name!r} "
                f"(state: {state}); see the serving log"
            )
        time.sleep(POLL_S)


def wait_label(serving: str, model_name: str, label: str, version: int, deadline: float) -> bool:
    """Wait until serving resolves `label` to `version`; False if it has not by the deadline."""
    while True:
        try:
            if label_version(serving, model_name, label, timeout_s=RPC_TIMEOUT_S) == version:
                return True
        except Exception as exc:  # an unreachable server is reported by the caller via False
            log.debug("label %s of %s: %s", label, model_name, exc)
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def apply_label(
    config_file: Path,
    model_name: str,
    label: str,
    version: int,
    serving: str,
    deadline: float,
    *,
    check: Callable[[int | None], None] | None = None,
    on_write: Callable[[int | None], None] | None = None,
) -> tuple[int | None, bool]:
    """Rewrite the label, ask serving to reload, wait for it; (previous version, applied by serving).

    Under the models.config lock: `check(current)` sees the label's version as the file has it right
    before the change and may raise to leave everything as it is; `on_write(previous)` runs right after
    the write (the hub records the label history there, so the next move of the label reads it).
    """
    previous: list[int | None] = []

    def then(config: Any) -> None:
        if on_write is not None:
            on_write(previous[0])
        reload(config)

    reload = _Reload(serving, deadline)
    with modelsconfig.edit(config_file, then=then) as config:
        if check is not None:
            check(modelsconfig.labels(config, model_name).get(label))
        previous.append(modelsconfig.set_label(config, model_name, label, version))
    why = reload.why
    if why is not None:
        log.info("serving did not reload models.config over gRPC (%s); waiting for its file poll", why)
    return previous[0], wait_label(serving, model_name, label, version, deadline)


def handoff(
    config_file: Path,
    model_name: str,
    version: int,
    label: str | None,
    serving: str,
    timeout_s: float = 180,
    *,
    hub: Hub | None = None,
    job_id: str | None = None,
) -> int | None:
    """Add `version` to the model's policy, wait until serving has it AVAILABLE, then label it.

    Returns the version the label had before (None: unset, or no label). With `hub`, the label change
    is recorded in its label history (so rollback knows it).
    """
    deadline = time.monotonic() + timeout_s
    try:
        reload = _Reload(serving, deadline)
        with modelsconfig.edit(config_file, then=reload) as config:
            modelsconfig.add_specific_version(config, model_name, version)
    except modelsconfig.ModelsConfigError as exc:
        raise HandoffError(str(exc)) from exc
    why = reload.why
    if why is not None:
        log.info("serving did not reload models.config over gRPC (%s); waiting for its file poll", why)
    try:
        wait_available(serving, model_name, version, deadline)
    except HandoffError as exc:  # a `latest` policy, for one, never loads an older version
        try:
            policy = modelsconfig.policy_text(modelsconfig.read(config_file), model_name)
        except modelsconfig.ModelsConfigError as unreadable:
            policy = f"unknown: {unreadable}"
        raise HandoffError(f"{exc}; its version policy: {policy}") from exc
    log.info("serving has version %d of %s AVAILABLE", version, model_name)
    if label is None:
        return None

    def record(previous: int | None) -> None:  # under the lock, as the hub's own label moves
        if hub is not None and previous != version:
            hub.record_label(model_name, label, version, previous, action="handoff", job_id=job_id)

    try:
        previous, applied = apply_label(
            config_file, model_name, label, version, serving, deadline, on_write=record
        )
    except modelsconfig.ModelsConfigError as exc:
        raise HandoffError(str(exc)) from exc
    if not applied:
        raise HandoffError(
            f"{config_file} now labels version {version} of {model_name!r} {label!r}, but serving at "
            f"{serving} has not applied it within {timeout_s:g}s"
        )
    log.info("label %s of %s -> version %d", label, model_name, version)
    return previous
