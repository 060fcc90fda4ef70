"""The training job's configuration: one pydantic model, loadable from YAML, overridable by flags.

`TrainConfig.model_dump(mode="json")` is what the hub stores as spec["config"]; `chexstack train
--config` reads exactly that dict back, so a stored job can be rerun as it was, from any directory:
every path in a TrainConfig is absolute. A relative path from a flag (or its CHEXSTACK_* variable)
is relative to the current directory; one in a YAML file is relative to the file's directory (as in
docker compose files), so a job.yaml next to its data means the same wherever it is run from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from chexstack.settings import DEFAULT_MODEL_NAME, DEFAULT_SEED, DEFAULT_SERVING

Switch = Literal["auto", "on", "off"]


class ConfigError(ValueError):
    """A bad configuration; the message names the file, line and field (or the flag)."""


PATH_FIELDS = ("data_dir", "job_dir", "logs_dir", "model_base_path", "model_config_file")
BUILTIN_WEIGHTS = ("random", "imagenet")
# The field's name before it took the --model-base-path flag's name; stored specs still hold it.
_OLD_NAMES = {"model_base": "model_base_path"}


def _absolute(value: str | os.PathLike[str], base: Path | None = None) -> Path:
    """`value` as an absolute path (~ expanded), relative to `base` or else the current directory.

    Normalised (no `..`) but symlinks are kept: the path the user named is the one recorded."""
    path = Path(value).expanduser()
    return Path(os.path.abspath(path if base is None else base / path))


def _is_weights_file(value: object) -> bool:
    return isinstance(value, str | os.PathLike) and str(value).strip() not in BUILTIN_WEIGHTS


def _renamed(data: dict[str, Any]) -> dict[str, Any]:
    """Old key names read as their new ones; both at once is an error."""
    out = dict(data)
    for old, new in _OLD_NAMES.items():
        if old in out:
            if new in out:
                raise ValueError(f"{old} is the old name of {new}; give only {new}")
            out[new] = out.pop(old)
    return out


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
    model_base_path: Path | None = Field(
        None, description="Where the SavedModel version is exported. Default: $CHEXSTACK_HOME/models/<name>."
    )
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
    dataset_checksum: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="dataset.json's checksum the data must still have (the hub's spec records it, so a "
        "rerun refuses changed data); unset: any.",
    )

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        return _renamed(data) if isinstance(data, dict) else data

    @field_validator(*PATH_FIELDS)
    @classmethod
    def _absolute_path(cls, value: Path | None) -> Path | None:
        return None if value is None else _absolute(value)

    @field_validator("weights")
    @classmethod
    def _absolute_weights(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("give random, imagenet or a .weights.h5 file")
        return str(_absolute(value)) if _is_weights_file(value) else value

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.handoff_label is not None and self.model_config_file is None:
            raise ValueError(
                "handoff_label (--handoff-label) needs model_config_file (--model-config-file: the "
                "models.config serving reads)"
            )
        if (self.handoff_label is not None or self.model_config_file is not None) and not self.export:
            raise ValueError("a hand-off to serving (model_config_file) needs export: true (--export)")
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


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _describe(exc: ValidationError, source: str | None, lines: dict[str, int], flags: set[str]) -> str:
    """One line: each error located at its flag, or its line in the YAML file."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = loc[0] if loc else ""
        field = ".".join(loc)
        if not loc:  # a check across fields (the hand-off's)
            where = source or ""
        elif key in flags:
            where = flag_name(key)
        elif source is not None:
            where = f"{source} line {lines[key]}: {field}" if key in lines else f"{source}: {field}"
        else:
            where = field
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not a TrainConfig field)"
        elif err["type"] == "missing":
            msg = f"missing: give {flag_name(key)} or {key} in the --config file"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if not isinstance(err.get("input"), dict | list):
                msg += f" (got {err.get('input')!r})"
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The YAML file (if any) with `overrides` (flags that were given) on top; ConfigError if invalid.

    Relative paths in the file are taken relative to its directory, those of flags to the current one."""
    data: dict[str, Any] = {}
    lines: dict[str, int] = {}
    source = None
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
        lines = _key_lines(text)
        for old, new in _OLD_NAMES.items():
            if old in lines:
                lines.setdefault(new, lines[old])
        try:
            data = _renamed(loaded)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        base = _absolute(path).parent
        for key in PATH_FIELDS:
            if isinstance(data.get(key), str):
                data[key] = _absolute(data[key], base)
        if _is_weights_file(data.get("weights")) and str(data["weights"]).strip():
            data["weights"] = str(_absolute(str(data["weights"]).strip(), base))
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        given = _renamed(given)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    merged = {**data, **given}
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, lines, set(given))) from exc
