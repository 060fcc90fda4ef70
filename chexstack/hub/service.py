"""The hub's operations, shared by the CLI (`chexstack jobs|models|ab`) and the HTTP API.

Every failure is a ServiceError with a one-line message and the HTTP status the API answers with.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

import chexstack
from chexstack.ab import PLATFORM_LABELS
from chexstack.dlq import Letter, ReplayPlan
from chexstack.hub import modelsconfig
from chexstack.hub.handoff import AVAILABLE, HandoffError, apply_label
from chexstack.hub.handoff import handoff as hand_to_serving
from chexstack.hub.store import FINISHED, RERUN_JOB_ENV, Hub, HubError, Job, JobNotFound
from chexstack.settings import DEFAULT_KAFKA, DEFAULT_SERVING, default_model_base

log = logging.getLogger(__name__)

LABELS: Final = PLATFORM_LABELS
DEFAULT_PROJECT: Final = "default"
# How long `ab set` waits for serving's answer on each label it asks about.
LABEL_CHECK_TIMEOUT_S: Final = 10.0


class ServiceError(RuntimeError):
    status = 400


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    """The request is well-formed but the platform's state does not allow it (e.g. version not loaded)."""

    status = 409


class Unavailable(ServiceError):
    status = 503


@dataclass(frozen=True)
class Settings:
    """Where everything the hub operates on lives; the same flags/env for the CLI and `hub serve`."""

    hub_path: Path
    model_config_file: Path | None = None
    model_base: Path | None = None
    serving: str = DEFAULT_SERVING
    kafka: str = DEFAULT_KAFKA
    topic_prefix: str = ""


def _config_file(settings: Settings) -> Path:
    if settings.model_config_file is None:
        raise ServiceError(
            "no models.config given: pass --model-config-file or set CHEXSTACK_MODEL_CONFIG_FILE"
        )
    return settings.model_config_file


def _check_label(label: str) -> None:
    if label not in LABELS:
        raise ServiceError(f"bad label {label!r}: use one of {', '.join(LABELS)}")


def _versions_text(versions: list[int]) -> str:
    return ", ".join(str(v) for v in versions) or "none"


def _code_version() -> str:
    return chexstack.__version__


class Service:
    def __init__(self, hub: Hub, settings: Settings) -> None:
        self.hub = hub
        self.settings = settings

    # --- jobs ----------------------------------------------------------------------------

    def projects(self) -> list[dict[str, Any]]:
        return self.hub.projects()

    def list_jobs(self, kind: str | None = None, limit: int | None = 50) -> list[Job]:
        try:
            return self.hub.list_jobs(kind=kind, limit=limit)
        except HubError as exc:
            raise ServiceError(str(exc)) from exc

    def show_job(self, job_id: str) -> Job:
        try:
            return self.hub.get_job(job_id)
        except JobNotFound as exc:
            raise NotFound(str(exc)) from exc

    def rerun_job(self, job_id: str, *, wait: bool, quiet: bool = False) -> tuple[Job, int | None]:
        """Rerun a train job with its recorded config: a new job with rerun_of = the old one.

        wait=True runs `chexstack train` in the foreground (its output to this process's, or to the
        job's log file when quiet) and returns its exit code; wait=False starts it in the background
        (output to the log file) and returns at once. A child that exits without finishing its job
        leaves it failed, with the exit code as the error.
        """
        old = self.show_job(job_id)
        if old.kind != "train":
            raise ServiceError(f"job {old.id} is a {old.kind} job; only train jobs can be rerun")
        config = old.spec.get("config")
        if not isinstance(config, dict) or not config:
            raise ServiceError(f"job {old.id} has no train config in its spec snapshot; it cannot be rerun")
        # A fresh job directory: the old one holds finished state, and resuming it would not train again.
        config = {**config, "job_dir": None}
        # Jobs recorded before the config carried it keep their data set's checksum in spec["dataset"]:
        # the rerun still refuses data that changed since.
        checksum = (old.spec.get("dataset") or {}).get("checksum")
        if checksum and "dataset_checksum" not in config:
            config["dataset_checksum"] = checksum
        # Jobs recorded before paths were stored absolute meant the cwd of their rerun; the rerun's YAML
        # file lives under the hub, where a relative path would now point.
        for key in ("data_dir", "job_dir", "logs_dir", "model_base", "model_base_path", "model_config_file"):
            if isinstance(config.get(key), str) and not Path(config[key]).is_absolute():
                config[key] = str(Path(config[key]).absolute())
        if (
            config.get("weights") not in (None, "random", "imagenet")
            and not Path(config["weights"]).is_absolute()
        ):
            config["weights"] = str(Path(config["weights"]).absolute())
        new_id = self.hub.create_job(
            kind="train",
            project=old.project,
            variation=old.variation,
            model_name=old.model_name,
            spec=old.spec,
            rerun_of=old.id,
        )
        run_dir = self.hub.path.parent / "reruns"
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path = run_dir / f"{new_id}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        log_path = run_dir / f"{new_id}.log"
        cmd = [sys.executable, "-m", "chexstack", "train", "--config", str(config_path),
               "--hub", str(self.hub.path)]  # fmt: skip
        env = {**os.environ, RERUN_JOB_ENV: new_id}
        if wait:
            if quiet:
                with log_path.open("wb") as out:
                    rc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
            else:
                rc = subprocess.run(cmd, env=env).returncode
            self._fail_if_unfinished(new_id, rc, log_path if quiet else None)
            return self.hub.get_job(new_id), rc
        out = log_path.open("wb")
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

        def reap() -> None:
            self._fail_if_unfinished(new_id, proc.wait(), log_path)

        threading.Thread(target=reap, name=f"rerun-{new_id}", daemon=True).start()
        return self.hub.get_job(new_id), None

    def _fail_if_unfinished(self, job_id: str, rc: int, log_path: Path | None) -> None:
        job = self.hub.get_job(job_id)
        if job.status in FINISHED:
            return
        where = f"; output in {log_path}" if log_path else ""
        with contextlib.suppress(HubError):  # it finished in the meantime
            self.hub.finish_job(
                job_id, "failed", {"exit_code": rc}, error=f"`chexstack train` exited with code {rc}{where}"
            )

    # --- models --------------------------------------------------------------------------

    def list_models(self, name: str | None = None) -> list[dict[str, Any]]:
        """Per model: policy, labels, and per version whether it is on disk, its serving state, its labels
        and the train job that produced it."""
        config = None
        if self.settings.model_config_file is not None:
            try:
                config = modelsconfig.read(self.settings.model_config_file)
            except modelsconfig.ModelsConfigError as exc:
                raise ServiceError(str(exc)) from exc
        names = [name] if name else (modelsconfig.model_names(config) if config is not None else [])
        if not names:
            raise ServiceError(
                "name a model, or give --model-config-file so the hub knows which models exist"
            )
        if name and config is not None and name not in modelsconfig.model_names(config):
            raise NotFound(f"{self.settings.model_config_file} has no model {name!r}")
        return [self._model_info(n, config, only=len(names) == 1) for n in names]

    def _disk_base(self, name: str, config: Any, only: bool) -> Path:
        if self.settings.model_base is not None and only:
            return self.settings.model_base
        if config is not None:
            base = Path(modelsconfig.model(config, name).base_path)
            if base.is_dir():  # serving may run in a container where the path differs
                return base
        return default_model_base(name)

    def _model_info(self, name: str, config: Any, only: bool) -> dict[str, Any]:
        from chexstack.serve.registry import versions_on_disk
        from chexstack.serving_client import ServingError

        base = self._disk_base(name, config, only)
        on_disk = versions_on_disk(base)
        labels = modelsconfig.labels(config, name) if config is not None else {}
        serving_error = None
        try:
            states = self._states(name)
        except ServingError as exc:
            states, serving_error = {}, str(exc)
        versions = []
        for v in sorted(set(on_disk) | set(states) | set(labels.values())):
            job = self.hub.producing_job(name, v)
            versions.append(
                {
                    "version": v,
                    "on_disk": v in on_disk,
                    "state": states.get(v),
                    "labels": sorted(k for k, lv in labels.items() if lv == v),
                    "in_policy": modelsconfig.policy_selects(config, name, v) if config is not None else None,
                    "train_job": job.id if job else None,
                    "variation": job.variation if job else None,
                }
            )
        return {
            "name": name,
            "model_base": str(base),
            "policy": modelsconfig.policy_text(config, name) if config is not None else None,
            "labels": labels,
            "versions": versions,
            "serving": self.settings.serving,
            "serving_error": serving_error,
        }

    def _on_disk(self, name: str, config_file: Path) -> tuple[Path, list[int]]:
        """The model's base path as this process sees it, and the numbered versions in it."""
        from chexstack.serve.registry import versions_on_disk

        try:
            config = modelsconfig.read(config_file)
            modelsconfig.model(config, name, config_file)
        except modelsconfig.ModelsConfigError as exc:
            raise NotFound(str(exc)) from exc
        base = self._disk_base(name, config, only=True)
        return base, versions_on_disk(base)

    def _states(self, name: str) -> dict[int, str]:
        from chexstack.hub.handoff import version_states

        return version_states(self.settings.serving, name, timeout_s=5)

    def _where(self, name: str, version: int | None) -> tuple[str, str]:
        """Project and variation for a serve job: those of the train job behind the version, if any."""
        job = self.hub.producing_job(name, version) if version else None
        if job is None:
            jobs = self.hub.list_jobs(kind="train", model_name=name, limit=1)
            job = jobs[0] if jobs else None
        return (job.project, job.variation) if job else (DEFAULT_PROJECT, name)

    def _serve_spec(self, action: str, name: str, **fields: Any) -> dict[str, Any]:
        return {
            "action": action,
            "model_name": name,
            **fields,
            "code_version": _code_version(),
            "image": os.environ.get("CHEXSTACK_IMAGE"),
            "serving": self.settings.serving,
            "model_config_file": str(self.settings.model_config_file)
            if self.settings.model_config_file
            else None,
            "argv": list(sys.argv),
        }

    def promote(self, name: str, version: int, label: str, *, wait_s: float) -> Job:
        """Point `label` at `version`; refused unless serving reports the version AVAILABLE."""
        return self._move_label("promote", name, version, label, wait_s)

    def rollback(self, name: str, label: str = "stable", *, wait_s: float) -> Job:
        """Return `label` to the version it had before the current one (per the label history)."""
        _check_label(label)
        config_file = _config_file(self.settings)
        current = self._label_now(config_file, name, label)
        target = self._rollback_target(name, label, current)

        def unchanged(now: int | None) -> None:
            # Under the models.config lock: a rollback or promotion that got there first moved the label
            # (and recorded it), so this one would undo the wrong change.
            if now != current or self._rollback_target(name, label, now) != target:
                raise Conflict(
                    f"{label!r} of {name!r} moved from {current} to {now} while rolling back "
                    "(another rollback or promotion): nothing changed, try again"
                )

        return self._move_label("rollback", name, target, label, wait_s, check=unchanged)

    def _label_now(self, config_file: Path, name: str, label: str) -> int | None:
        try:
            return modelsconfig.labels(modelsconfig.read(config_file), name).get(label)
        except modelsconfig.ModelsConfigError as exc:
            raise NotFound(str(exc)) from exc

    def _rollback_target(self, name: str, label: str, current: int | None) -> int:
        target = self.hub.previous_label_version(name, label, current)
        if target is None:
            raise Conflict(
                f"no previous {label!r} version of {name!r} to roll back to "
                f"(now {current if current is not None else 'unset'}; the hub knows only its own promotions)"
            )
        return target

    def _move_label(
        self,
        action: str,
        name: str,
        version: int,
        label: str,
        wait_s: float,
        check: Callable[[int | None], None] | None = None,
    ) -> Job:
        from chexstack.serving_client import ServingError

        _check_label(label)
        if version < 1:
            raise ServiceError(f"bad version {version}: versions are positive integers")
        config_file = _config_file(self.settings)
        current = self._label_now(config_file, name, label)
        try:
            state = self._states(name).get(version)
        except ServingError as exc:
            raise Unavailable(f"cannot ask serving at {self.settings.serving} about {name!r}: {exc}") from exc
        if state != AVAILABLE:
            # Two different fixes: export (or copy) the version, or hand it off so serving loads it.
            base, on_disk = self._on_disk(name, config_file)
            if version not in on_disk:
                raise NotFound(
                    f"refusing to {action} {name!r} version {version} to {label!r}: no version {version} on "
                    f"disk in {base} (versions there: {_versions_text(on_disk)})"
                )
            raise Conflict(
                f"refusing to {action} {name!r} version {version} to {label!r}: version {version} is on "
                f"disk in {base} but serving at {self.settings.serving} has not loaded it "
                f"(state: {state or 'not loaded'}); hand it to serving first: "
                f"chexstack models handoff {name} {version}"
            )
        project, variation = self._where(name, version)
        spec = self._serve_spec(action, name, label=label, version=version, previous_version=current)
        job_id = self.hub.start_job("serve", project, variation, name, spec)

        def record(previous: int | None) -> None:
            if previous != version:
                self.hub.record_label(name, label, version, previous, action=action, job_id=job_id)

        try:
            previous, applied = apply_label(
                config_file,
                name,
                label,
                version,
                self.settings.serving,
                time.monotonic() + wait_s,
                check=check,
                on_write=record,
            )
        except Exception as exc:
            self.hub.finish_job(job_id, "failed", {}, model_version=version, error=str(exc))
            if isinstance(exc, modelsconfig.ModelsConfigError):
                raise ServiceError(str(exc)) from exc
            raise
        results = {"label": label, "version": version, "previous_version": previous, "applied": applied}
        self.hub.finish_job(job_id, "succeeded", results, model_version=version)
        if not applied:
            log.warning(
                "%s now labels %s version %d %r; serving has not applied it yet (it polls the file)",
                config_file, name, version, label,
            )  # fmt: skip
        return self.hub.get_job(job_id)

    def handoff(self, name: str, version: int, label: str | None, *, wait_s: float) -> Job:
        """`train`'s hand-off for a version already on disk: into the version policy, wait until serving
        has it AVAILABLE, then point `label` at it (if given); recorded as a serve job."""
        if label is not None:
            _check_label(label)
        if version < 1:
            raise ServiceError(f"bad version {version}: versions are positive integers")
        config_file = _config_file(self.settings)
        base, on_disk = self._on_disk(name, config_file)
        if version not in on_disk:
            raise NotFound(
                f"cannot hand off {name!r} version {version}: no version {version} on disk in {base} "
                f"(versions there: {_versions_text(on_disk)})"
            )
        current = self._label_now(config_file, name, label) if label is not None else None
        project, variation = self._where(name, version)
        spec = self._serve_spec("handoff", name, label=label, version=version, previous_version=current)
        job_id = self.hub.start_job("serve", project, variation, name, spec)
        try:
            previous = hand_to_serving(
                config_file, name, version, label, self.settings.serving, wait_s, hub=self.hub, job_id=job_id
            )
        except (HandoffError, modelsconfig.ModelsConfigError) as exc:
            self.hub.finish_job(job_id, "failed", {}, model_version=version, error=str(exc))
            raise Unavailable(f"{exc} (job {job_id})") from exc
        results = {"label": label, "version": version, "previous_version": previous, "applied": True}
        self.hub.finish_job(job_id, "succeeded", results, model_version=version)
        return self.hub.get_job(job_id)

    # --- A/B -----------------------------------------------------------------------------

    def get_ab(self, name: str) -> dict[str, int]:
        from chexstack.ab import read_weights
        from chexstack.topics import Topics

        try:
            cfg = read_weights(self.settings.kafka, Topics(self.settings.topic_prefix).control, name)
        except Exception as exc:  # broker unreachable, topic missing
            raise Unavailable(f"cannot read A/B weights from {self.settings.kafka}: {exc}") from exc
        return dict(cfg.weights) if cfg else {}

    def set_ab(self, name: str, weights: dict[str, int]) -> Job:
        """Publish weights on the control topic (routers follow within seconds) and record a serve job."""
        from chexstack.ab import parse_weights

        try:
            parsed = parse_weights([f"{k}={v}" for k, v in weights.items()])
        except ValueError as exc:
            raise ServiceError(str(exc)) from exc
        check_weights(
            name, parsed, serving=self.settings.serving, model_config_file=self.settings.model_config_file
        )
        project, variation = self._where(name, None)
        job_id = self.hub.start_job(
            "serve", project, variation, name, self._serve_spec("ab", name, weights=parsed)
        )
        try:
            publish(self.settings, name, parsed)
        except Exception as exc:
            self.hub.finish_job(job_id, "failed", {}, error=str(exc))
            raise Unavailable(f"cannot publish A/B weights to {self.settings.kafka}: {exc}") from exc
        self.hub.finish_job(job_id, "succeeded", {"weights": parsed})
        return self.hub.get_job(job_id)

    def replay_dead_letters(self, name: str, plan: ReplayPlan, selection: dict[str, Any]) -> Job:
        """Publish the plan's originals again (chexstack.dlq.replay) and record a serve job with what was
        replayed and skipped, so the hub says which images were given a second try and why."""
        from chexstack.dlq import replay

        def described(lt: Letter) -> dict[str, Any]:
            return {"image_id": lt.letter.key, "source_topic": lt.letter.source_topic, "dlq": lt.where,
                    "reason": lt.letter.reason[:500]}  # fmt: skip

        project, variation = self._where(name, None)
        spec = self._serve_spec(
            "dlq-replay",
            name,
            selection=selection,
            kafka=self.settings.kafka,
            topic_prefix=self.settings.topic_prefix,
            letters=[described(lt) for lt in plan.replay],
        )
        job_id = self.hub.start_job("serve", project, variation, name, spec)
        results = {
            "replayed": [lt.letter.key for lt in plan.replay],
            "predicted_since": [lt.letter.key for lt in plan.done],
            "skipped": [{"image_id": lt.letter.key, "why": why} for lt, why in plan.skipped],
        }
        try:
            replay(self.settings.kafka, plan.replay)
        except Exception as exc:
            self.hub.finish_job(job_id, "failed", results, error=str(exc))
            raise Unavailable(f"cannot replay to {self.settings.kafka}: {exc}") from exc
        self.hub.finish_job(job_id, "succeeded", results)
        return self.hub.get_job(job_id)


def check_weights(
    name: str, weights: dict[str, int], *, serving: str, model_config_file: Path | None
) -> None:
    """What A/B weights must pass before they are published, by `ab set` and the hub alike: each variant
    that gets traffic is one of the model's labels in `model_config_file` (when given) and one serving
    resolves."""
    if model_config_file is not None:
        check_variants(model_config_file, name, weights)
    check_serving_labels(serving, name, weights)


def check_serving_labels(serving: str, name: str, weights: dict[str, int]) -> None:
    """Serving must resolve every variant that gets traffic (routers refuse weights it does not):
    Conflict naming the labels it has, Unavailable when it cannot be asked."""
    if not any(w > 0 for w in weights.values()):
        return
    from chexstack.ab import UnknownLabel, check_labels
    from chexstack.serving_client import ServingClient, ServingError

    try:
        with ServingClient(serving, timeout_s=LABEL_CHECK_TIMEOUT_S) as client:
            check_labels(client, name, weights)
    except UnknownLabel as exc:
        raise Conflict(str(exc)) from exc
    except ServingError as exc:
        raise Unavailable(
            f"cannot ask serving at {serving} for the labels of {name!r} ({exc}); is it running, and "
            "--serving/CHEXSTACK_SERVING right? The weights were not changed"
        ) from exc


def check_variants(model_config_file: Path, name: str, weights: dict[str, int]) -> None:
    """Every variant that gets traffic must be one of the model's version labels, or routers would fail."""
    try:
        labels = modelsconfig.labels(modelsconfig.read(model_config_file), name)
    except modelsconfig.ModelsConfigError as exc:
        raise ServiceError(str(exc)) from exc
    unknown = sorted(k for k, w in weights.items() if w > 0 and k not in labels)
    if unknown:
        raise Conflict(
            f"{name!r} has no version label {', '.join(unknown)} in {model_config_file} "
            f"(labels: {', '.join(f'{k}={v}' for k, v in labels.items()) or 'none'}); routers would fail"
        )


def publish(settings: Settings, name: str, weights: dict[str, int]) -> None:
    from chexstack.ab import publish_weights
    from chexstack.topics import Topics

    publish_weights(settings.kafka, Topics(settings.topic_prefix).control, name, weights)
