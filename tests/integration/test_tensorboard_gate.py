"""Real TensorBoard behind TokenGate (`python -m chexstack.tensorboard_gate`), as the platform runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from chexstack.tensorboard_gate import COOKIE
from tests.conftest import free_port

pytestmark = pytest.mark.integration

READ = "tb-read-" + "0123456789abcdef" * 2


@pytest.fixture
def board(tmp_path: Path) -> Iterator[str]:
    logs = tmp_path / "logs"
    import tensorflow as tf

    with tf.summary.create_file_writer(str(logs / "run-1")).as_default():
        for step in range(3):
            tf.summary.scalar("epoch_loss", 1.0 / (step + 1), step=step)
    token_file = tmp_path / "hub-read-token"
    token_file.write_text(READ + "\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHEXSTACK_HUB_")}
    env["CHEXSTACK_HUB_READ_TOKEN_FILE"] = str(token_file)
    log = (tmp_path / "tensorboard.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chexstack.tensorboard_gate", "--logdir", str(logs), "--host", "127.0.0.1",
         "--port", str(port), "--reload_interval", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "tensorboard.log").read_text()
            try:
                requests.get(url + "/data/logdir", timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, (tmp_path / "tensorboard.log").read_text()
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_tensorboard_answers_only_with_the_token(board: str) -> None:
    refused = requests.get(board + "/data/runs", timeout=10)
    assert refused.status_code == 401 and "hub-read-token" in refused.text
    assert requests.get(board + "/", timeout=10).status_code == 401

    bearer = {"Authorization": f"Bearer {READ}"}
    assert requests.get(board + "/data/logdir", headers=bearer, timeout=10).json()["logdir"].endswith("logs")
    deadline = time.monotonic() + 60
    while "run-1" not in requests.get(board + "/data/runs", headers=bearer, timeout=10).json():
        assert time.monotonic() < deadline
        time.sleep(1)

    # A browser: ?token= once, then the cookie; the page is TensorBoard's own.
    browser = requests.Session()
    login = browser.get(board + f"/?token={READ}", timeout=10, allow_redirects=False)
    assert login.status_code == 303 and login.headers["Location"] == "/"
    assert browser.cookies.get(COOKIE) == READ
    page = browser.get(board + "/", timeout=10)
    assert page.status_code == 200 and "<tb-webapp>" in page.text, page.text[:500]
    query = {"run": "run-1", "tag": "epoch_loss"}
    scalars = browser.get(board + "/data/plugin/scalars/scalars", params=query, timeout=10)
    assert [step for _, step, _ in scalars.json()] == [0, 1, 2]
