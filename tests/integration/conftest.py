"""Integration fixtures: the model (exported once), `chexstack serve` on free ports, the workers' settings
and an uploader for this test's topics."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from chexstack.blobstore import open_store
from chexstack.deid import load_or_create_key
from chexstack.ingest.uploader import Uploader
from chexstack.settings import Limits
from chexstack.topics import Topics
from tests.conftest import free_port

MODEL_NAME = "chexnet"
START_TIMEOUT_S = 120.0


@pytest.fixture(scope="session")
def model_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<tmp>/models/chexnet with versions 1 and 2 (random weights, seeds 1 and 2), exported once."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from chexstack.model import build_chexnet, export_saved_model

    base = tmp_path_factory.mktemp("models") / MODEL_NAME
    for version, seed in ((1, 1), (2, 2)):
        export_saved_model(build_chexnet(seed=seed), base, version, weights_source="random")
    return base


class ServeProcess:
    """A `chexstack serve` subprocess on fixed ports; stop()/start() restart it on the same ports."""

    def __init__(self, args: list[str], model_name: str, log_path: Path, *, by_env: bool = False) -> None:
        self.rest_port, self.grpc_port = free_port(), free_port()
        self.args = args
        self.model_name = model_name
        self.log_path = log_path
        self.by_env = by_env  # the addresses as CHEXSTACK_SERVING(_REST) rather than --serving(-rest)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, wait: bool = True) -> None:
        """Start the process; wait (default) until the model has a version AVAILABLE over REST."""
        cmd = [sys.executable, "-m", "chexstack", "serve"]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        rest = f"127.0.0.1:{self.rest_port}"
        if self.by_env:
            env |= {"CHEXSTACK_SERVING": self.grpc_target, "CHEXSTACK_SERVING_REST": rest}
        else:
            cmd += ["--serving", self.grpc_target, "--serving-rest", rest]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([*cmd, *self.args], stdout=log, stderr=subprocess.STDOUT, env=env)
        if wait:
            self.wait_available()

    def wait_available(self, version: int | None = None) -> None:
        url = f"{self.rest_url}/v1/models/{self.model_name}" + (f"/versions/{version}" if version else "")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"chexstack serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                states = requests.get(url, timeout=5).json().get("model_version_status", [])
                if any(s["state"] == "AVAILABLE" for s in states):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{url} not AVAILABLE after {START_TIMEOUT_S}s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""


ServeFactory = Callable[..., ServeProcess]


def start_server(
    tmp_dir: Path,
    args: list[str] | None = None,
    *,
    model_base: Path | None = None,
    config: str | None = None,
    model_name: str = MODEL_NAME,
) -> ServeProcess:
    """Start `chexstack serve` with `args`, plus either a models.config text or --model-base-path."""
    extra = list(args or [])
    if config is not None:
        config_file = tmp_dir / "models.config"
        config_file.write_text(config)
        extra += ["--model-config-file", str(config_file)]
    elif model_base is not None:
        extra += ["--model-name", model_name, "--model-base-path", str(model_base)]
    server = ServeProcess(extra, model_name, tmp_dir / "serve.log")
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """serve_factory(args=None, *, model_base=None, config=None, model_name="chexnet") -> ServeProcess."""
    started: list[ServeProcess] = []

    def factory(*a: Any, **kw: Any) -> ServeProcess:
        d = tmp_path / f"serve{len(started)}"
        d.mkdir()
        server = start_server(d, *a, **kw)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


def models_config(
    base: Path, *, versions: tuple[int, ...] = (1, 2), labels: dict[str, int] | None = None
) -> str:
    """models.config text for one chexnet model with a specific version policy and labels."""
    policy = " ".join(f"versions: {v}" for v in versions)
    label_text = "".join(f' version_labels {{ key: "{k}" value: {v} }}' for k, v in (labels or {}).items())
    model = f'name: "{MODEL_NAME}" base_path: "{base}" model_platform: "tensorflow"'
    policy_text = f"model_version_policy {{ specific {{ {policy} }} }}"
    return f"model_config_list {{ config {{ {model} {policy_text}{label_text} }} }}\n"


def sample_pixels(n: int, seed: int = 0) -> Any:
    """Deterministic uint8 grey test images [n,224,224,1] (smooth gradients plus noise, like an X-ray)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:224, 0:224]
    images = [
        np.clip(((xx * (i + 1) + yy * 2) % 256) * 0.7 + rng.normal(0, 20, (224, 224)), 0, 255)
        for i in range(n)
    ]
    return np.stack(images).astype(np.uint8)[..., np.newaxis]


@pytest.fixture
def pipeline_env(kafka: str, topics: dict[str, str], store_dir: Path) -> dict[str, str]:
    return {
        "CHEXSTACK_KAFKA": kafka,
        "CHEXSTACK_STORE": str(store_dir),
        "CHEXSTACK_TOPIC_PREFIX": topics["prefix"],
    }


@pytest.fixture
def uploader(kafka: str, topics: dict[str, str], store_dir: Path) -> Uploader:
    store = open_store(str(store_dir))
    return Uploader(
        bootstrap=kafka,
        store=store,
        key=load_or_create_key(store, None),
        limits=Limits(max_bytes=64 * 1024 * 1024, max_pixels=60_000_000),
        topics=Topics(topics["prefix"]),
    )
