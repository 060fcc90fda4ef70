"""`chexstack train`: train CheXNet on prepared shards, export a version, record the job in the hub."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from chexstack.settings import HubOpt, LogsDirOpt, ModelBaseOpt, ModelConfigFileOpt, option

# Defaults live in TrainConfig: a flag left out must not override the --config file, so all are None here.
_CFG = " Default: from --config, else TrainConfig's."


def train(
    config_file: Annotated[
        Path | None,
        option("--config", "YAML file of TrainConfig settings (the hub's spec['config'] is one).", env=False),
    ] = None,
    data_dir: Annotated[
        Path | None, option("--data-dir", "Shards from `chexstack data prepare`." + _CFG)
    ] = None,
    epochs: Annotated[
        int | None, option("--epochs", "Total epochs (a resumed job continues to this many)." + _CFG, min=1)
    ] = None,
    batch_size: Annotated[int | None, option("--batch-size", "Images per step (16)." + _CFG, min=1)] = None,
    lr: Annotated[float | None, option("--lr", "Initial Adam learning rate (1e-3)." + _CFG)] = None,
    beta_1: Annotated[float | None, option("--beta-1", "Adam beta_1 (0.9)." + _CFG)] = None,
    beta_2: Annotated[float | None, option("--beta-2", "Adam beta_2 (0.999)." + _CFG)] = None,
    plateau_patience: Annotated[
        int | None, option("--plateau-patience", "Epochs without val-loss gain before lr drops." + _CFG)
    ] = None,
    plateau_factor: Annotated[
        float | None, option("--plateau-factor", "lr factor on a plateau (0.1)." + _CFG)
    ] = None,
    class_weighted: Annotated[
        bool | None, option("--class-weighted/--no-class-weighted", "Class-weighted BCE." + _CFG)
    ] = None,
    weights: Annotated[
        str | None, option("--weights", "random, imagenet or a local .weights.h5 file." + _CFG)
    ] = None,
    image_size: Annotated[
        int | None, option("--image-size", "Must equal the shards' image size." + _CFG)
    ] = None,
    seed: Annotated[int | None, option("--seed", "Random seed." + _CFG)] = None,
    mixed_precision: Annotated[
        str | None, option("--mixed-precision", "auto|on|off (auto: on with a GPU)." + _CFG)
    ] = None,
    xla: Annotated[str | None, option("--xla", "auto|on|off (auto: on with a GPU)." + _CFG)] = None,
    job_dir: Annotated[
        Path | None, option("--job-dir", "Checkpoints and resume state; reuse it to resume." + _CFG)
    ] = None,
    logs_dir: LogsDirOpt = None,
    model_name: Annotated[
        str | None, option("--model-name", "Model name in serving (chexnet)." + _CFG)
    ] = None,
    model_base_path: ModelBaseOpt = None,
    export: Annotated[
        bool | None, option("--export/--no-export", "Export a SavedModel version when done." + _CFG)
    ] = None,
    handoff_label: Annotated[
        str | None, option("--handoff-label", "Label the new version canary|stable in serving." + _CFG)
    ] = None,
    model_config_file: ModelConfigFileOpt = None,
    serving: Annotated[
        str | None, option("--serving", "Serving gRPC target the hand-off waits on." + _CFG)
    ] = None,
    project: Annotated[str | None, option("--project", "Hub project." + _CFG)] = None,
    variation: Annotated[str | None, option("--variation", "Hub model variation." + _CFG)] = None,
    max_steps_per_epoch: Annotated[
        int | None, option("--max-steps-per-epoch", "Cap on steps per epoch." + _CFG, min=1)
    ] = None,
    eval_split: Annotated[
        str | None, option("--eval-split", "test|val: split of the final report." + _CFG)
    ] = None,
    workers: Annotated[int | None, option("--workers", "Threads preparing batches." + _CFG, min=1)] = None,
    hub: HubOpt = None,
    no_hub: Annotated[
        bool, option("--no-hub", "Do not record the job in the model information hub.", env=False)
    ] = False,
) -> None:
    """Train CheXNet (DenseNet-121, 14 sigmoid outputs) on uint8 shards, with TensorBoard logs and a report.

    Settings come from --config (YAML) with flags on top; relative paths are relative to the YAML
    file's directory, or for flags to the current one. Rerunning with the same --job-dir resumes
    after the last finished epoch. On success a SavedModel version is exported into --model-base-path
    and, with --model-config-file, handed to serving (labelled with --handoff-label if given): the file
    and serving are checked before training starts.
    """
    given = dict(locals())  # first statement: exactly the parameters
    overrides = {k: v for k, v in given.items() if k not in ("config_file", "hub", "no_hub")}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from chexstack.training.config import ConfigError, load_config
    from chexstack.training.run import preflight

    try:
        config = load_config(config_file, overrides)
        preflight(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    recorder = None if no_hub else _HubRecorder(hub, config)
    result = _run(config, recorder)
    typer.echo(f"mean AUROC ({result['eval_split']}): {result['mean_auroc']}")
    typer.echo(f"report: {result['report_md']}")
    typer.echo(f"TensorBoard run: {result['run_dir']}")
    if result["export_path"]:
        typer.echo(result["export_path"])


class _HubRecorder:
    """Starts the hub job once the data set and environment are known; finishes it with the outcome."""

    def __init__(self, hub_path: Path | None, config: Any) -> None:
        from chexstack.settings import default_hub

        self.path = Path(hub_path) if hub_path is not None else default_hub()
        self.config = config
        self.hub: Any = None
        self.job_id: str | None = None

    def started(self, info: dict[str, Any]) -> None:
        try:
            from chexstack.hub.store import Hub
        except ImportError as exc:
            raise RuntimeError(f"the model information hub is not available ({exc}); use --no-hub") from exc
        from chexstack.training.run import spec_snapshot

        self.hub = Hub.open(self.path)
        self.job_id = self.hub.start_job(
            kind="train", project=self.config.project, variation=self.config.variation,
            model_name=self.config.model_name, spec=spec_snapshot(self.config, info, sys.argv),
        )  # fmt: skip
        typer.echo(f"hub job {self.job_id} ({self.path})", err=True)

    def finished(self, result: dict[str, Any]) -> None:
        if self.job_id is None:
            return
        keys = ("mean_auroc", "per_class_auroc", "epochs", "initial_epoch", "best_epoch", "best_val_loss",
                "eval_split", "exported_version", "export_path", "report_json", "report_md", "job_dir",
                "run_dir")  # fmt: skip
        results = json.loads(json.dumps({k: result.get(k) for k in keys}))
        self.hub.finish_job(
            self.job_id, status="succeeded", results=results, model_version=result["exported_version"]
        )

    def failed(self, exc: BaseException) -> None:
        if self.job_id is not None:
            version = getattr(exc, "exported_version", None)
            self.hub.finish_job(
                self.job_id,
                status="failed",
                results={"exported_version": version} if version is not None else {},
                model_version=version,
                error=f"{type(exc).__name__}: {exc}",
            )


def _run(config: Any, recorder: _HubRecorder | None) -> dict[str, Any]:
    from chexstack.training.run import TrainError, run_training

    try:
        result = run_training(
            config,
            on_started=recorder.started if recorder else None,
            hub_job=(lambda: (recorder.hub, recorder.job_id)) if recorder else None,
        )
    except BaseException as exc:  # KeyboardInterrupt too: the hub must not show the job running forever
        if recorder is not None:
            recorder.failed(exc)
        if isinstance(exc, TrainError | RuntimeError | OSError | ValueError):
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        raise
    if recorder is not None:
        recorder.finished(result)
    return result


def register(app: typer.Typer) -> None:
    app.command("train")(train)
