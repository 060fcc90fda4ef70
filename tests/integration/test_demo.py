"""`make demo` (scripts/demo.sh) beside a running platform: its own free ports and its own directory,
new uploads every run, nothing left in the checkout."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The platform's published ports (inventory/group_vars/all.yml): Kafka, its controller, serving.
PLATFORM_PORTS = (9092, 9093, 8500, 8501)
ID = re.compile(r"\t([0-9a-f]{32})$", re.MULTILINE)


@pytest.fixture
def platform_ports_taken() -> Iterator[list[int]]:
    """Listen on the platform's ports that are free, as a running `make up` would."""
    with ExitStack() as stack:
        held = []
        for port in PLATFORM_PORTS:
            s = stack.enter_context(socket.socket())
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # already taken, which is as good
            s.listen()
            held.append(port)
        yield held


def _git_status() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _demo(tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHEXSTACK_DEMO_COUNT": "2", "TMPDIR": str(tmp)}
    # The settings the demo sets for itself must not come from the caller's shell.
    for name in ("CHEXSTACK_KAFKA", "CHEXSTACK_SERVING", "CHEXSTACK_SERVING_REST", "CHEXSTACK_HOME"):
        env.pop(name, None)
    return subprocess.run(
        ["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def test_demo_twice_beside_the_platform(platform_ports_taken: list[int], tmp_path: Path) -> None:
    before = _git_status()
    runs = []
    for _ in range(2):
        proc = _demo(tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        runs.append(proc.stdout)
        assert "Traceback" not in proc.stderr, proc.stderr
        # Each run's directory is removed once it succeeded.
        assert list(tmp_path.glob("chexstack-demo.*")) == []
    for out in runs:
        ids = ID.findall(out)
        assert len(ids) >= 2, out
        assert "already uploaded" not in out, out
        kafka = re.search(r"Kafka \(KRaft\) on 127\.0\.0\.1:(\d+)", out)
        assert kafka and int(kafka.group(1)) not in PLATFORM_PORTS, out
    assert _git_status() == before
