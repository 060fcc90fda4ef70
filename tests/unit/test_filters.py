"""The roles' filter plugin (plugins/filter/chexstack_filters.py): each filter on good and bad input, and the
plugin loaded by Ansible itself through the repository's ansible.cfg."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError  # type: ignore[import-untyped]

from chexstack import ab
from chexstack.hub import modelsconfig

ROOT = Path(__file__).resolve().parents[2]
MODELS = "/var/lib/chexstack/models"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "chexstack_filters", ROOT / "plugins" / "filter" / "chexstack_filters.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


F = _load()
FILTERS: dict[str, Any] = F.FilterModule().filters()


def test_every_filter_is_registered_under_its_chexstack_name() -> None:
    assert sorted(FILTERS) == [
        "chexstack_ab_weights_problems",
        "chexstack_build_names",
        "chexstack_env",
        "chexstack_image_facts",
        "chexstack_missing_images",
        "chexstack_models_config",
        "chexstack_serving_models",
        "chexstack_serving_models_problems",
    ]


def test_image_facts_from_tags_sh_lines() -> None:
    lines = [
        "CHEXSTACK_IMAGE_SOURCE=bootstrap",
        "CHEXSTACK_PYTHON_IMAGE=chexstack/python:0.1.0-557c2ba31627",
        "CHEXSTACK_TF_SERVING_GPU_IMAGE=tensorflow/serving:2.19.0-gpu",
        "KAFKA_PULL_IMAGE=apache/kafka:4.2.1",
        "CHEXSTACK_BASE_FROM=chexstack/debian-base:bookworm-20261122",
        "",
    ]
    assert F.image_facts(lines) == {
        "chexstack_python_image": "chexstack/python:0.1.0-557c2ba31627",
        "chexstack_tf_serving_gpu_image": "tensorflow/serving:2.19.0-gpu",
    }


def test_missing_images_are_the_absent_chexstack_ones() -> None:
    images = [{"RepoTags": ["chexstack/python:1", "chexstack/python:latest"]}, {"RepoTags": None}]
    refs = ["chexstack/python:1", "chexstack/kafka:2", "tensorflow/serving:2.19.0", "chexstack/kafka:2"]
    assert F.missing_images(refs, images) == ["chexstack/kafka:2"]
    assert F.missing_images(["chexstack/python:1"], images) == []
    assert F.missing_images(["chexstack/python:2"], []) == ["chexstack/python:2"]


def test_build_names_are_what_build_sh_takes() -> None:
    refs = ["chexstack/python:0.1.0-557c2ba31627", "chexstack/debian-base:bookworm-20261122"]
    assert F.build_names(refs) == ["python", "debian-base"]
    reason = re.escape("'tensorflow/serving:2.19.0' is not chexstack/<name>:<tag>")
    with pytest.raises(AnsibleFilterError, match=reason):
        F.build_names(["tensorflow/serving:2.19.0"])


@pytest.mark.parametrize("text", ["", "stable=90,canary=10", " stable = 100 ", "a.b-c_d=0,x=1"])
def test_ab_weights_the_routers_accept_have_no_problems(text: str) -> None:
    assert F.ab_weights_problems(text) == []
    ab.parse_weights(text)  # the same rule: the routers would start with it


@pytest.mark.parametrize(
    ("text", "reason"),
    [("stable", "expected NAME=INTEGER"), ("stable=9.5", "expected NAME=INTEGER"), ("=3", "expected NAME")],
)
def test_bad_ab_weights_give_parse_weights_reason(text: str, reason: str) -> None:
    problems = F.ab_weights_problems(text)
    assert len(problems) == 1 and reason in problems[0], problems
    with pytest.raises(ValueError, match=reason):
        ab.parse_weights(text)


SERVING_MODELS: list[dict[str, Any]] = [
    {"name": "chexnet", "version_policy": {"specific": [2, 3]}, "version_labels": {"stable": 2, "canary": 3}},
    {"name": "labelled", "version_labels": {"stable": 4}},
    {"name": "latest", "base_path": f"{MODELS}/other", "version_policy": {"latest": 2}},
]


def test_serving_models_fill_in_base_path_and_first_version() -> None:
    assert F.serving_models(SERVING_MODELS, MODELS) == [
        {"name": "chexnet", "base_path": f"{MODELS}/chexnet", "version": 2},
        {"name": "labelled", "base_path": f"{MODELS}/labelled", "version": 4},
        {"name": "latest", "base_path": f"{MODELS}/other", "version": 1},
    ]


def test_models_config_is_what_the_hub_reads() -> None:
    text = F.models_config(SERVING_MODELS, MODELS, "# Written by the serving role.\n")
    assert text.startswith("# Written by the serving role.\nmodel_config_list {\n")
    config = modelsconfig.parse(text)
    assert modelsconfig.model_names(config) == ["chexnet", "labelled", "latest"]
    assert modelsconfig.labels(config, "chexnet") == {"canary": 3, "stable": 2}
    assert modelsconfig.policy_text(config, "chexnet") == "specific 2,3"
    # No policy but labels: exactly the labelled versions are loaded.
    assert modelsconfig.policy_text(config, "labelled") == "specific 4"
    assert modelsconfig.policy_text(config, "latest") == "latest 2"
    assert modelsconfig.model(config, "latest").base_path == f"{MODELS}/other"


def test_valid_serving_models_have_no_problems() -> None:
    assert F.serving_models_problems(SERVING_MODELS, MODELS, "chexnet") == []


@pytest.mark.parametrize(
    ("models", "health", "reason"),
    [
        ([], "x", "at least one model"),
        ([{"name": "a"}, {"name": "a"}], "a", "listed twice"),
        ([{"name": "a", "base_path": "/elsewhere/a"}], "a", "not on the models volume"),
        ([{"name": "a", "base_path": f"{MODELS}/"}], "a", "not on the models volume"),
        ([{"name": "a"}], "b", "serving_health_model 'b' is not one of the models"),
        ([{"name": "a", "version_labels": {"stable": 0}}], "a", "label 'stable' must be a positive version"),
        (
            [{"name": "a", "version_policy": {"specific": [1]}, "version_labels": {"canary": 2}}],
            "a",
            "name versions version_policy.specific \\[1\\] does not load",
        ),
        ([{"name": "a", "version_policy": {"latest": 1, "all": True}}], "a", "must be one of latest, all"),
        ([{"name": "a", "version": 1}], "a", "unknown keys \\['version'\\]"),
    ],
)
def test_serving_models_problems_say_what_is_wrong(
    models: list[dict[str, Any]], health: str, reason: str
) -> None:
    problems = F.serving_models_problems(models, MODELS, health)
    assert len(problems) == 1, problems
    assert re.search(reason, problems[0]), problems


def test_invalid_serving_models_fail_the_rendering_filters() -> None:
    bad = [{"name": "a", "version_policy": {"specific": [1]}, "version_labels": {"canary": 2}}]
    with pytest.raises(AnsibleFilterError, match="serving_models: model 'a': version_labels"):
        F.models_config(bad, MODELS)
    with pytest.raises(AnsibleFilterError, match="serving_models: model 'a'"):
        F.serving_models(bad, MODELS)


def test_env_turns_setting_names_into_chexstack_variables() -> None:
    names = [
        "chexstack_kafka",
        "workers_max_bytes",
        "workers_serving_timeout_s",
        "workers_ab_weights",
        "x_flag",
    ]
    assert F.env(names, ["kafka:9092", 67108864, 0.5, "", True]) == {
        "CHEXSTACK_KAFKA": "kafka:9092",
        "CHEXSTACK_MAX_BYTES": "67108864",
        "CHEXSTACK_SERVING_TIMEOUT_S": "0.5",
        "CHEXSTACK_AB_WEIGHTS": "",
        "CHEXSTACK_FLAG": "true",
    }


@pytest.mark.parametrize(
    ("names", "values", "reason"),
    [
        (["workers_a"], [], "1 names but 0 values"),
        (["kafka"], ["x"], "'kafka' is not a <prefix>_<setting>"),
        (["workers_kafka", "chexstack_kafka"], ["a", "b"], "two settings give CHEXSTACK_KAFKA"),
        (["workers_list"], [[1]], "workers_list must be a string, number or boolean"),
        (["workers_none"], [None], "workers_none must be a string"),
    ],
)
def test_env_refuses_what_is_no_setting(names: list[str], values: list[Any], reason: str) -> None:
    with pytest.raises(AnsibleFilterError, match=reason):
        F.env(names, values)


def test_ansible_loads_the_filters_through_ansible_cfg(tmp_path: Path) -> None:
    """ansible.cfg's filter_plugins: Ansible run from the repository root finds the filters, and the
    values come from Ansible's own variables (the vars lookup, as the roles call chexstack_env)."""
    out = tmp_path / "out.json"
    expr = (
        "{{ {'env': ['workers_max_bytes', 'chexstack_kafka'] | chexstack_env("
        "query('ansible.builtin.vars', 'workers_max_bytes', 'chexstack_kafka')),"
        " 'weights': 'stable=1,canary' | chexstack_ab_weights_problems} | to_json }}"
    )
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", NO_COLOR="1", ANSIBLE_LOCAL_TEMP=str(tmp_path))
    env.pop("ANSIBLE_CONFIG", None)  # the repository's ansible.cfg, found in the working directory
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    variables = {
        "workers_max_bytes": 64,
        "chexstack_kafka": "kafka:9092",
        "ansible_python_interpreter": sys.executable,
    }
    argv = [
        str(bin_dir / "ansible"),
        "localhost",
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        json.dumps(variables),
    ]
    argv += [
        "-m",
        "ansible.builtin.copy",
        "-a",
        json.dumps({"content": expr, "dest": str(out), "mode": "0644"}),
    ]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(out.read_text()) == {
        "env": {"CHEXSTACK_MAX_BYTES": "64", "CHEXSTACK_KAFKA": "kafka:9092"},
        "weights": ["bad weight 'canary': expected NAME=INTEGER, e.g. stable=90"],
    }
