"""models.config rewrites: only the asked-for field changes, atomically, and invalid input is refused."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from chexstack.hub import modelsconfig
from chexstack.hub.modelsconfig import ModelsConfigError

CONFIG = """# Managed by Ansible
# Re-read every 30 s.
model_config_list {
  config {
    name: "chexnet"
    base_path: "/models/chexnet"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config {
    name: "other"
    base_path: "/models/other"
    model_platform: "tensorflow"
    model_version_policy { latest { num_versions: 2 } }
    version_labels { key: "stable" value: 7 }
  }
}
"""


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "models.config"
    path.write_text(CONFIG)
    path.chmod(0o640)
    return path


def test_label_and_policy_edits_keep_everything_else(cfg: Path) -> None:
    with modelsconfig.edit(cfg) as config:
        assert modelsconfig.set_label(config, "chexnet", "stable", 2) == 1
        assert modelsconfig.add_specific_version(config, "chexnet", 3)
        assert not modelsconfig.add_specific_version(config, "chexnet", 3)  # already there
        assert not modelsconfig.add_specific_version(config, "other", 9)  # latest policy: left alone
        assert modelsconfig.remove_label(config, "chexnet", "canary") == 2
        assert modelsconfig.remove_label(config, "chexnet", "canary") is None
    text = cfg.read_text()
    assert text.startswith("# Managed by Ansible\n# Re-read every 30 s.\n")
    assert cfg.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in cfg.parent.iterdir()) == ["models.config", "models.config.lock"]
    config = modelsconfig.read(cfg)
    assert modelsconfig.labels(config, "chexnet") == {"stable": 2}
    assert modelsconfig.policy_text(config, "chexnet") == "specific 1,2,3"
    other = modelsconfig.model(config, "other")
    assert (other.base_path, other.model_version_policy.latest.num_versions) == ("/models/other", 2)
    assert modelsconfig.labels(config, "other") == {"stable": 7}
    assert modelsconfig.policy_text(config, "other") == "latest 2"
    assert modelsconfig.policy_selects(config, "chexnet", 3) is True
    assert modelsconfig.policy_selects(config, "chexnet", 4) is False
    assert modelsconfig.policy_selects(config, "other", 4) is None


def test_unchanged_edit_does_not_rewrite(cfg: Path) -> None:
    before = cfg.stat().st_ino
    with modelsconfig.edit(cfg) as config:
        modelsconfig.set_label(config, "chexnet", "stable", 1)  # the value it already has
    assert cfg.stat().st_ino == before and cfg.read_text() == CONFIG


def test_bad_input_names_the_file_and_reason(cfg: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelsConfigError, match="has no model 'nope' \\(models: chexnet, other\\)"):
        modelsconfig.labels(modelsconfig.read(cfg), "nope")
    with pytest.raises(ModelsConfigError, match="does not exist"):
        modelsconfig.read(tmp_path / "missing.config")
    broken = tmp_path / "broken.config"
    broken.write_text("model_config_list { config { name: 'x' base_pathh: '/m' } }")
    with pytest.raises(ModelsConfigError, match=r"broken.config: invalid models.config: .*base_pathh"):
        modelsconfig.read(broken)
    with pytest.raises(ModelsConfigError, match="version must be positive"), modelsconfig.edit(cfg) as config:
        modelsconfig.set_label(config, "chexnet", "stable", 0)
    assert cfg.read_text() == CONFIG  # a failed edit writes nothing


def test_write_without_overwrite_creates_or_leaves_the_file_alone(cfg: Path, tmp_path: Path) -> None:
    config = modelsconfig.read(cfg)
    fresh = tmp_path / "fresh.config"
    modelsconfig.write(fresh, config, "# new\n", overwrite=False)
    assert fresh.read_text().startswith("# new\n") and modelsconfig.labels(modelsconfig.read(fresh), "other")
    modelsconfig.set_label(config, "chexnet", "stable", 2)
    for path in (cfg, fresh):
        before = path.read_text()
        with pytest.raises(ModelsConfigError, match=re.escape(f"{path} exists; --force replaces it")):
            modelsconfig.write(path, config, overwrite=False)
        assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.config", "models.config"]  # no temp files
    with pytest.raises(ModelsConfigError, match=r"cannot write models\.config .*/no/such/dir/x\.config"):
        modelsconfig.write(tmp_path / "no" / "such" / "dir" / "x.config", config)


def test_concurrent_edits_do_not_lose_updates(cfg: Path) -> None:
    def add(version: int) -> None:
        with modelsconfig.edit(cfg) as config:
            modelsconfig.add_specific_version(config, "chexnet", version)

    threads = [threading.Thread(target=add, args=(v,)) for v in range(3, 23)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    config = modelsconfig.read(cfg)
    assert modelsconfig.policy_text(config, "chexnet") == "specific " + ",".join(map(str, range(1, 23)))
    assert not [p for p in os.listdir(cfg.parent) if p.endswith(".tmp")]


def test_then_sees_the_written_file_in_write_order(cfg: Path) -> None:
    """`then` runs after the write and under the lock: what it reports follows the writes' order."""
    seen: list[tuple[int, str]] = []

    def label(version: int) -> None:
        def then(config: object) -> None:
            on_disk = modelsconfig.labels(modelsconfig.read(cfg), "chexnet")["stable"]
            seen.append((on_disk, str(modelsconfig.labels(config, "chexnet")["stable"])))

        with modelsconfig.edit(cfg, then=then) as config:
            modelsconfig.set_label(config, "chexnet", "stable", version)

    threads = [threading.Thread(target=label, args=(v,)) for v in range(1, 13)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 12
    assert all(str(disk) == pushed for disk, pushed in seen)  # each `then` saw its own write on disk
    final = modelsconfig.labels(modelsconfig.read(cfg), "chexnet")["stable"]
    assert str(final) == seen[-1][1]  # the last reload pushed is what the file holds


def test_render_writes_what_the_hub_edits(tmp_path: Path) -> None:
    """The serving role's first models.config (render) is the file promote/rollback edit (edit)."""
    models: list[dict[str, Any]] = [
        {"name": "chexnet", "version_policy": {"specific": [1, 2]}, "version_labels": {"stable": 1}},
        {"name": "other", "base_path": "/models/elsewhere", "version_policy": {"latest": 3}},
        {"name": "every", "version_policy": {"all": True}, "version_labels": {"stable": 5}},
        {"name": "bare"},
    ]
    text = modelsconfig.render(models, "/models/", "# Written by the serving role.\n")
    path = tmp_path / "models.config"
    path.write_text(text)
    config = modelsconfig.read(path)
    assert modelsconfig.model_names(config) == ["chexnet", "other", "every", "bare"]
    assert [modelsconfig.model(config, n).base_path for n in ("chexnet", "other", "bare")] == [
        "/models/chexnet",
        "/models/elsewhere",
        "/models/bare",
    ]
    assert modelsconfig.policy_text(config, "chexnet") == "specific 1,2"
    assert modelsconfig.policy_text(config, "other") == "latest 3"
    assert modelsconfig.policy_text(config, "every") == "all"
    assert modelsconfig.labels(config, "every") == {"stable": 5}
    assert modelsconfig.model(config, "bare").model_version_policy.WhichOneof("policy_choice") is None
    with modelsconfig.edit(path) as editing:
        modelsconfig.set_label(editing, "chexnet", "stable", 2)
    assert path.read_text().startswith("# Written by the serving role.\nmodel_config_list {\n")
    assert modelsconfig.labels(modelsconfig.read(path), "chexnet") == {"stable": 2}


def test_render_derives_a_specific_policy_from_the_labels() -> None:
    config = modelsconfig.parse(
        modelsconfig.render([{"name": "m", "version_labels": {"b": 3, "a": 2}}], "/m")
    )
    assert modelsconfig.policy_text(config, "m") == "specific 2,3"
    assert modelsconfig.labels(config, "m") == {"a": 2, "b": 3}


@pytest.mark.parametrize(
    ("models", "reason"),
    [
        ([], "at least one model"),
        ("chexnet", "at least one model"),
        ([{"base_path": "/m/x"}], "model #1: `name` must be a non-empty string"),
        ([{"name": "a"}, {"name": "a"}], "model 'a' is listed twice"),
        ([{"name": "a", "labels": {}}], "model 'a': unknown keys \\['labels'\\]"),
        ([{"name": "a", "version_policy": {"newest": 1}}], "unknown version_policy keys \\['newest'\\]"),
        ([{"name": "a", "version_policy": {"latest": 1, "specific": [1]}}], "one of latest, all, specific"),
        ([{"name": "a", "version_policy": {"latest": 0}}], "version_policy.latest must be a positive"),
        ([{"name": "a", "version_policy": {"all": "yes"}}], "version_policy.all must be true"),
        ([{"name": "a", "version_policy": {"specific": []}}], "version_policy.specific must list versions"),
        ([{"name": "a", "version_policy": {"specific": [True]}}], "must be a positive version number"),
        ([{"name": "a", "version_labels": {"stable": -1}}], "label 'stable' must be a positive version"),
        ([{"name": "a", "version_labels": ["stable"]}], "version_labels must map labels to versions"),
        (
            [{"name": "a", "version_policy": {"specific": [1]}, "version_labels": {"canary": 2}}],
            "version_labels \\{'canary': 2\\} name versions version_policy.specific \\[1\\] does not load",
        ),
    ],
)
def test_render_refuses_bad_models_naming_the_field(models: object, reason: str) -> None:
    with pytest.raises(ModelsConfigError, match=reason):
        modelsconfig.render(models, "/m")  # type: ignore[arg-type]


def test_render_refuses_a_header_that_is_not_comments() -> None:
    with pytest.raises(ModelsConfigError, match="the header must be comment lines"):
        modelsconfig.render([{"name": "a"}], "/m", "model_config_list {}\n")
