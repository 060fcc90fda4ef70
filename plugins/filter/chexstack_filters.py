"""Jinja filters of the CheXStack roles and plays (ansible.cfg: filter_plugins = plugins/filter).

What the roles decide about images, A/B weights, models.config and the services' environment is
computed here, by the chexstack package where it has the rule (chexstack.ab.parse_weights,
chexstack.hub.modelsconfig), so a rule has one implementation and unit tests
(tests/unit/test_filters.py) instead of a regex or a loop in a template. The filters run on the
controller, whose Python (the project's virtualenv) has the package.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from ansible.errors import AnsibleFilterError  # type: ignore[import-untyped]

# `CHEXSTACK_KAFKA_IMAGE=chexstack/kafka:4.2.1-0123456789ab`, a line of scripts/images/tags.sh.
_IMAGE_LINE = re.compile(r"^(CHEXSTACK_[A-Z0-9_]+_IMAGE)=(.+)$")
# `chexstack/python:0.1.0-557c2ba31627`: an image scripts/images/build.sh builds (`build.sh python`).
_LOCAL_IMAGE = re.compile(r"^chexstack/([a-z0-9][a-z0-9_.-]*):[^:/]+$")
# A role or shared variable whose name is <prefix>_<setting>: chexstack_kafka, workers_max_bytes.
_SETTING = re.compile(r"^[a-z][a-z0-9]*_([a-z][a-z0-9_]*)$")


def _chexstack(module: str) -> ModuleType:
    """chexstack.<module>, imported when a filter first needs it, not with this file: Ansible imports
    the plugin in the worker process of every task, and the package (numpy, protobuf) took 0.3 s of
    every task of site.yml that way."""
    try:
        return importlib.import_module(f"chexstack.{module}")
    except ImportError as exc:
        raise AnsibleFilterError(
            f"the chexstack package is not importable from the Python that runs Ansible "
            f"({exc}); run ansible-playbook from the project's virtualenv (make venv)"
        ) from exc


def image_facts(lines: Sequence[str]) -> dict[str, str]:
    """scripts/images/tags.sh output -> {chexstack_kafka_image: ref, ...}; other lines are ignored."""
    facts: dict[str, str] = {}
    for line in lines:
        match = _IMAGE_LINE.match(str(line).strip())
        if match:
            facts[match.group(1).lower()] = match.group(2)
    return facts


def missing_images(refs: Sequence[str], images: Sequence[Mapping[str, Any]]) -> list[str]:
    """The chexstack/* references of `refs` that no image of docker_image_info's `images` is tagged with.

    chexstack/* images are built on the host and exist in no registry; other references (the official
    images of the pull path) are left to compose to pull.
    """
    tags = {tag for image in images for tag in image.get("RepoTags") or []}
    return [ref for ref in dict.fromkeys(refs) if ref.startswith("chexstack/") and ref not in tags]


def build_names(refs: Sequence[str]) -> list[str]:
    """The names scripts/images/build.sh builds chexstack/* references by: chexstack/python:1.0 -> python."""
    names = []
    for ref in refs:
        match = _LOCAL_IMAGE.match(str(ref))
        if not match:
            raise AnsibleFilterError(f"chexstack_build_names: {ref!r} is not chexstack/<name>:<tag>")
        names.append(match.group(1))
    return names


def ab_weights_problems(text: str) -> list[str]:
    """[] when `text` is valid A/B weights for the routers (chexstack.ab.parse_weights), else the reason."""
    ab = _chexstack("ab")
    try:
        ab.parse_weights(str(text))
    except ValueError as exc:
        return [str(exc)]
    return []


def serving_models(models: Sequence[Mapping[str, Any]], models_dir: str) -> list[dict[str, Any]]:
    """The serving role's models with their defaults: name, base_path, and version, the version a first
    export writes (the lowest one the policy or the labels name, else 1)."""
    modelsconfig = _chexstack("hub.modelsconfig")
    try:
        config = modelsconfig.from_models(models, models_dir)
    except modelsconfig.ModelsConfigError as exc:
        raise AnsibleFilterError(f"serving_models: {exc}") from exc
    resolved = []
    for model in config.model_config_list.config:
        named = {*model.model_version_policy.specific.versions, *model.version_labels.values()}
        resolved.append({"name": model.name, "base_path": model.base_path, "version": min(named, default=1)})
    return resolved


def serving_models_problems(
    models: Sequence[Mapping[str, Any]], models_dir: str, health_model: str
) -> list[str]:
    """[] when the serving role can deploy `models`, else what is wrong: an invalid model list
    (chexstack.hub.modelsconfig.from_models), a base_path off the models volume (mounted at
    `models_dir`), or a health model that is not one of the models."""
    modelsconfig = _chexstack("hub.modelsconfig")
    try:
        config = modelsconfig.from_models(models, models_dir)
    except modelsconfig.ModelsConfigError as exc:
        return [str(exc)]
    problems = [
        f"model {m.name!r}: base_path {m.base_path!r} is not on the models volume ({models_dir}/...)"
        for m in config.model_config_list.config
        if not re.match(re.escape(models_dir.rstrip("/")) + "/[^/]", m.base_path)
    ]
    names = modelsconfig.model_names(config)
    if health_model not in names:
        problems.append(f"serving_health_model {health_model!r} is not one of the models {names}")
    return problems


def models_config(models: Sequence[Mapping[str, Any]], models_dir: str, header: str = "") -> str:
    """models.config text of the serving role's models (chexstack.hub.modelsconfig.render)."""
    modelsconfig = _chexstack("hub.modelsconfig")
    try:
        return str(modelsconfig.render(models, models_dir, header))
    except modelsconfig.ModelsConfigError as exc:
        raise AnsibleFilterError(f"serving_models: {exc}") from exc


def env(names: Sequence[str], values: Sequence[Any]) -> dict[str, str]:
    """Setting variables -> a service's environment: {CHEXSTACK_<SETTING>: value}.

    `names` are variable names, <prefix>_<setting> (workers_max_bytes, chexstack_kafka), `values`
    their values in the same order (query('ansible.builtin.vars', *names)): workers_max_bytes becomes
    CHEXSTACK_MAX_BYTES, which the CLI reads for --max-bytes. Booleans are written as true/false.
    """
    names, values = list(names), list(values)
    if len(names) != len(values):
        raise AnsibleFilterError(f"chexstack_env: {len(names)} names but {len(values)} values")
    environment: dict[str, str] = {}
    for name, value in zip(names, values, strict=True):
        match = _SETTING.match(str(name))
        if not match:
            raise AnsibleFilterError(f"chexstack_env: {name!r} is not a <prefix>_<setting> variable name")
        key = "CHEXSTACK_" + match.group(1).upper()
        if key in environment:
            raise AnsibleFilterError(f"chexstack_env: two settings give {key} ({name!r} is the second)")
        if isinstance(value, bool):
            environment[key] = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            environment[key] = str(value)
        else:
            raise AnsibleFilterError(
                f"chexstack_env: {name} must be a string, number or boolean, got {value!r}"
            )
    return environment


class FilterModule:
    """The chexstack_* filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "chexstack_image_facts": image_facts,
            "chexstack_missing_images": missing_images,
            "chexstack_build_names": build_names,
            "chexstack_ab_weights_problems": ab_weights_problems,
            "chexstack_serving_models": serving_models,
            "chexstack_serving_models_problems": serving_models_problems,
            "chexstack_models_config": models_config,
            "chexstack_env": env,
        }
