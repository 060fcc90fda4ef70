"""`chexstack serve`'s bad inputs fail at once, in one line, before TensorFlow is imported.

Each case runs the real CLI in a fresh interpreter (this one may have imported TensorFlow already) and
that interpreter reports whether TensorFlow got imported. Serving itself, on the addresses these flags
and variables name, is tested in tests/integration/test_serve_rest.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chexstack.settings import DEFAULT_SERVING, DEFAULT_SERVING_REST

RUN_CLI = """
import sys
from chexstack.cli import app
try:
    app(sys.argv[1:], prog_name="chexstack")
finally:
    print("tensorflow imported:", "tensorflow" in sys.modules)
"""


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`chexstack serve ARGS` with `env`, on free ports unless they say otherwise."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHEXSTACK_")}
    clean |= {"CHEXSTACK_SERVING": "127.0.0.1:0", "CHEXSTACK_SERVING_REST": "127.0.0.1:0"}
    return subprocess.run(
        [sys.executable, "-c", RUN_CLI, "serve", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=120,
    )


def assert_refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    """Exit 2 with exactly `message` on stderr, no traceback, and TensorFlow never imported."""
    assert (result.returncode, result.stderr) == (2, message + "\n")
    assert "tensorflow imported: False" in result.stdout


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_missing_model_config_file_fails_at_once(tmp_path: Path) -> None:
    missing = tmp_path / "missing.config"
    assert_refused(
        serve("--model-config-file", str(missing)), f"error: --model-config-file {missing}: no such file"
    )


def test_a_directory_as_model_config_file_is_named(tmp_path: Path) -> None:
    assert_refused(
        serve("--model-config-file", str(tmp_path)),
        f"error: --model-config-file {tmp_path}: is a directory, not a file",
    )


def test_a_malformed_model_config_names_the_file_and_the_field(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text("model_config_list { bogus: 1 }\n")
    result = serve("--model-config-file", str(config))
    assert_refused(result, result.stderr.rstrip("\n"))  # one line, exit 2, before TensorFlow
    assert result.stderr.startswith(f"error: --model-config-file {config}: invalid models.config:")
    assert '"bogus"' in result.stderr


@pytest.mark.parametrize(
    ("flag", "other"),
    [("--batching-parameters-file", ["--enable-batching"]), ("--monitoring-config-file", [])],
)
def test_the_other_missing_files_fail_at_once(tmp_path: Path, flag: str, other: list[str]) -> None:
    missing = tmp_path / "missing.config"
    result = serve("--model-base-path", str(tmp_path), *other, flag, str(missing))
    assert_refused(result, f"error: {flag} {missing}: no such file")


def test_a_config_file_and_a_base_path_flag_conflict(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text("model_config_list {}\n")
    result = serve("--model-config-file", str(config), "--model-base-path", str(tmp_path))
    assert_refused(
        result, "error: use either --model-config-file or --model-name/--model-base-path, not both"
    )


def test_the_shared_base_path_variable_gives_way_to_a_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.config"
    result = serve("--model-config-file", str(missing), env={"CHEXSTACK_MODEL_BASE_PATH": str(tmp_path)})
    assert_refused(result, f"error: --model-config-file {missing}: no such file")  # not "use either"


def test_the_shared_config_file_variable_gives_way_to_a_base_path(tmp_path: Path, taken_port: int) -> None:
    missing = tmp_path / "missing.config"
    address = f"127.0.0.1:{taken_port}"
    env = {"CHEXSTACK_MODEL_CONFIG_FILE": str(missing)}
    result = serve("--model-base-path", str(tmp_path), "--serving", address, env=env)
    # The bind is checked after the files: the missing config file was not read.
    assert_refused(result, f"error: --serving {address}: cannot bind it: Address already in use")


@pytest.mark.parametrize("value", ["8500", "127.0.0.1", ":8500", "127.0.0.1:http", "127.0.0.1:65536"])
@pytest.mark.parametrize("flag", ["--serving", "--serving-rest"])
def test_an_address_that_is_not_host_port_is_refused(tmp_path: Path, flag: str, value: str) -> None:
    result = serve("--model-base-path", str(tmp_path), flag, value)
    assert_refused(result, f"error: {flag} {value!r}: expected HOST:PORT with a port from 0 to 65535")


@pytest.mark.parametrize(
    ("flag", "variable"), [("--serving", "CHEXSTACK_SERVING"), ("--serving-rest", "CHEXSTACK_SERVING_REST")]
)
def test_a_taken_port_is_named_by_its_flag_from_the_flag_or_the_variable(
    tmp_path: Path, taken_port: int, flag: str, variable: str
) -> None:
    address = f"127.0.0.1:{taken_port}"
    message = f"error: {flag} {address}: cannot bind it: Address already in use"
    assert_refused(serve("--model-base-path", str(tmp_path), flag, address), message)
    assert_refused(serve("--model-base-path", str(tmp_path), env={variable: address}), message)


@pytest.mark.parametrize("flag", ["--port", "--rest-api-port", "--host"])
def test_the_removed_flags_are_refused(tmp_path: Path, flag: str) -> None:
    result = serve("--model-base-path", str(tmp_path), flag, "8500")
    assert result.returncode == 2
    assert f"No such option: {flag}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "tensorflow imported: False" in result.stdout


@pytest.mark.parametrize(
    ("variable", "instead"),
    [
        ("CHEXSTACK_PORT", "CHEXSTACK_SERVING=HOST:PORT"),
        ("CHEXSTACK_REST_API_PORT", "CHEXSTACK_SERVING_REST=HOST:PORT"),
        ("CHEXSTACK_HOST", "CHEXSTACK_SERVING and CHEXSTACK_SERVING_REST (HOST:PORT each)"),
    ],
)
def test_the_removed_variables_are_refused_not_ignored(tmp_path: Path, variable: str, instead: str) -> None:
    result = serve("--model-base-path", str(tmp_path), env={variable: "8500"})
    assert_refused(result, f"error: {variable} is no longer read: set {instead} instead")


def test_the_defaults_are_the_shared_serving_settings() -> None:
    from typer.main import get_command

    from chexstack.cli import app

    params = {p.opts[0]: p for p in get_command(app).commands["serve"].params}  # type: ignore[attr-defined]
    assert (params["--serving"].default, params["--serving"].envvar) == (DEFAULT_SERVING, "CHEXSTACK_SERVING")
    assert (params["--serving-rest"].default, params["--serving-rest"].envvar) == (
        DEFAULT_SERVING_REST,
        "CHEXSTACK_SERVING_REST",
    )


def test_polling_logs_a_lasting_problem_once_not_every_poll(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A base path that does not exist and a models.config that was deleted: each said once over many polls,
    the base path again when what is there changes. (A real serve: tests/integration/test_serve_rest.py.)"""
    import time

    from chexstack.serve.options import ServeOptions
    from chexstack.serve.registry import Registry
    from chexstack.serve.server import Poller

    base = tmp_path / "chexnet"
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "chexnet" base_path: "{base}" }} }}\n')
    options = ServeOptions(
        model_config_file=config, model_name="chexnet", model_base_path=None, grpc=("127.0.0.1", 0),
        rest=("127.0.0.1", 0), model_config_file_poll_wait_seconds=0.01, file_system_poll_wait_seconds=0.01,
        enable_batching=False, batching_parameters_file=None, monitoring_config_file=None,
    )  # fmt: skip
    registry = Registry()
    registry.apply_config(options.initial_config())
    poller = Poller(registry, options)
    poller.start()
    try:
        config.unlink()
        time.sleep(0.5)  # about 50 polls of each kind
        base.mkdir()
        time.sleep(0.5)
    finally:
        poller.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert sum(f"base path {base} does not exist" in m for m in messages) == 1
    assert sum(f"base path {base} holds no numbered version directory" in m for m in messages) == 1
    assert sum(f"--model-config-file {config}: no such file" in m for m in messages) == 1
