"""Bad input to the CLI is one `error: ...` line naming what and why, before anything is contacted; and
output people can read: --help at 100 columns into a pipe, the `predictions --follow` rows.

The commands run as the user runs them (`python -m chexstack`, a real process: its stderr is what the
terminal would show). Kafka's address is a closed port: a command that got as far as Kafka would say so.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chexstack.bus import LibrdkafkaLogger
from chexstack.cli import _TF_BANNER
from chexstack.commands.predictions import FOLLOW_COLUMNS, follow_line

NOWHERE = "127.0.0.1:1"


def chexstack(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("CHEXSTACK_", "TERMINAL_WIDTH", "COLUMNS"))
    }
    return subprocess.run(
        [sys.executable, "-m", "chexstack", *args],
        env=base | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,  # a hang fails the test
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("weights", "why"),
    [
        (["stable=0"], "bad weights stable=0: every weight is 0"),
        (["stable=0", "canary=0"], "bad weights stable=0, canary=0: every weight is 0"),
        (["stable=-5"], "bad weight 'stable=-5': a weight is 0 or more"),
        (["stable=x"], "bad weight 'stable=x': expected NAME=INTEGER"),
        (["stable=9.5"], "bad weight 'stable=9.5': expected NAME=INTEGER"),
        (["=3"], "bad weight '=3': expected NAME=INTEGER"),
        (["stable"], "bad weight 'stable': expected NAME=INTEGER"),
        (["stable=1", "stable=2"], "bad weight 'stable=2': stable is given twice"),
    ],
)
def test_ab_set_refuses_bad_weights_in_one_line_before_asking_anyone(
    weights: list[str], why: str, tmp_path: Path
) -> None:
    # A hub at the default place would be opened, serving and Kafka asked: none of them is reached.
    result = chexstack(
        "ab",
        "set",
        "chexnet",
        *weights,
        "--kafka",
        NOWHERE,
        "--serving",
        NOWHERE,
        CHEXSTACK_HOME=str(tmp_path),
    )
    assert result.returncode == 2, result.stderr
    assert one_error_line(result).startswith(f"error: {why}")
    assert not (tmp_path / "hub").exists()


def test_route_refuses_bad_default_weights_in_one_line() -> None:
    result = chexstack("route", "--ab-weights", "stable=-1", "--kafka", NOWHERE)
    assert result.returncode == 2
    assert one_error_line(result).startswith("error: --ab-weights: bad weight 'stable=-1'")


def test_upload_names_a_missing_path_before_contacting_kafka(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"not even an image")
    result = chexstack("upload", "a.png", "missing.png", "--kafka", NOWHERE, cwd=tmp_path)
    assert result.returncode == 2
    assert one_error_line(result) == "error: missing.png: no such file"
    assert result.stdout == ""  # nothing was uploaded, not even a.png


def test_upload_names_a_path_that_is_neither_a_file_nor_a_directory(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    result = chexstack("upload", str(tmp_path / "pipe.png"), "--kafka", NOWHERE)
    assert result.returncode == 2
    assert (
        one_error_line(result)
        == f"error: {tmp_path / 'pipe.png'}: not a regular file (nor a directory to walk)"
    )


def test_a_bad_log_level_is_one_line() -> None:
    result = chexstack("dlq", "list", "--kafka", NOWHERE, CHEXSTACK_LOG_LEVEL="LOUD")
    assert result.returncode == 2
    assert "CHEXSTACK_LOG_LEVEL=LOUD: not a log level" in one_error_line(result)


@pytest.mark.parametrize("rich", ["1", "0"])
def test_help_is_100_columns_wide_into_a_pipe(rich: str) -> None:
    for args in (["--help"], ["upload", "--help"], ["predictions", "--help"]):
        result = chexstack(*args, TYPER_USE_RICH=rich)
        assert result.returncode == 0, result.stderr
        widths = [len(line) for line in result.stdout.splitlines()]
        # Wider than click's and rich's 80 columns, never wider than 100.
        assert max(widths) <= 100 and max(widths) > 80, (args, rich, result.stdout)
    assert "--verbose" in chexstack("--help", TYPER_USE_RICH=rich).stdout


def test_follow_rows_keep_their_columns() -> None:
    header = follow_line([name for name, _ in FOLLOW_COLUMNS])
    row = follow_line(["2026-12-06 20:00:00", "a" * 32, "chexnet:12", "stable", "Effusion 0.91, Mass 0.60"])
    long = follow_line(
        [
            "2026-12-06 20:00:01",
            "b" * 300,
            "a-very-long-model-name:3",
            "canary-long",
            "dead letter: why\nit failed",
        ]
    )
    for name in ("image id", "model:version", "variant"):
        start = header.index(name)
        # Every row's cell starts under its header, whatever the length of the cells before it.
        assert row[start - 2 : start] == "  " and long[start - 2 : start] == "  ", (row, long)
    assert row.split()[2] == "a" * 32 and "Effusion 0.91, Mass 0.60" in row
    assert "b" * 31 + "…" in long and "a-very-long-mod…" in long and "dead letter: why it failed" in long


def test_librdkafka_lines_are_debug_whatever_their_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="chexstack.librdkafka")
    LibrdkafkaLogger().log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "Connect failed")
    (record,) = caplog.records
    assert (
        record.levelno == logging.DEBUG and record.getMessage() == "FAIL [rdkafka#consumer-1] Connect failed"
    )


def test_tensorflow_banner_lines_are_recognised_and_others_are_not() -> None:
    banner = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796587374.817168    2019 port.cc:153] oneDNN custom operations are on.",
        "E0000 00:00:1733966440.123456   12345 cuda_dnn.cc:8310] Unable to register cuDNN factory",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow",
    ]
    assert all(_TF_BANNER.match(line) for line in banner)
    kept = ["Traceback (most recent call last):", "ImportError: libcudart.so.12", "error: something"]
    assert not any(_TF_BANNER.match(line) for line in kept)
