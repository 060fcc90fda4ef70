"""`chexstack models init-config|handoff|promote|rollback` refuse bad input with one line, before serving.

What needs a running server (the hand-off itself, "on disk" vs "not loaded") is in
tests/integration/test_handoff.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chexstack.cli import app
from chexstack.hub import modelsconfig
from chexstack.hub.store import Hub
from tests.conftest import free_port

runner = CliRunner()


def versions(tmp_path: Path, *numbers: int) -> Path:
    """A model base path with empty numbered version dirs (init-config only looks at the names)."""
    base = tmp_path / "models" / "chexnet"
    base.mkdir(parents=True)
    for v in numbers:
        (base / str(v)).mkdir()
    (base / ".export-4-tmp").mkdir()  # an export under way is not a version
    return base


def init(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["models", "init-config", *args], env={"CHEXSTACK_MODEL_CONFIG_FILE": None})
    return result.exit_code, result.stdout, result.stderr


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_init_config_loads_every_version_on_disk_and_labels_the_highest_stable(tmp_path: Path) -> None:
    base = versions(tmp_path, 1, 2, 10)
    out = tmp_path / "models.config"
    code, stdout, stderr = init("--model-base-path", str(base), "--model-config-file", str(out))
    assert code == 0, stderr
    assert stdout == f"wrote {out}: chexnet versions 1, 2, 10 from {base}; stable -> v10\n"
    config = modelsconfig.read(out)
    assert modelsconfig.model_names(config) == ["chexnet"]
    assert modelsconfig.model(config, "chexnet").base_path == str(base)
    assert modelsconfig.policy_text(config, "chexnet") == "specific 1,2,10"
    assert modelsconfig.labels(config, "chexnet") == {"stable": 10}
    assert out.read_text().startswith("# Written by `chexstack models init-config`")
    # The hub's writer edits it like any other models.config and keeps the header.
    with modelsconfig.edit(out) as edited:
        modelsconfig.set_label(edited, "chexnet", "canary", 2)
    assert out.read_text().startswith("# Written by `chexstack models init-config`")


def test_init_config_takes_the_labels_and_a_relative_base_and_the_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions(tmp_path, 1, 2)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app,
        ["models", "init-config", "--model-base-path", "models/chexnet", "--stable", "1", "--canary", "2"],
        env={"CHEXSTACK_MODEL_CONFIG_FILE": "models.config"},
    )
    assert result.exit_code == 0, result.output
    config = modelsconfig.read(tmp_path / "models.config")
    assert modelsconfig.labels(config, "chexnet") == {"canary": 2, "stable": 1}
    # Serving may start elsewhere: the path written is absolute.
    assert modelsconfig.model(config, "chexnet").base_path == str(tmp_path / "models" / "chexnet")


def test_init_config_defaults_to_the_model_base_under_chexstack_home(tmp_path: Path) -> None:
    (tmp_path / "models" / "other" / "3").mkdir(parents=True)
    out = tmp_path / "models.config"
    result = runner.invoke(
        app,
        ["models", "init-config", "--model-name", "other", "--model-config-file", str(out)],
        env={"CHEXSTACK_HOME": str(tmp_path), "CHEXSTACK_MODEL_BASE_PATH": None},
    )
    assert result.exit_code == 0, result.output
    config = modelsconfig.read(out)
    assert modelsconfig.model(config, "other").base_path == str(tmp_path / "models" / "other")
    assert modelsconfig.labels(config, "other") == {"stable": 3}


def test_init_config_replaces_a_file_only_with_force(tmp_path: Path) -> None:
    base = versions(tmp_path, 1, 2)
    out = tmp_path / "models.config"
    out.write_text("# hand-written\n")
    code, _, stderr = init("--model-base-path", str(base), "--model-config-file", str(out))
    assert code == 1
    assert one_error_line(stderr) == f"error: {out} exists; --force replaces it"
    assert out.read_text() == "# hand-written\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "models.config"]  # no temp file left
    code, _, stderr = init("--model-base-path", str(base), "--model-config-file", str(out), "--force")
    assert code == 0, stderr
    assert modelsconfig.labels(modelsconfig.read(out), "chexnet") == {"stable": 2}


def test_init_config_refuses_what_serving_could_not_serve(tmp_path: Path) -> None:
    base = versions(tmp_path, 1, 2)
    empty = versions(tmp_path / "empty")
    out = tmp_path / "models.config"
    for args, message in [
        (["--model-base-path", str(empty), "--model-config-file", str(out)],
         f"error: no numbered version directory in {empty} (export one: chexstack models export --out"),
        (["--model-base-path", str(tmp_path / "nowhere"), "--model-config-file", str(out)],
         f"error: model base path {tmp_path / 'nowhere'} is not a directory"),
        (["--model-base-path", str(base), "--model-config-file", str(out), "--stable", "3"],
         f"error: --stable 3: no version 3 on disk in {base} (versions there: 1, 2)"),
        (["--model-base-path", str(base), "--model-config-file", str(out), "--canary", "7"],
         f"error: --canary 7: no version 7 on disk in {base} (versions there: 1, 2)"),
        (["--model-base-path", str(base)],
         "error: name the file to write: --model-config-file FILE (or CHEXSTACK_MODEL_CONFIG_FILE)"),
        (["--model-base-path", str(base), "--model-config-file", str(tmp_path / "no" / "models.config")],
         f"error: cannot write {tmp_path / 'no' / 'models.config'}: {tmp_path / 'no'} is not a directory"),
    ]:  # fmt: skip
        code, _, stderr = init(*args)
        assert code == 1 and one_error_line(stderr).startswith(message), (args, stderr)
    assert not out.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["promote", "chexnet", "2", "--label", "beta"],
        ["rollback", "chexnet", "--label", "Stable"],
        ["handoff", "chexnet", "2", "--label", "shadow"],
    ],
)
def test_a_bad_label_is_refused_before_serving_or_tensorflow(tmp_path: Path, args: list[str]) -> None:
    # In a fresh interpreter, so that TensorFlow imported by another test does not hide an import here.
    # Nothing listens on the serving port and the models.config does not exist: the label goes first.
    code = f"""
import sys
from typer.testing import CliRunner
from chexstack.cli import app
result = CliRunner().invoke(app, ["models", *{args!r}, "--hub", {str(tmp_path / "hub.sqlite")!r},
    "--model-config-file", {str(tmp_path / "missing.config")!r}, "--serving", "127.0.0.1:{free_port()}"])
print(result.exit_code, "tensorflow" in sys.modules, "grpc" in sys.modules)
sys.stderr.write(result.stderr)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path.cwd())})  # fmt: skip
    assert proc.stdout.split() == ["2", "False", "False"], proc.stdout + proc.stderr
    label = args[args.index("--label") + 1]
    assert one_error_line(proc.stderr) == f"error: bad --label {label!r}: use one of stable, canary"
    assert not (tmp_path / "hub.sqlite").exists()


def test_handoff_refuses_a_version_not_on_disk_and_a_missing_config_before_serving(tmp_path: Path) -> None:
    base = versions(tmp_path, 1, 2)
    config_file = tmp_path / "models.config"
    assert init("--model-base-path", str(base), "--model-config-file", str(config_file))[0] == 0
    before = config_file.read_text()
    hub = tmp_path / "hub.sqlite"
    serving = f"127.0.0.1:{free_port()}"  # nothing listens: none of these gets that far
    env = {"CHEXSTACK_MODEL_CONFIG_FILE": None, "CHEXSTACK_MODEL_BASE_PATH": None}
    for args, message in [
        (["chexnet", "3", "--model-config-file", str(config_file)],
         f"error: cannot hand off 'chexnet' version 3: no version 3 on disk in {base} "
         "(versions there: 1, 2)"),
        (["other", "1", "--model-config-file", str(config_file)],
         f"error: {config_file} has no model 'other' (models: chexnet)"),
        (["chexnet", "2", "--model-config-file", str(tmp_path / "missing.config")],
         f"error: models.config {tmp_path / 'missing.config'} does not exist"),
        (["chexnet", "2"],
         "error: no models.config given: pass --model-config-file or set CHEXSTACK_MODEL_CONFIG_FILE"),
    ]:  # fmt: skip
        result = runner.invoke(
            app, ["models", "handoff", *args, "--hub", str(hub), "--serving", serving], env=env
        )
        assert result.exit_code == 1 and one_error_line(result.stderr) == message, (args, result.output)
    assert config_file.read_text() == before
    with Hub.open(hub) as opened:
        assert opened.list_jobs() == []  # refused before a job was recorded
