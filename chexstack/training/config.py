"""The training job's configuration: one pydantic model, loadable from YAML, overridable by flags.

`TrainConfig.model_dump(mode="json")` is what the hub stores as spec["config"]; `chexstack train
--config` reads exactly that dict back, so a stored job can be rerun as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from chexstack.settings import DEFAULT_MODEL_NAME, DEFAULT_SEED, DEFAULT_SERVING

Switch = Literal["auto", "on", "off"]


class ConfigError(ValueError):
    """A bad configuration; the message names the file, line and field."""


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Field(description="Shards written by `chexstack data prepare` (holds dataset.json).")
    epochs: int = Field(10, ge=1, description="Total epochs; a resumed job runs until this many are done.")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0, description="Initial Adam learning rate.")
    beta_1: float = Field(0.9, ge=0, lt=1)
    beta_2: float = Field(0.999, ge=0, lt=1)
    plateau_patience: int = Field(
        1, ge=0, description="Epochs without val-loss improvement before the lr drops."
    )
    plateau_factor: float = Field(
        0.1, gt=0, lt=1, description="lr multiplier on a plateau (0.1 = divide by 10)."
    )
    class_weighted: bool = Field(False, description="Weight each class's BCE terms by its label frequencies.")
    weights: str = Field("random", min_length=1, description="random, imagenet or a local .weights.h5 file.")
    image_size: int | None = Field(None, ge=32, description="Must equal the shards' size; default: theirs.")
    seed: int = DEFAULT_SEED
    mixed_precision: Switch = Field("auto", description="mixed_float16; auto = on when a GPU is present.")
    xla: Switch = Field("auto", description="XLA-compiled train step; auto = on when a GPU is present.")
    job_dir: Path | None = Field(
        None,
        description="Checkpoints and resume state; rerunning with the same dir resumes. Default: new dir.",
    )
    logs_dir: Path | None = Field(None, description="TensorBoard root; the run writes to <logs_dir>/<run>.")
    model_name: str = Field(DEFAULT_MODEL_NAME, min_length=1)
    model_base: Path | None = Field(None, description="Where the SavedModel version is exported.")
    export: bool = True
    handoff_label: Literal["canary", "stable"] | None = None
    model_config_file: Path | None = Field(None, description="Serving models.config to add the version to.")
    serving: str = Field(DEFAULT_SERVING, description="Serving gRPC target the hand-off waits on.")
    project: str = Field("chexstack", min_length=1)
    variation: str = Field("default", min_length=1)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    eval_split: Literal["test", "val"] = Field(
        "test", description="Split of the final report (val if test is empty)."
    )
    sample_images: int = Field(
        4, ge=0, le=32, description="Validation images shown with CAMs in TensorBoard."
    )
    workers: int = Field(2, ge=1, description="Threads preparing batches ahead of the train step.")
    bn_momentum: float | None = Field(
        None, gt=0, lt=1, description="Override BatchNorm momentum (short runs need < 0.99 to settle)."
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.handoff_label is not None and self.model_config_file is None:
            raise ValueError("handoff_label needs model_config_file (the models.config serving reads)")
        if (self.handoff_label is not None or self.model_config_file is not None) and not self.export:
            raise ValueError("a hand-off to serving needs export: true")
        return self


def _key_lines(text: str) -> dict[str, int]:
    """Top-level key -> 1-based line, so an error can point at the line to fix."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): k.start_mark.line + 1 for k, _ in node.value}


def _describe(exc: ValidationError, source: str, lines: dict[str, int]) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(config)"
        where = (
            f"{source} line {lines[str(err['loc'][0])]}"
            if err["loc"] and str(err["loc"][0]) in lines
            else source
        )
        msg = "unknown key (not a TrainConfig field)" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{where}: {field}: {msg}")
    return "; ".join(parts)


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The YAML file (if any) with `overrides` (flags that were given) on top; ConfigError if invalid."""
    data: dict[str, Any] = {}
    lines: dict[str, int] = {}
    source = "flags"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
        data, lines = loaded, _key_lines(text)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    merged = {**data, **given}
    # An error in a key a flag replaced is the flag's, not the file's.
    lines = {k: v for k, v in lines.items() if k not in given}
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source if not given else f"{source} (+flags)", lines)) from exc
