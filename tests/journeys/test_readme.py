"""The journeys tier: every shell block of the README, run as written, in README order.

Only environment variables move a block's ports and state (CHEXSTACK_KAFKA, CHEXSTACK_SERVING,
CHEXSTACK_HOME, ...), so that it runs beside a running platform; the text is not edited. A block runs as
a user would paste it into the shell the blocks before it left (the venv activated), with `set -e -o
pipefail`, and fails the test when any command fails. What a block leaves running (`&` jobs, brokers) is
stopped after it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, free_port_pair
from tests.journeys.readme import KINDS, Block, blocks

REPO = Path(__file__).resolve().parents[2]
BLOCKS = blocks(REPO / "README.md")
BLOCK_TIMEOUT_S = 1200
# The caller's settings must not leak into a journey; the download cache is kept (Kafka's jars).
KEPT = {"CHEXSTACK_CACHE"}
# Marks what a journey started, in its environment (see _brokers).
MARKER = "JOURNEY_RUN"


def test_every_block_says_where_it_runs() -> None:
    assert BLOCKS, "README.md has no ```bash block"
    for block in BLOCKS:
        assert block.kind in KINDS, f"{block.name}: unknown journey kind {block.kind!r} (one of {KINDS})"


def test_ci_blocks_are_only_what_ci_runs() -> None:
    # `make up` and `make test` are what CI itself runs around every tier: nothing else may hide here.
    for block in (b for b in BLOCKS if b.kind == "ci"):
        for line in block.text.splitlines():
            command = line.split("#", 1)[0].strip()
            assert command in ("", "make up", "make test"), f"{block.name}: {line!r} is not `make up|test`"


# What the README's blocks write outside $CHEXSTACK_HOME: its /tmp scratch paths, removed first so every
# run starts as a new user's machine would, and the walkthrough's git-ignored files in the checkout,
# which may be a developer's own: the tier refuses to start beside them and removes its own at the end.
SCRATCH = [Path(p) for p in ("/tmp/xrays", "/tmp/uploads.tsv", "/tmp/kafka-auth", "/tmp/synthetic",
                             "/tmp/shards", "/tmp/job")]  # fmt: skip
CHECKOUT_OUTPUTS = [REPO / "models" / "chexnet", REPO / "models.config", REPO / "models.config.lock"]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def journey_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    present = [str(p) for p in CHECKOUT_OUTPUTS if p.exists() or p.is_symlink()]
    if present:
        pytest.fail(
            "the README walkthrough's outputs are in the checkout; move them away first: "
            + ", ".join(present)
        )
    for path in SCRATCH:
        _remove(path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHEXSTACK_") or k in KEPT}
    venv = REPO / ".venv"
    hub_port, ingest_port = free_port(), free_port()
    env.update(
        PATH=f"{venv / 'bin'}:{env.get('PATH', '')}",  # `source .venv/bin/activate` of an earlier block
        VIRTUAL_ENV=str(venv),
        CHEXSTACK_HOME=str(tmp_path_factory.mktemp("journey-home")),
        CHEXSTACK_KAFKA=f"127.0.0.1:{free_port_pair()}",
        CHEXSTACK_SERVING=f"127.0.0.1:{free_port()}",
        CHEXSTACK_SERVING_REST=f"127.0.0.1:{free_port()}",
        CHEXSTACK_HUB_PORT=str(hub_port),
        CHEXSTACK_HUB_URL=f"http://127.0.0.1:{hub_port}",
        CHEXSTACK_INGEST_PORT=str(ingest_port),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env[MARKER] = uuid.uuid4().hex
    try:
        yield env
    finally:
        for path in CHECKOUT_OUTPUTS:
            _remove(path)


def _brokers(marker: str) -> set[int]:
    """The Kafka brokers the journeys started (`kafka up` runs them in their own session), found by the
    marker in their environment: a broker of another test or of the platform is not touched."""
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (
                    b"kafka.Kafka" in (proc / "cmdline").read_bytes()
                    and marker.encode() in (proc / "environ").read_bytes()
                ):
                    found.add(int(proc.name))
            except OSError:
                continue
    return found


def _stop(pids: set[int], group: int | None) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if group is not None:
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                group = None
        for pid in set(pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pids.discard(pid)
        deadline = time.monotonic() + 30
        while (pids or group is not None) and time.monotonic() < deadline:
            pids = {p for p in pids if Path(f"/proc/{p}").exists()}
            if group is not None:
                try:
                    os.killpg(group, 0)
                except ProcessLookupError:
                    group = None
            time.sleep(0.2)


def run_block(block: Block, env: dict[str, str], log: Path) -> None:
    with log.open("w") as out:
        # Output to a file, not a pipe: an `&` job keeps a pipe open after the block ends.
        proc = subprocess.Popen(
            ["bash", "-c", "set -e -o pipefail\n" + block.text],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            _stop(_brokers(f"{MARKER}={env[MARKER]}"), proc.pid)
    output = log.read_text(errors="replace")[-12000:]
    if rc is None:
        pytest.fail(f"{block.name} ran over {BLOCK_TIMEOUT_S} s:\n{block.text}--- output ---\n{output}")
    assert rc == 0, f"{block.name} failed (exit {rc}):\n{block.text}--- output ---\n{output}"


@pytest.mark.timeout(BLOCK_TIMEOUT_S + 120)
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "local"], ids=lambda b: f"line{b.line}")
def test_local_block(block: Block, journey_env: dict[str, str], tmp_path: Path) -> None:
    run_block(block, journey_env, tmp_path / "block.log")
