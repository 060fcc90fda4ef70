"""The worker watchdog ends a process whose loop stopped beating, and only then."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from chexstack.workers.base import STALLED_EXIT_CODE, Watchdog


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )


def test_a_loop_that_stops_beating_is_ended_with_the_stalled_status() -> None:
    proc = run_python(
        """
        import logging, time
        from chexstack.workers.base import Watchdog
        logging.basicConfig(level=logging.INFO)
        dog = Watchdog("stuck-worker", 0.5)
        dog.start()
        time.sleep(30)  # a call that never returns
        print("not reached")
        """
    )
    assert proc.returncode == STALLED_EXIT_CODE, proc.stderr
    assert "stuck-worker: no progress for" in proc.stderr
    assert "not reached" not in proc.stdout


def test_a_loop_that_keeps_beating_is_left_alone() -> None:
    proc = run_python(
        """
        import time
        from chexstack.workers.base import Watchdog
        dog = Watchdog("busy-worker", 0.5)
        dog.start()
        end = time.monotonic() + 2  # four times the stall timeout
        while time.monotonic() < end:
            dog.beat()
            time.sleep(0.05)
        dog.stop()
        print("finished")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "finished"


@pytest.mark.parametrize("timeout_s", [0.0, -1.0])
def test_the_stall_timeout_must_be_positive(timeout_s: float) -> None:
    with pytest.raises(ValueError, match="stall timeout must be positive"):
        Watchdog("w", timeout_s)
