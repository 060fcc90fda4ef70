"""Start the real worker processes (`python -m chexstack preprocess|route`) for integration tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    exits: list[int] = field(default_factory=list)  # statuses of the runs that ended on their own

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.text()

    def restart_if_exited(self) -> bool:
        """Like compose's `restart: unless-stopped`: start the worker again if it ended on its own."""
        code = self.proc.poll()
        if code is None:
            return False
        self.exits.append(code)
        self.proc = _spawn(self.argv, self.env, self.log)
        return True

    def consumed(self) -> int:
        """Messages this worker processed, from the stats line it logs when it stops."""
        m = re.search(r"stopped: WorkerStats\(batches=\d+, consumed=(\d+)", self.text())
        return int(m.group(1)) if m else -1


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)


@dataclass
class Workers:
    env: dict[str, str]
    logdir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, command: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        """Start `chexstack <command> <args>`; `env` adds to the shared environment (e.g. a Kafka user)."""
        n = sum(1 for p in self.procs if p.name.startswith(command))
        log = self.logdir / f"{command}-{n}.log"
        argv = [sys.executable, "-m", "chexstack", command, *args]
        env = {**os.environ, **self.env, **(env or {})}
        p = Proc(f"{command}-{n}", _spawn(argv, env, log), log, argv, env)
        self.procs.append(p)
        return p

    def wait_assigned(self, procs: list[Proc], timeout_s: float = 120) -> None:
        """Wait until each worker owns at least one partition of its input topic."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(re.search(r"assigned \[\d", p.text()) for p in procs):
                return
            for p in procs:
                if p.proc.poll() is not None:
                    raise AssertionError(f"{p.name} exited with {p.proc.returncode}:\n{p.text()[-3000:]}")
            time.sleep(0.3)
        raise AssertionError("workers never got partitions:\n" + "\n".join(p.text()[-2000:] for p in procs))

    def stop_all(self) -> None:
        for p in self.procs:
            p.stop()


@contextmanager
def running_workers(env: dict[str, str], logdir: Path) -> Iterator[Workers]:
    w = Workers({"CHEXSTACK_LOG_LEVEL": "INFO", "TF_CPP_MIN_LOG_LEVEL": "2", **env}, logdir)
    try:
        yield w
    finally:
        w.stop_all()
