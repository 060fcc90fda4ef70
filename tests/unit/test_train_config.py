"""TrainConfig: defaults, YAML with flag overrides, and errors that name the file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from chexstack.training.config import ConfigError, TrainConfig, load_config


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
    with pytest.raises(ConfigError, match=r"epochs: Input should be greater than or equal to 1"):
        load_config(path, {"xla": "on", "epochs": 0})


def test_missing_data_dir_and_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data_dir: Field required"):
        load_config(None, {})
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_handoff_needs_a_models_config_and_export(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="handoff_label needs model_config_file"):
        TrainConfig(data_dir=tmp_path, handoff_label="canary")
    with pytest.raises(ValueError, match="needs export: true"):
        TrainConfig(data_dir=tmp_path, export=False, model_config_file=tmp_path / "models.config")
