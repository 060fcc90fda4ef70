"""`chexstack train`: train CheXNet on prepared shards, export a version, record the job in the hub."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

from chexstack.settings import HubOpt, LogsDirOpt, ModelBaseOpt, ModelConfigFileOpt, _opt, env_name

# Defaults live in TrainConfig: a flag left out must not override the --config file, so all are None here.
_NONE_HELP = " Default: from --config, else TrainConfig's."


def _o(flag: str, help_: str, **kw: object) -> Any:
    return _opt(None, flag, help_ + _NONE_HELP, **kw)


def _switch(flag: str, help_: str) -> Any:
    return typer.Option(
        None, f"{flag}/--no-{flag[2:]}", envvar=env_name(flag), show_envvar=True, help=help_ + _NONE_HELP
    )


def train(
    config_file: Path | None = typer.Option(
        None,
        "--config",
        help="YAML file of TrainConfig settings (the hub's spec['config'] is one).",
        exists=False,
    ),
    data_dir: Path | None = _o("--data-dir", "Shards from `chexstack data prepare`."),
    epochs: int | None = _o("--epochs", "Total epochs (a resumed job continues to this many).", min=1),
    batch_size: int | None = _o("--batch-size", "Images per step (16).", min=1),
    lr: float | None = _o("--lr", "Initial Adam learning rate (1e-3)."),
    beta_1: float | None = _o("--beta-1", "Adam beta_1 (0.9)."),
    beta_2: float | None = _o("--beta-2", "Adam beta_2 (0.999)."),
    plateau_patience: int | None = _o("--plateau-patience", "Epochs without val-loss gain before lr drops."),
    plateau_factor: float | None = _o("--plateau-factor", "lr factor on a plateau (0.1)."),
    class_weighted: bool | None = _switch("--class-weighted", "Class-weighted BCE."),
    weights: str | None = _o("--weights", "random, imagenet or a local .weights.h5 file."),
    image_size: int | None = _o("--image-size", "Must equal the shards' image size."),
    seed: int | None = _o("--seed", "Random seed."),
    mixed_precision: str | None = _o("--mixed-precision", "auto|on|off (auto: on with a GPU)."),
    xla: str | None = _o("--xla", "auto|on|off (auto: on with a GPU)."),
    job_dir: Path | None = _o("--job-dir", "Checkpoints and resume state; reuse it to resume."),
    logs_dir: Path | None = LogsDirOpt,  # type: ignore[assignment]
    model_name: str | None = _o("--model-name", "Model name in serving (chexnet)."),
    model_base: Path | None = ModelBaseOpt,  # type: ignore[assignment]
    export: bool | None = _switch("--export", "Export a SavedModel version when done."),
    handoff_label: str | None = _o("--handoff-label", "Label the new version canary|stable in serving."),
    model_config_file: Path | None = ModelConfigFileOpt,  # type: ignore[assignment]
    serving: str | None = _o("--serving", "Serving gRPC target the hand-off waits on."),
    project: str | None = _o("--project", "Hub project."),
    variation: str | None = _o("--variation", "Hub model variation."),
    max_steps_per_epoch: int | None = _o("--max-steps-per-epoch", "Cap on steps per epoch.", min=1),
    eval_split: str | None = _o("--eval-split", "test|val: split of the final report."),
    workers: int | None = _o("--workers", "Threads preparing batches.", min=1),
    hub: Path | None = HubOpt,  # type: ignore[assignment]
    no_hub: bool = typer.Option(
        False, "--no-hub", help="Do not record the job in the model information hub."
    ),
) -> None:
    """Train CheXNet (DenseNet-121, 14 sigmoid outputs) on uint8 shards, with TensorBoard logs and a report.

    Settings come from --config (YAML) with flags on top. Rerunning with the same --job-dir resumes
    after the last finished epoch. On success a SavedModel version is exported into --model-base and,
    with --model-config-file, handed to serving (labelled with --handoff-label if given).
    """
    given = dict(locals())  # first statement: exactly the parameters
    overrides = {k: v for k, v in given.items() if k not in ("config_file", "hub", "no_hub")}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from chexstack.training.config import ConfigError, load_config

    try:
        config = load_config(config_file, overrides)
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
