"""TrainConfig: defaults, YAML with flag overrides, absolute paths, old key names, and errors that name
the file, line and field (or the flag); `train` checks its hand-off settings before it trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from chexstack.cli import app
from chexstack.training.config import ConfigError, TrainConfig, load_config
from tests.conftest import free_port


def test_defaults_follow_chexnet(tmp_path: Path) -> None:
    config = load_config(None, {"data_dir": tmp_path})
    assert (config.batch_size, config.lr, config.beta_1, config.beta_2) == (16, 1e-3, 0.9, 0.999)
    assert config.plateau_factor == 0.1 and config.weights == "random"
    assert config.mixed_precision == "auto" and config.xla == "auto" and config.export is True


def test_flags_override_the_file_and_none_means_not_given(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(f"data_dir: {tmp_path}\nepochs: 7\nlr: 0.01\nclass_weighted: true\n")
    config = load_config(path, {"epochs": 3, "lr": None, "seed": 5})
    assert (config.epochs, config.lr, config.class_weighted, config.seed) == (3, 0.01, True, 5)


def test_model_dump_round_trips_through_yaml(tmp_path: Path) -> None:
    """The hub stores model_dump(mode='json'); `train --config` must read it back unchanged."""
    config = load_config(None, {"data_dir": tmp_path, "image_size": 64, "handoff_label": "canary",
                                "model_config_file": tmp_path / "models.config"})  # fmt: skip
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert load_config(path) == config


def test_unknown_key_names_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(f"data_dir: {tmp_path}\nepochs: 2\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.yaml line 3: learning_rate: unknown key"):
        load_config(path)


def test_bad_value_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(f"data_dir: {tmp_path}\nxla: sometimes\n")
    with pytest.raises(ConfigError, match=r"line 2: xla: Input should be 'auto', 'on' or 'off'"):
        load_config(path)
    with pytest.raises(
        ConfigError, match=r"^--epochs: Input should be greater than or equal to 1 \(got 0\)$"
    ):
        load_config(path, {"xla": "on", "epochs": 0})


def test_missing_data_dir_and_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data_dir: missing: give --data-dir or data_dir in the --config"):
        load_config(None, {})
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_handoff_needs_a_models_config_and_export(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"handoff_label \(--handoff-label\) needs model_config_file"):
        TrainConfig(data_dir=tmp_path, handoff_label="canary")
    with pytest.raises(ValueError, match="needs export: true"):
        TrainConfig(data_dir=tmp_path, export=False, model_config_file=tmp_path / "models.config")


PATHS = ("data_dir", "job_dir", "logs_dir", "model_base_path", "model_config_file")


def test_relative_flags_are_made_absolute_against_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, {"data_dir": "shards", "job_dir": "jobs/../job", "logs_dir": Path("logs"),
                                "model_base_path": "models/chexnet", "model_config_file": "models.config",
                                "weights": "w/best.weights.h5"})  # fmt: skip
    assert config.data_dir == tmp_path / "shards" and config.job_dir == tmp_path / "job"
    assert config.model_base_path == tmp_path / "models" / "chexnet"
    assert all(getattr(config, k).is_absolute() for k in PATHS)
    assert config.weights == str(tmp_path / "w" / "best.weights.h5")
    assert load_config(None, {"data_dir": "/d", "weights": "imagenet"}).weights == "imagenet"
    assert load_config(None, {"data_dir": "~/d"}).data_dir == Path.home() / "d"


def test_relative_yaml_paths_are_relative_to_the_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "project").mkdir()
    path = tmp_path / "project" / "job.yaml"
    path.write_text("data_dir: shards\nmodel_base_path: ../models/chexnet\nweights: init.weights.h5\n"
                    "logs_dir: /var/logs\n")  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("../project/job.yaml"), {"job_dir": "job"})
    assert config.data_dir == tmp_path / "project" / "shards"
    assert config.model_base_path == tmp_path / "models" / "chexnet"
    assert config.weights == str(tmp_path / "project" / "init.weights.h5")
    assert config.logs_dir == Path("/var/logs")
    assert config.job_dir == elsewhere / "job"  # a flag: the cwd
    # What the hub stores reads back the same from anywhere.
    dumped = config.model_dump(mode="json")
    assert all(Path(dumped[k]).is_absolute() for k in ("data_dir", "job_dir", "model_base_path"))
    monkeypatch.chdir(tmp_path)
    assert TrainConfig.model_validate(dumped) == config


def test_the_old_model_base_key_still_reads(tmp_path: Path) -> None:
    """Specs the hub stored before the rename hold model_base: they must stay rerunnable."""
    old_spec = {"data_dir": str(tmp_path), "model_base": str(tmp_path / "models")}
    config = TrainConfig.model_validate(old_spec)
    assert config.model_base_path == tmp_path / "models" and "model_base" not in config.model_dump()
    path = tmp_path / "job.yaml"
    path.write_text(f"data_dir: {tmp_path}\nmodel_base: models\n")
    assert load_config(path).model_base_path == tmp_path / "models"
    path.write_text(f"data_dir: {tmp_path}\nmodel_base: a\nmodel_base_path: b\n")
    with pytest.raises(ConfigError, match="model_base is the old name of model_base_path; give only"):
        load_config(path)


def test_dataset_checksum_must_be_a_checksum(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(f"data_dir: {tmp_path}\ndataset_checksum: abc\n")
    with pytest.raises(ConfigError, match=r"job\.yaml line 2: dataset_checksum: String should match pattern"):
        load_config(path)
    assert (
        load_config(None, {"data_dir": tmp_path, "dataset_checksum": "ab" * 32}).dataset_checksum == "ab" * 32
    )


def _train(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["train", "--no-hub", *args])
    return res.exit_code, res.output


@pytest.mark.parametrize("flag", ["--mixed-precision", "--xla"])
def test_a_bad_switch_is_one_line_naming_the_flag_and_the_values(tmp_path: Path, flag: str) -> None:
    code, out = _train(["--data-dir", str(tmp_path), flag, "maybe"])
    assert code == 2 and "Traceback" not in out
    assert out.strip() == f"error: {flag}: Input should be 'auto', 'on' or 'off' (got 'maybe')"


def test_the_models_config_is_checked_before_training(tmp_path: Path) -> None:
    """No data set exists here: an error about the models.config proves it came before any training."""
    base = ["--data-dir", str(tmp_path / "no-shards"), "--serving", f"127.0.0.1:{free_port()}"]
    code, out = _train([*base, "--model-config-file", str(tmp_path / "missing.config")])
    assert (code, out.strip()) == (2, f"error: --model-config-file: models.config {tmp_path}/missing.config "
                                      "does not exist")  # fmt: skip
    bad = tmp_path / "bad.config"
    bad.write_text('model_config_list { config { name: "chexnet" \n')
    code, out = _train([*base, "--model-config-file", str(bad)])
    assert code == 2 and out.startswith(f"error: --model-config-file: {bad}:") and out.count("\n") == 1
    other = tmp_path / "models.config"
    other.write_text(f'model_config_list {{ config {{ name: "other" base_path: "{tmp_path}" '
                     'model_platform: "tensorflow" } }\n')  # fmt: skip
    code, out = _train([*base, "--model-config-file", str(other)])
    assert code == 2 and "has no model 'chexnet' (models: other)" in out and out.count("\n") == 1


def test_serving_that_does_not_answer_fails_before_training(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "chexnet" base_path: "{tmp_path}" '
                      'model_platform: "tensorflow" } }\n')  # fmt: skip
    serving = f"127.0.0.1:{free_port()}"  # nothing listens there
    code, out = _train(["--data-dir", str(tmp_path / "no-shards"), "--model-config-file", str(config),
                        "--handoff-label", "canary", "--serving", serving])  # fmt: skip
    assert code == 2 and out.startswith(f"error: --serving {serving}: serving does not answer")
    assert out.count("\n") == 1 and "Traceback" not in out


def test_a_handoff_without_a_models_config_is_one_line(tmp_path: Path) -> None:
    code, out = _train(["--data-dir", str(tmp_path), "--handoff-label", "canary"])
    assert (code, out) == (2, "error: handoff_label (--handoff-label) needs model_config_file "
                              "(--model-config-file: the models.config serving reads)\n")  # fmt: skip
