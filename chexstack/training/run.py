"""One training job: data -> CheXNet -> checkpoints, TensorBoard, report -> SavedModel version -> serving.

Resume: the job directory's state.json names the last finished epoch's weights and optimizer state;
a run with the same job_dir continues at the next epoch with the same step count, learning rate and
plateau counters, and its shuffles are those the uninterrupted run would have drawn.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from chexstack import __version__
from chexstack.labels import LABELS
from chexstack.settings import default_home, default_logs, default_model_base
from chexstack.training.config import ConfigError, TrainConfig

log = logging.getLogger(__name__)

OnStarted = Callable[[dict[str, Any]], None]
PREFLIGHT_SERVING_TIMEOUT_S = 10.0


class TrainError(RuntimeError):
    """The job cannot run as configured (bad data set, image size, resume state), or its hand-off failed."""

    def __init__(self, message: str, exported_version: int | None = None) -> None:
        super().__init__(message)
        # Set when the version was exported before the failure: the hub still links it to this job.
        self.exported_version = exported_version


# ------------------------------------------------------------------------------------ environment


def list_devices() -> list[str]:
    import keras

    try:
        return [str(d) for d in keras.distribution.list_devices()]
    except Exception:  # a backend without the API: CPU is always there
        return ["cpu:0"]


def has_gpu(devices: list[str]) -> bool:
    return any(d.lower().startswith(("gpu", "cuda")) or "gpu" in d.lower() for d in devices)


def resolve(switch: str, gpu: bool) -> bool:
    return switch == "on" or (switch == "auto" and gpu)


def _package_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def code_version() -> str:
    """chexstack's version plus the git commit when running from a checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}" if sha else __version__


def environment(mixed_precision: bool, xla: bool) -> dict[str, Any]:
    import keras

    return {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "tensorflow": _package_version("tensorflow", "tensorflow-cpu"),
        "devices": list_devices(),
        "mixed_precision": mixed_precision,
        "xla": xla,
    }


def effective_config(config: TrainConfig, dataset_checksum: str) -> TrainConfig:
    """The config as this run uses it: the defaults that depend on the environment ($CHEXSTACK_HOME)
    written in, and the data set's checksum, so a rerun from anywhere writes to the same places and
    refuses data that has changed since."""
    update: dict[str, Any] = {"logs_dir": config.logs_dir or Path(os.path.abspath(default_logs()))}
    if config.model_base_path is None:
        update["model_base_path"] = Path(os.path.abspath(default_model_base(config.model_name)))
    if config.dataset_checksum is None:
        update["dataset_checksum"] = dataset_checksum
    return config.model_copy(update=update)


def spec_snapshot(
    config: TrainConfig, started: dict[str, Any], argv: list[str] | None = None
) -> dict[str, Any]:
    """The hub's spec for a train job (see the hub contract): enough to rerun it exactly, from anywhere.

    spec["config"] is the effective config (`effective_config`) when `started` has it."""
    return {
        "image": os.environ.get("CHEXSTACK_IMAGE"),
        "code_version": code_version(),
        "config": started.get("config") or config.model_dump(mode="json"),
        "dataset": started["dataset"],
        "environment": started["environment"],
        "argv": list(sys.argv if argv is None else argv),
    }


def preflight(config: TrainConfig) -> None:
    """What would fail the hand-off after training, checked before it: the models.config exists,
    parses, names the model and its directory is writable, and serving answers at all (every hand-off
    waits for serving to load the version). Raises ConfigError naming the flag."""
    if config.model_config_file is None:
        return
    from chexstack.hub import modelsconfig
    from chexstack.hub.handoff import version_states
    from chexstack.serving_client import ServingError

    path = config.model_config_file
    try:
        modelsconfig.model(modelsconfig.read(path), config.model_name, path)
    except modelsconfig.ModelsConfigError as exc:
        raise ConfigError(f"--model-config-file: {exc}") from exc
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(
            f"--model-config-file: the hand-off rewrites {path}, but {path.parent} is not writable"
        )
    try:
        version_states(config.serving, config.model_name, timeout_s=PREFLIGHT_SERVING_TIMEOUT_S)
    except ServingError as exc:
        # Any answer (even "no version of this model yet") shows serving is there; only silence fails.
        if exc.code is not None and exc.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            raise ConfigError(
                f"--serving {config.serving}: serving does not answer ({exc}); the hand-off after training "
                "waits for it to load the version: start serving or fix --serving"
            ) from exc


# --------------------------------------------------------------------------------------- the job


def _open_dataset(config: TrainConfig) -> Any:
    from chexstack.shards import ShardedDataset

    try:
        dataset = ShardedDataset.open(config.data_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise TrainError(f"cannot open shards in {config.data_dir}: {exc}") from exc
    if config.image_size is not None and config.image_size != dataset.image_size:
        raise TrainError(
            f"image_size {config.image_size} differs from the shards' {dataset.image_size} in "
            f"{config.data_dir}; prepare shards at {config.image_size} or leave image_size unset"
        )
    return dataset


def _split(dataset: Any, name: str) -> Any | None:
    """The split's reader, or None when the data set has no such split or it is empty.

    A damaged shard is not "no split": it fails the job with the ShardError, which names the file."""
    from chexstack.shards import ShardError, UnknownSplitError

    try:
        reader = dataset.split(name)
    except UnknownSplitError:
        return None
    except ShardError as exc:
        raise TrainError(f"the {name} split cannot be read: {exc}") from exc
    return reader if len(reader) else None


def _job_dir(config: TrainConfig) -> Path:
    if config.job_dir is not None:
        return Path(config.job_dir)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return default_home() / "jobs" / f"{config.model_name}-{stamp}-{os.getpid()}"


def run_training(
    config: TrainConfig,
    on_started: OnStarted | None = None,
    hub_job: Callable[[], tuple[Any, str | None]] | None = None,
) -> dict[str, Any]:
    """Train, evaluate, export and hand off as `config` says; returns the results (see the end).

    `hub_job` gives the (Hub, job id) recording this run, so the hand-off's label change enters the
    hub's label history (what `chexstack models rollback` replays).
    """
    import keras

    from chexstack import model as chexmodel
    from chexstack.training import report
    from chexstack.training.callbacks import EpochEvaluation, EventWriter, JobState, bce_loss, class_weights
    from chexstack.training.data import ShardBatches

    dataset = _open_dataset(config)
    expected_checksum = config.dataset_checksum
    config = effective_config(config, dataset.checksum)
    size = int(dataset.image_size)
    train = _split(dataset, "train")
    val = _split(dataset, "val")
    if train is None or val is None:
        raise TrainError(f"{config.data_dir}: training needs non-empty train and val splits")
    devices = list_devices()
    gpu = has_gpu(devices)
    mixed, xla = resolve(config.mixed_precision, gpu), resolve(config.xla, gpu)
    job_dir = _job_dir(config)
    job_dir.mkdir(parents=True, exist_ok=True)
    run_name = job_dir.name
    run_dir = (config.logs_dir or default_logs()) / run_name
    counts = {name: len(r) for name in ("train", "val", "test") if (r := _split(dataset, name)) is not None}
    started = {
        "dataset": {
            "path": str(dataset.root),
            "checksum": dataset.checksum,
            "counts": counts,
            "image_size": size,
        },
        "environment": environment(mixed, xla),
        "config": config.model_dump(mode="json"),
        "job_dir": str(job_dir),
        "run_dir": str(run_dir),
    }
    if on_started is not None:
        on_started(started)
    # Checked once the hub has the job, so its record says why it failed. Refused rather than warned:
    # a rerun on other data is a different experiment, and a warning scrolls away in a long log.
    if expected_checksum is not None and expected_checksum != dataset.checksum:
        raise TrainError(
            f"the data set in {config.data_dir} has changed: its dataset.json checksum is "
            f"{dataset.checksum[:12]}..., the config's dataset_checksum {expected_checksum[:12]}...; prepare "
            "the recorded data again, or drop dataset_checksum from the config to train on the new data"
        )
    log.info(
        "training %s on %s (%s); job %s; TensorBoard run %s",
        config.model_name,
        dataset.root,
        counts,
        job_dir,
        run_dir,
    )

    keras.utils.set_random_seed(config.seed)
    try:
        resuming = JobState.load(job_dir) is not None
    except ValueError as exc:
        raise TrainError(f"cannot resume from {job_dir}: {exc}") from exc
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_float16" if mixed else "float32")
    try:
        # A resumed job's weights come from its checkpoint: do not download ImageNet weights again.
        chexnet = chexmodel.build_chexnet(None if resuming else config.weights, image_size=size)
        if config.bn_momentum is not None:
            for layer in chexnet.get_layer(chexmodel.BACKBONE).layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.momentum = config.bn_momentum
        pixels = keras.Input((size, size, 1), dtype="uint8", name="pixels")
        trainer = keras.Model(pixels, chexnet(chexmodel.normalise(pixels)), name="chexnet_trainer")
    finally:
        keras.mixed_precision.set_dtype_policy(policy)

    weights = class_weights(train.label_counts, len(train)) if config.class_weighted else None
    trainer.compile(
        optimizer=keras.optimizers.Adam(config.lr, beta_1=config.beta_1, beta_2=config.beta_2),
        loss=bce_loss(*weights) if weights else bce_loss(),
        jit_compile=xla,
    )
    writer = EventWriter(run_dir)
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", factor=config.plateau_factor, patience=config.plateau_patience, verbose=0
    )
    state = JobState(job_dir, chexnet, plateau)
    try:
        initial_epoch = state.restore(trainer)
    except (OSError, ValueError) as exc:
        raise TrainError(f"cannot resume from {job_dir}: {exc}") from exc
    if initial_epoch:
        log.info(
            "resuming %s after epoch %d (optimizer step %d)",
            job_dir,
            initial_epoch,
            state.state["optimizer_iterations"],
        )

    val_labels = val.labels()
    sample_images, sample_labels = val.take(np.arange(min(config.sample_images, len(val_labels))))
    samples = (sample_images[..., None], sample_labels)
    train_data = ShardBatches(
        train, config.batch_size, training=True, seed=config.seed, epoch=initial_epoch,
        max_steps=config.max_steps_per_epoch, workers=config.workers,
    )  # fmt: skip
    val_data = ShardBatches(val, config.batch_size, training=False, workers=config.workers)
    evaluation = EpochEvaluation(chexnet, val_data, val_labels, writer, samples=samples, loss_weights=weights)
    hparams = {
        "lr": config.lr, "batch_size": config.batch_size, "beta_1": config.beta_1, "beta_2": config.beta_2,
        "class_weighted": config.class_weighted, "weights": config.weights, "image_size": size,
        "seed": config.seed, "epochs": config.epochs, "plateau_patience": config.plateau_patience,
        "plateau_factor": config.plateau_factor, "mixed_precision": mixed, "xla": xla,
        "dataset": dataset.checksum[:12],
    }  # fmt: skip
    writer.hparams(hparams, ["auroc/mean", "loss/val", "loss/train"], trial_id=run_name)
    try:
        if initial_epoch < config.epochs:
            trainer.fit(
                train_data, epochs=config.epochs, initial_epoch=initial_epoch, shuffle=False, verbose=0,
                callbacks=[evaluation, plateau, state],  # this order: the latter two read val_loss
            )  # fmt: skip
    finally:
        writer.close()

    # Evaluate the best-validation-loss weights, which are also the ones exported.
    best = job_dir / JobState.BEST
    if best.is_file():
        chexnet.load_weights(best)
    log.info("evaluating the best weights (epoch %s)", state.state.get("best_epoch"))
    eval_name = config.eval_split if _split(dataset, config.eval_split) is not None else "val"
    eval_reader = _split(dataset, eval_name) or val
    eval_labels = eval_reader.labels()
    scores = np.asarray(
        trainer.predict(ShardBatches(eval_reader, config.batch_size, training=False), verbose=0)
    )
    final = state.state
    context: dict[str, Any] = {
        "model_name": config.model_name,
        "job_dir": str(job_dir),
        "run": run_name,
        "dataset": started["dataset"],
        "epochs": int(final.get("epoch", 0)),
        "best_epoch": final.get("best_epoch"),
        "best_val_loss": final.get("best_val_loss"),
        "image_size": size,
    }
    result_report = report.build(eval_labels, scores, split=eval_name, context=context)

    version: int | None = None
    export_path: Path | None = None
    if config.export:
        model_base = config.model_base_path or default_model_base(config.model_name)
        exportable = chexnet
        if mixed:  # serve in float32: rebuild under the float32 policy and copy the (float32) variables
            exportable = chexmodel.build_chexnet(None, image_size=size)
            exportable.set_weights(chexnet.get_weights())
        training_info = {
            "job_dir": str(job_dir), "run": run_name, "dataset": started["dataset"],
            "epochs": context["epochs"], "best_epoch": context["best_epoch"],
            "best_val_loss": context["best_val_loss"], "eval_split": eval_name,
            "mean_auroc": result_report["mean_auroc"], "config": config.model_dump(mode="json"),
            "code_version": code_version(),
        }  # fmt: skip
        log.info("exporting a new version into %s", model_base)
        export_path = chexmodel.export_saved_model(
            exportable, model_base, weights_source=config.weights, training=training_info
        )
        version = int(export_path.name)
        result_report["model_version"] = version
    json_path, md_path = report.write(result_report, job_dir)

    if version is not None and config.model_config_file is not None:
        from chexstack.hub.handoff import HandoffError, handoff

        hub, job_id = hub_job() if hub_job is not None else (None, None)
        try:
            handoff(
                Path(config.model_config_file),
                config.model_name,
                version,
                config.handoff_label,
                config.serving,
                hub=hub,
                job_id=job_id,
            )
        except HandoffError as exc:
            raise TrainError(
                f"exported version {version} ({export_path}) but could not hand it to serving: {exc}", version
            ) from exc

    history = evaluation.history
    return {
        "status": "succeeded",
        "job_dir": str(job_dir),
        "run_dir": str(run_dir),
        "initial_epoch": initial_epoch,
        "epochs": int(final.get("epoch", 0)),
        "epochs_run": [h["epoch"] for h in history],
        "history": history,
        "optimizer_iterations": int(final.get("optimizer_iterations", 0)),
        "best_epoch": final.get("best_epoch"),
        "best_val_loss": final.get("best_val_loss"),
        "eval_split": eval_name,
        "mean_auroc": result_report["mean_auroc"],
        "per_class_auroc": {row["label"]: row["auroc"] for row in result_report["per_class"]},
        "exported_version": version,
        "export_path": str(export_path) if export_path else None,
        "report_json": str(json_path),
        "report_md": str(md_path),
        "image_size": size,
        "labels": list(LABELS),
    }
