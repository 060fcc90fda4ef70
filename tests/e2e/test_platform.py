"""The whole platform on this machine: `site.yml` in bootstrap mode, for real.

An isolated instance (its own data directory, network, compose projects, volumes and host ports:
tests/e2e/platform-vars.yml) so it runs beside a developer's platform. The tests run in file order and
share one deployment:
  1. the playbook from scratch (the instance's containers and volumes removed first; images are the
     engine's cache), with the smoke play;
  2. every container healthy, every port bound to 127.0.0.1;
  3. synthetic uploads (PNG and DICOM) through the workers, predictions read through the host port;
  4. TF Serving's REST and gRPC APIs;
  4b. the demo model trained on synthetic data by the training play: handed to serving as `stable`,
     recorded in the hub, reachable through the hub's token-protected API;
  5. a second run reports changed=0, and --check runs clean;
  6. `make down` and `make up` again: Kafka data (topics, offsets, predictions) and models survive.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from chexstack.labels import LABELS
from chexstack.predictions import read_predictions
from chexstack.serving_client import ServingClient

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
VARS_FILE = Path(__file__).with_name("platform-vars.yml")
VARS = yaml.safe_load(VARS_FILE.read_text())
ARGS = f"-e @{VARS_FILE} -e chexstack_image_source=bootstrap"
PROJECTS = [
    VARS[k]
    for k in (
        "kafka_project_name",
        "serving_project_name",
        "workers_project_name",
        "hub_project_name",
        "jupyter_project_name",
        "tensorboard_project_name",
    )
]
VOLUMES = [v for k, v in VARS.items() if k.endswith("_volume")]
KAFKA = f"127.0.0.1:{VARS['chexstack_kafka_port']}"
TOPIC_PREFIX = VARS.get("chexstack_topic_prefix", "")


def _env() -> dict[str, str]:
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", NO_COLOR="1", PY_COLORS="0")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def make(target: str, *extra: str, timeout: int = 3600) -> str:
    """`make up` / `make down` of the repository with the instance's variables; returns the output."""
    t0 = time.monotonic()
    proc = subprocess.run(
        ["make", "-C", str(ROOT), target, f"ARGS={ARGS} {' '.join(extra)}"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"make {target} exited {proc.returncode}:\n{out[-10000:]}"
    print(f"make {target} {' '.join(extra)}: {time.monotonic() - t0:.0f} s")
    return out


def recap(out: str) -> dict[str, int]:
    m = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out)
    assert m, out[-3000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups()), strict=True))


def docker(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if check:
        assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def containers() -> list[dict[str, object]]:
    rows = []
    for project in PROJECTS:
        out = docker("compose", "-p", project, "ps", "--all", "--format", "json")
        rows += [json.loads(line) for line in out.splitlines() if line.strip()]
    return rows


def wait_healthy(timeout_s: float = 300) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = containers()
        if rows and all(r["State"] == "running" and r["Health"] in ("healthy", "") for r in rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(json.dumps(rows, indent=1))
        time.sleep(3)


def python_image() -> str:
    """The chexstack/python image the workers run."""
    out = docker("compose", "-p", VARS["workers_project_name"], "images", "--format", "json")
    return next(f"{i['Repository']}:{i['Tag']}" for i in json.loads(out))


def model_versions() -> str:
    name = VARS["chexstack_model_name"]
    return docker(
        "run",
        "--rm",
        "-v",
        f"{VARS['chexstack_models_volume']}:/m",
        "--entrypoint",
        "ls",
        python_image(),
        f"/m/{name}",
    )


def upload_in_container(count: int, seed: int) -> list[str]:
    """Synthetic PNG and DICOM files uploaded inside a one-shot chexstack container on the network."""
    ref = python_image()
    out = docker(
        "run",
        "--rm",
        "--network",
        VARS["chexstack_network"],
        "--volume",
        f"{VARS['chexstack_blobs_volume']}:/var/lib/chexstack/blobs",
        "--env",
        "CHEXSTACK_KAFKA=kafka:9092",
        "--env",
        f"CHEXSTACK_TOPIC_PREFIX={TOPIC_PREFIX}",
        "--env",
        "CHEXSTACK_STORE=/var/lib/chexstack/blobs",
        ref,
        "bash",
        "-c",
        f"chexstack data synth --out /tmp/s --count {count} --seed {seed} >/dev/null && "
        "chexstack upload /tmp/s/images /tmp/s/dicom --patient-id MRN-E2E-0001",
    )
    ids = [line.split("\t")[1] for line in out.splitlines() if "\t" in line]
    assert ids and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), out
    return ids


def remove_instance() -> None:
    """The instance's containers, volumes and files; the images stay (the engine's cache)."""
    for project in [*PROJECTS, VARS["trainer_project_name"]]:
        docker("compose", "-p", project, "down", "--volumes", "--remove-orphans", check=False)
    for volume in VOLUMES:
        docker("volume", "rm", "-f", volume, check=False)
    docker("network", "rm", VARS["chexstack_network"], check=False)
    subprocess.run(["rm", "-rf", VARS["chexstack_data_dir"]], check=True)


@pytest.fixture(scope="module")
def first_run() -> Iterator[str]:
    remove_instance()  # from scratch
    yield make("up")
    remove_instance()


def test_first_run_provisions_everything_and_smoke_passes(first_run: str) -> None:
    assert recap(first_run)["failed"] == 0
    assert recap(first_run)["changed"] > 0
    assert "CheXStack is up" in first_run
    assert re.search(r"JupyterLab: +http://127\.0\.0\.1:\d+/lab\?token=[0-9a-f]{32,}", first_run), first_run[
        -3000:
    ]


def test_every_container_healthy_on_loopback_only(first_run: str) -> None:
    rows = wait_healthy()
    services = {r["Service"] for r in rows}
    assert {"kafka", "serving", "preprocess", "router", "hub", "jupyter", "tensorboard"} <= services
    for r in rows:
        for pub in r.get("Publishers") or []:  # type: ignore[union-attr]
            if pub["PublishedPort"]:
                assert pub["URL"] == "127.0.0.1", (r["Name"], pub)


def test_uploads_get_predictions_through_kafka(first_run: str) -> None:
    ids = upload_in_container(count=3, seed=11)
    preds = list(read_predictions(KAFKA, f"{TOPIC_PREFIX}xray.predictions", image_ids=ids, timeout_s=300))
    got = {p.image_id: p for p in preds}
    assert set(got) == set(ids)
    for p in got.values():
        assert p.model_name == VARS["chexstack_model_name"]
        assert len(p.probabilities) == len(LABELS)
        assert p.patient and p.patient.startswith("p-")


def test_serving_rest_and_grpc(first_run: str) -> None:
    name = VARS["chexstack_model_name"]
    rest = f"http://127.0.0.1:{VARS['chexstack_serving_rest_port']}/v1/models/{name}"
    status = json.load(urllib.request.urlopen(rest, timeout=30))
    assert any(v["state"] == "AVAILABLE" for v in status["model_version_status"])
    body = json.dumps({"instances": np.zeros((2, 224, 224, 1), np.uint8).tolist()}).encode()
    req = urllib.request.Request(f"{rest}:predict", data=body, headers={"Content-Type": "application/json"})
    preds = json.load(urllib.request.urlopen(req, timeout=120))["predictions"]
    assert np.asarray(preds).shape == (2, len(LABELS))

    with ServingClient(f"127.0.0.1:{VARS['chexstack_serving_grpc_port']}", timeout_s=120) as client:
        assert "AVAILABLE" in client.model_status(name).values()
        probs, version = client.predict(name, np.zeros((2, 224, 224, 1), np.uint8))
    assert probs.shape == (2, len(LABELS)) and version >= 1
    np.testing.assert_allclose(probs, np.asarray(preds), atol=1e-5)


def hub_api(path: str, token: str | None) -> tuple[int, dict[str, object]]:
    url = f"http://127.0.0.1:{VARS['chexstack_hub_port']}{path}"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_demo_model_trained_handed_off_and_in_the_hub(first_run: str) -> None:
    token_file = Path(VARS["chexstack_data_dir"], "secrets", "hub-token")
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    token = token_file.read_text().strip()
    status, body = hub_api("/v1/jobs?kind=train", None)
    assert status == 401 and "error" in body

    status, body = hub_api("/v1/jobs?kind=train", token)
    assert status == 200
    jobs = body["jobs"]
    assert isinstance(jobs, list) and len(jobs) == 1, jobs
    job = jobs[0]
    assert job["status"] == "succeeded", job
    assert job["project"] == "demo"
    assert job["spec"]["config"]["image_size"] == 64
    assert job["spec"]["dataset"]["checksum"]
    version = job["model_version"]
    assert isinstance(version, int) and version >= 2  # version 1 is the untrained bootstrap export
    # Synthetic findings are learnable: the short CPU run is far better than chance (measured value).
    assert job["results"]["mean_auroc"] > 0.75, job["results"]

    name = VARS["chexstack_model_name"]
    status, body = hub_api(f"/v1/models?name={name}", token)
    assert status == 200, body
    (model,) = body["models"]  # type: ignore[misc]
    assert model["labels"]["stable"] == version, model
    by_version = {v["version"]: v for v in model["versions"]}
    assert by_version[version]["state"] == "AVAILABLE"
    assert by_version[version]["train_job"] == job["id"]

    # Serving answers `stable` with the trained version, and it is not the untrained one's answer.
    pixels = np.zeros((1, 224, 224, 1), np.uint8)
    with ServingClient(f"127.0.0.1:{VARS['chexstack_serving_grpc_port']}", timeout_s=120) as client:
        trained, answered = client.predict(name, pixels, label="stable")
        untrained, _ = client.predict(name, pixels, version=1)
    assert answered == version
    assert not np.allclose(trained, untrained, atol=1e-3)


def test_second_run_changes_nothing_and_check_mode_is_clean(first_run: str) -> None:
    assert recap(make("up"))["changed"] == 0
    assert recap(make("up", "--check"))["failed"] == 0


def test_down_then_up_keeps_kafka_data_and_models(first_run: str) -> None:
    before = upload_in_container(count=1, seed=12)
    list(read_predictions(KAFKA, f"{TOPIC_PREFIX}xray.predictions", image_ids=before, timeout_s=300))
    models = model_versions()
    assert re.search(r"^\d+$", models, re.M), models

    make("down")
    assert all(r["State"] != "running" for r in containers())
    for volume in VOLUMES:
        docker("volume", "inspect", volume)

    make("up")
    wait_healthy()
    # The earlier prediction is still on the topic, and the pipeline goes on with new uploads.
    old = list(read_predictions(KAFKA, f"{TOPIC_PREFIX}xray.predictions", image_ids=before, timeout_s=60))
    assert [p.image_id for p in old] == before
    after = upload_in_container(count=1, seed=13)
    assert (
        len(list(read_predictions(KAFKA, f"{TOPIC_PREFIX}xray.predictions", image_ids=after, timeout_s=300)))
        == 1
    )
    assert model_versions() == models
