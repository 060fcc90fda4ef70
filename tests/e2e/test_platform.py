"""The whole platform on this machine: `site.yml` in bootstrap mode, for real.

An isolated instance (its own data directory, network, compose projects, volumes and host ports:
tests/e2e/platform-vars.yml) so it runs beside a developer's platform. It is the session fixture
`e2e_platform` (tests/conftest.py, helpers in tests/platform_instance.py), deployed once and shared with
the browser tier: `make e2e` runs tests/e2e and tests/browser in one pytest process, so the browser tests
run after this file's last test, on the re-upped platform. The tests run in file order:
  1. the playbook from scratch (the instance's containers and volumes removed first; images are the
     engine's cache), with the smoke play;
  2. every container healthy, every port bound to 127.0.0.1; every container without capabilities,
     with a memory and pids limit, a read-only root filesystem, not root;
  3. synthetic uploads (PNG and DICOM) through the workers, predictions read through the host port;
  4. TF Serving's REST and gRPC APIs;
  4b. the demo model trained on synthetic data by the training play: handed to serving as `stable`,
     recorded in the hub, reachable through the hub's token-protected API;
  5. a second run reports changed=0, and --check runs clean;
  6. `make down` and `make up` again: Kafka data (topics, offsets, predictions) and models survive.
With CHEXSTACK_E2E_REUSE=1 (development only) a running instance is reused and test 1 skips.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from chexstack.labels import LABELS
from chexstack.predictions import read_predictions
from chexstack.serving_client import ServingClient
from tests.platform_instance import (
    DATA_DIR,
    HUB_READ_TOKEN_FILE,
    HUB_TOKEN_FILE,
    JUPYTER_TOKEN_FILE,
    JUPYTER_WORK_DIR_ON_HOST,
    KAFKA,
    SECRETS_DIR,
    TENSORBOARD_URL,
    TOPIC_PREFIX,
    VARS,
    VOLUMES,
    Platform,
    containers,
    docker,
    hub_api,
    hub_read_token,
    hub_token,
    jupyter_container,
    jupyter_token,
    make,
    recap,
    wait_healthy,
)

# The first test deploys the platform (the session fixture's setup counts towards its timeout); the
# second-run and down/up tests run the playbook too.
pytestmark = pytest.mark.timeout(3600)


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


def test_first_run_provisions_everything_and_smoke_passes(e2e_platform: Platform) -> None:
    if e2e_platform.reused or e2e_platform.first_run is None:
        pytest.skip("CHEXSTACK_E2E_REUSE=1: the instance was not deployed from scratch")
    first_run = e2e_platform.first_run
    assert recap(first_run)["failed"] == 0
    assert recap(first_run)["changed"] > 0
    assert "CheXStack is up" in first_run
    assert re.search(r"JupyterLab: +http://127\.0\.0\.1:\d+/lab\?token=<token>", first_run), first_run[-3000:]
    # It says where the token is kept, never the token itself (the output lands in logs and tickets).
    # The YAML result callback folds long lines: compare with whitespace collapsed.
    assert f"(the token is in {JUPYTER_TOKEN_FILE}: sudo cat it)" in " ".join(first_run.split())
    assert jupyter_token() not in first_run


def test_every_container_healthy_on_loopback_only(e2e_platform: Platform) -> None:
    rows = wait_healthy()
    services = {r["Service"] for r in rows}
    assert {"kafka", "serving", "preprocess", "router", "hub", "jupyter", "tensorboard"} <= services
    for r in rows:
        for pub in r.get("Publishers") or []:
            if pub["PublishedPort"]:
                assert pub["URL"] == "127.0.0.1", (r["Name"], pub)


def test_every_container_hardened_and_bounded(e2e_platform: Platform) -> None:
    """No capabilities, no privilege gain, a memory and pids limit, a read-only root, never root."""
    rows = wait_healthy()
    trainer = Path(VARS["chexstack_data_dir"]) / "trainer" / "compose.yaml"
    # The trainer job is not running: its compose model is what `docker compose run` starts.
    job = json.loads(docker("compose", "-f", str(trainer), "--profile", "job", "config", "--format", "json"))
    configs = {"trainer": job["services"]["trainer"]}
    for r in rows:
        info = json.loads(docker("inspect", r["Name"]))[0]
        host, config = info["HostConfig"], info["Config"]
        configs[r["Name"]] = {
            "cap_drop": host["CapDrop"],
            "cap_add": host["CapAdd"],
            "security_opt": host["SecurityOpt"],
            "mem_limit": host["Memory"],
            "pids_limit": host["PidsLimit"],
            "read_only": host["ReadonlyRootfs"],
            "privileged": host["Privileged"],
            "user": config["User"] or "root (image default)",
        }
    for name, c in configs.items():
        assert c["cap_drop"] == ["ALL"] and not c.get("cap_add"), (name, c)
        assert c["security_opt"] == ["no-new-privileges:true"], (name, c)
        assert int(c["mem_limit"]) > 0 and int(c["pids_limit"]) > 0, (name, c)
        assert c["read_only"] is True and not c.get("privileged"), (name, c)
    for name, c in configs.items():
        if name != "trainer":
            # Every image runs as chexstack_uid (USER in its Dockerfile, or serving's `user:`).
            assert c["user"].split(":")[0] in ("10001", "chexstack"), (name, c)


def test_tokens_are_secret_files_and_data_is_private(e2e_platform: Platform) -> None:
    """Tokens reach containers as compose secrets, never as environment variables; data dirs 0750."""
    read_token = hub_read_token()
    tokens = {"jupyter": jupyter_token(), "hub": hub_token(), "hub read": read_token}
    for r in containers():
        env = json.loads(docker("inspect", "--format", "{{json .Config.Env}}", r["Name"]))
        for name, token in tokens.items():
            assert all(token not in variable for variable in env), (r["Name"], name)
    assert SECRETS_DIR.stat().st_mode & 0o777 == 0o700
    for token_file in (JUPYTER_TOKEN_FILE, HUB_TOKEN_FILE, HUB_READ_TOKEN_FILE):
        st = token_file.stat()  # root, and the services' group
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 10001, 0o640), token_file
    for private in (JUPYTER_WORK_DIR_ON_HOST, DATA_DIR / "data"):
        st = private.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (10001, 0o750), private
    for notebook in JUPYTER_WORK_DIR_ON_HOST.rglob("*.ipynb"):
        assert notebook.stat().st_mode & 0o007 == 0, notebook
    # A notebook user holds the hub's read token: it lists, but cannot change what serving serves.
    probe = (
        "import json\n"
        "from chexstack.hub.client import HubClient, HubClientError\n"
        "from chexstack.notebook.env import NotebookSettings\n"
        "s = NotebookSettings.from_env()\n"
        "client = HubClient(s.hub_url, token=s.hub_token, timeout_s=60)\n"
        "jobs = len(client.jobs())\n"
        "try:\n"
        f"    client.rollback({VARS['chexstack_model_name']!r})\n"
        "    status = 200\n"
        "except HubClientError as exc:\n"
        "    status = exc.status\n"
        "print(json.dumps({'jobs': jobs, 'rollback': status, 'token': s.hub_token}))\n"
    )
    out = json.loads(docker("exec", jupyter_container(), "python", "-c", probe).strip().splitlines()[-1])
    assert out["token"] == read_token != hub_token()
    assert out["jobs"] > 0 and out["rollback"] == 403, {k: v for k, v in out.items() if k != "token"}
    # TensorBoard answers only with one of the hub's tokens.
    runs = f"{TENSORBOARD_URL}/data/runs"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(runs, timeout=30)
    assert refused.value.code == 401
    authorized = urllib.request.Request(runs, headers={"Authorization": f"Bearer {read_token}"})
    with urllib.request.urlopen(authorized, timeout=30) as resp:
        assert resp.status == 200 and isinstance(json.load(resp), list)


def test_uploads_get_predictions_through_kafka(e2e_platform: Platform) -> None:
    ids = upload_in_container(count=3, seed=11)
    preds = list(read_predictions(KAFKA, f"{TOPIC_PREFIX}xray.predictions", image_ids=ids, timeout_s=300))
    got = {p.image_id: p for p in preds}
    assert set(got) == set(ids)
    for p in got.values():
        assert p.model_name == VARS["chexstack_model_name"]
        assert len(p.probabilities) == len(LABELS)
        assert p.patient and p.patient.startswith("p-")


def test_serving_rest_and_grpc(e2e_platform: Platform) -> None:
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


def test_demo_model_trained_handed_off_and_in_the_hub(e2e_platform: Platform) -> None:
    token = hub_token()
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
    (model,) = body["models"]
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


def test_second_run_changes_nothing_and_check_mode_is_clean(e2e_platform: Platform) -> None:
    assert recap(make("up"))["changed"] == 0
    assert recap(make("up", "--check"))["failed"] == 0


def test_down_then_up_keeps_kafka_data_and_models(e2e_platform: Platform) -> None:
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
