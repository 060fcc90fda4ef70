"""The model information hub against a real `chexstack serve`, a real broker and a real router process.

Labels are moved through the service (as the API does), the CLI and the HTTP API; serving, the router's
predictions and the hub database must all agree afterwards, also across restarts of the API process.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from chexstack.bus import make_producer, produce_sync
from chexstack.hub import modelsconfig
from chexstack.hub.api import HubServer
from chexstack.hub.client import HubClient, HubClientError
from chexstack.hub.handoff import handoff, label_version
from chexstack.hub.service import Conflict, Service, Settings
from chexstack.hub.store import Hub
from chexstack.messages import Preprocessed, now_ms
from chexstack.serving_client import ServingClient
from chexstack.topics import Topics
from tests.conftest import free_port
from tests.integration.conftest import MODEL_NAME, ServeFactory, ServeProcess, models_config, sample_pixels
from tests.integration.test_pipeline import wait_predictions
from tests.integration.workers import Proc, running_workers

pytestmark = pytest.mark.integration

POLL = ["--model-config-file-poll-wait-seconds", "1", "--file-system-poll-wait-seconds", "1"]
TOKEN = "s3cret-hub-token"
CLIENT_TIMEOUT_S = 120.0  # a rerun or promote answers once done
WAIT_S = 60.0  # how long a promotion waits for serving (the --wait-s default)


def start_api(service: Service, *, reruns: bool) -> HubServer:
    """The hub API as `chexstack hub serve` makes it, on any free port (0), no token."""
    from chexstack.hub.api import make_server

    return make_server(service, host="127.0.0.1", port=0, token=None, reruns=reruns, label_wait_s=WAIT_S)


def private_base(tmp_path: Path, model_base: Path, versions: tuple[int, ...]) -> Path:
    """A model base of our own (the session one is shared): version v links to the export of 1 or 2."""
    base = tmp_path / "models" / MODEL_NAME
    base.mkdir(parents=True)
    for v in versions:
        (base / str(v)).symlink_to(model_base / str(2 - v % 2))
    return base


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chexstack", *args],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )


def served_version(server: ServeProcess, label: str) -> int:
    """The version that answers a real Predict addressed by label."""
    with ServingClient(server.grpc_target, timeout_s=60) as client:
        return client.predict(MODEL_NAME, sample_pixels(1), label=label)[1]


class HubApi:
    """`chexstack hub serve` as a process; restart() keeps the port and the database."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.port = free_port()
        self.args, self.log = args, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "chexstack", "hub", "serve", "--port", str(self.port), *self.args]
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if requests.get(self.url + "/healthz", timeout=2).ok:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise TimeoutError(self.log.read_text())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    with Hub.open(tmp_path / "hub" / "hub.sqlite") as h:
        yield h


def test_promote_rollback_handoff_cli_and_api_in_real_serving(
    tmp_path: Path,
    model_base: Path,
    serve_factory: ServeFactory,
    hub: Hub,
) -> None:
    base = private_base(tmp_path, model_base, (1, 2, 3))  # 3 is on disk but not in the policy
    server = serve_factory(POLL, config=models_config(base, labels={"stable": 1}))
    config_file = tmp_path / "serve0" / "models.config"
    svc = Service(hub, Settings(hub.path, model_config_file=config_file, serving=server.grpc_target))
    flags = ["--hub", str(hub.path), "--model-config-file", str(config_file), "--serving", server.grpc_target]

    # Serving has not loaded 3: promotion is refused and nothing changes.
    before = config_file.read_text()
    with pytest.raises(
        Conflict, match=r"version 3 to 'stable': version 3 is on disk in .* has not loaded it"
    ):
        svc.promote(MODEL_NAME, 3, "stable", wait_s=WAIT_S)
    bad = cli("models", "promote", MODEL_NAME, "3", "--label", "stable", *flags)
    assert bad.returncode == 1, bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: refusing to promote 'chexnet' version 3")
    assert config_file.read_text() == before and hub.list_jobs() == []

    # Hand-off: 3 joins the policy, gets loaded, then labelled canary.
    handoff(config_file, MODEL_NAME, 3, "canary", server.grpc_target, timeout_s=120, hub=hub)
    config = modelsconfig.read(config_file)
    assert modelsconfig.policy_text(config, MODEL_NAME) == "specific 1,2,3"
    assert modelsconfig.labels(config, MODEL_NAME) == {"canary": 3, "stable": 1}
    assert label_version(server.grpc_target, MODEL_NAME, "canary", timeout_s=10) == 3

    # Promote through the CLI, roll back through the service: real predictions follow the label.
    ok = cli("models", "promote", MODEL_NAME, "2", "--label", "stable", *flags)
    assert ok.returncode == 0, ok.stderr
    assert "stable -> v2 (was 1)" in ok.stdout
    assert served_version(server, "stable") == 2
    job = svc.rollback(MODEL_NAME, wait_s=WAIT_S)
    assert (job.status, job.results["version"], job.results["previous_version"]) == ("succeeded", 1, 2)
    assert served_version(server, "stable") == 1
    with pytest.raises(Conflict, match="no previous 'stable' version"):
        svc.rollback(MODEL_NAME, wait_s=WAIT_S)

    for args, code, message in [
        (("models", "promote", MODEL_NAME, "2", "--label", "beta"), 2, "bad --label 'beta'"),
        (("jobs", "show", "feedbeef"), 1, "no job 'feedbeef'"),
        (("jobs", "list", "--kind", "deploy"), 1, "bad --kind 'deploy'"),
    ]:
        res = cli(*args, *(flags if args[0] == "models" else flags[:2]))
        assert res.returncode == code and message in res.stderr, res.stderr
    listed = json.loads(cli("jobs", "list", "--json", "--hub", str(hub.path)).stdout)
    assert [(j["spec"]["action"], j["model_version"], j["status"]) for j in listed] == [
        ("rollback", 1, "succeeded"),
        ("promote", 2, "succeeded"),
    ]

    # The HTTP API: same operations, token enforced, state survives a restart of the API process.
    api = HubApi([*flags, "--model-base-path", str(base), "--hub-token", TOKEN], tmp_path / "api.log")
    api.start()
    try:
        assert HubClient(api.url, token="", timeout_s=CLIENT_TIMEOUT_S).health()
        with pytest.raises(HubClientError) as denied:
            HubClient(api.url, token="", timeout_s=CLIENT_TIMEOUT_S).jobs()
        assert denied.value.status == 401
        assert (
            requests.post(api.url + f"/v1/models/{MODEL_NAME}/promote", json={}, timeout=10).status_code
            == 401
        )
        client = HubClient(api.url, token=TOKEN, timeout_s=CLIENT_TIMEOUT_S)
        assert [j["id"] for j in client.jobs(kind="serve")] == [j["id"] for j in listed]
        assert client.job(listed[0]["id"][:8])["results"]["version"] == 1
        with pytest.raises(HubClientError) as refused:
            client.promote(MODEL_NAME, 9, "stable")
        assert refused.value.status == 404 and f"no version 9 on disk in {base}" in str(refused.value)
        with pytest.raises(HubClientError) as unknown:
            client.job("0123456789ab")
        assert unknown.value.status == 404
        promoted = client.promote(MODEL_NAME, 3, "stable")
        assert (promoted["results"]["version"], promoted["results"]["applied"]) == (3, True)
        assert served_version(server, "stable") == 3
        (model,) = client.models()
        by_version = {v["version"]: v for v in model["versions"]}
        assert model["labels"] == {"canary": 3, "stable": 3}
        assert {v: (i["state"], i["on_disk"], i["labels"]) for v, i in by_version.items()} == {
            1: ("AVAILABLE", True, []),
            2: ("AVAILABLE", True, []),
            3: ("AVAILABLE", True, ["canary", "stable"]),
        }
        api.stop()
        api.start()
        assert len(client.jobs()) == 3
        assert client.rollback(MODEL_NAME)["results"]["version"] == 1
        assert served_version(server, "stable") == 1
        assert client.projects()[0]["variations"][0]["jobs"] == 4
    finally:
        api.stop()
    with Hub.open(hub.path) as reopened:
        assert [c.version for c in reopened.label_history(MODEL_NAME, "stable")] == [2, 1, 3, 1]


def test_two_overlapping_rollbacks_undo_one_promotion_not_the_same_one_twice(
    tmp_path: Path, model_base: Path, serve_factory: ServeFactory, hub: Hub
) -> None:
    base = private_base(tmp_path, model_base, (1, 2, 3))
    server = serve_factory(POLL, config=models_config(base, labels={"stable": 1}, versions=(1, 2, 3)))
    config_file = tmp_path / "serve0" / "models.config"
    svc = Service(hub, Settings(hub.path, model_config_file=config_file, serving=server.grpc_target))
    svc.promote(MODEL_NAME, 2, "stable", wait_s=WAIT_S)
    svc.promote(MODEL_NAME, 3, "stable", wait_s=WAIT_S)

    outcomes: list[object] = []

    def rollback() -> None:
        try:
            outcomes.append(svc.rollback(MODEL_NAME, wait_s=WAIT_S).results["version"])
        except Conflict as exc:
            outcomes.append(str(exc))

    # Hold the models.config lock until both rollbacks have read the label (3) and started their job:
    # each then waits for the lock, and the one that gets it second must see the label moved.
    with (config_file.parent / (config_file.name + ".lock")).open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        threads = [threading.Thread(target=rollback) for _ in range(2)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(hub.list_jobs(kind="serve", status="running")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(hub.list_jobs(kind="serve", status="running")) == 2
    for thread in threads:
        thread.join(120)

    assert len(outcomes) == 2 and 2 in outcomes, outcomes
    (refused,) = (o for o in outcomes if o != 2)
    assert refused == (
        "'stable' of 'chexnet' moved from 3 to 2 while rolling back (another rollback or promotion): "
        "nothing changed, try again"
    )
    assert modelsconfig.labels(modelsconfig.read(config_file), MODEL_NAME)["stable"] == 2
    assert served_version(server, "stable") == 2
    assert [(c.action, c.version) for c in hub.label_history(MODEL_NAME, "stable")] == [
        ("promote", 2), ("promote", 3), ("rollback", 2)
    ]  # fmt: skip
    # The history is right, so the next rollback undoes the first promotion.
    assert svc.rollback(MODEL_NAME, wait_s=WAIT_S).results["version"] == 1


def publish_images(kafka: str, t: Topics, n: int, seed: int) -> list[str]:
    """Preprocessed messages straight onto xray.preprocessed (the router's input)."""
    producer = make_producer(kafka)
    ids = []
    for i, pixels in enumerate(sample_pixels(n, seed=seed)[..., 0]):
        sha = hashlib.sha256(pixels.tobytes() + bytes([seed, i])).hexdigest()
        msg = Preprocessed(
            image_id=sha[:32],
            sha256=sha,
            pixels_b64=Preprocessed.encode_pixels(np.ascontiguousarray(pixels)),
            uploaded_at_ms=now_ms(),
            preprocessed_at_ms=now_ms(),
            preprocess_ms=1.0,
        )
        produce_sync(producer, t.preprocessed, msg.image_id, msg.to_bytes())
        ids.append(msg.image_id)
    return ids


def routed(kafka: str, t: Topics, n: int, seed: int) -> set[tuple[str, int]]:
    ids = publish_images(kafka, t, n, seed)
    return {(p.variant, p.model_version) for p in wait_predictions(kafka, t, ids, timeout_s=120)}


def wait_log(proc: Proc, text: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in proc.text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert text in proc.text(), proc.text()[-2000:]


def test_promote_rollback_and_ab_steer_the_router(
    kafka: str,
    topics: dict[str, str],
    tmp_path: Path,
    model_base: Path,
    serve_factory: ServeFactory,
    hub: Hub,
) -> None:
    t = Topics(topics["prefix"])
    server = serve_factory(POLL, config=models_config(model_base, labels={"stable": 1, "canary": 2}))
    settings = Settings(
        hub.path,
        model_config_file=tmp_path / "serve0" / "models.config",
        serving=server.grpc_target,
        kafka=kafka,
        topic_prefix=topics["prefix"],
    )
    svc = Service(hub, settings)
    env = {"CHEXSTACK_KAFKA": kafka, "CHEXSTACK_TOPIC_PREFIX": topics["prefix"],
           "CHEXSTACK_SERVING": server.grpc_target}  # fmt: skip
    with running_workers(env, tmp_path) as w:
        router = w.start("route")
        w.wait_assigned([router])

        svc.set_ab(MODEL_NAME, {"stable": 100})
        wait_log(router, "A/B weights for chexnet: {'stable': 100}")
        assert routed(kafka, t, 2, seed=1) == {("stable", 1)}

        svc.promote(MODEL_NAME, 2, "stable", wait_s=WAIT_S)
        assert routed(kafka, t, 2, seed=2) == {("stable", 2)}
        svc.rollback(MODEL_NAME, wait_s=WAIT_S)
        assert routed(kafka, t, 2, seed=3) == {("stable", 1)}

        # `chexstack ab set` (the CLI) publishes and records the change in the hub.
        res = cli("ab", "set", MODEL_NAME, "stable=0", "canary=100", "--hub", str(hub.path),
                  "--model-config-file", str(settings.model_config_file), env=env)  # fmt: skip
        assert res.returncode == 0, res.stderr
        wait_log(router, "A/B weights for chexnet: {'stable': 0, 'canary': 100}")
        assert routed(kafka, t, 2, seed=4) == {("canary", 2)}
        refused = cli("ab", "set", MODEL_NAME, "shadow=10", "--hub", str(hub.path),
                      "--model-config-file", str(settings.model_config_file), env=env)  # fmt: skip
        assert refused.returncode == 1 and "no version label shadow" in refused.stderr

    jobs = hub.list_jobs(kind="serve", limit=None)
    assert [(j.spec["action"], j.status) for j in jobs] == [
        ("ab", "succeeded"), ("rollback", "succeeded"), ("promote", "succeeded"), ("ab", "succeeded")
    ]  # fmt: skip
    assert jobs[0].results == {"weights": {"stable": 0, "canary": 100}}
    assert svc.get_ab(MODEL_NAME) == {"stable": 0, "canary": 100}


def test_rerun_writes_the_recorded_config_and_records_the_outcome(hub: Hub) -> None:
    # A config no trainer accepts: the rerun must still be recorded, failed, and linked to the original.
    # A relative data_dir, as jobs recorded before paths were stored absolute have: the rerun's cwd.
    config = {"epochs": 1, "not_a_train_option": True, "data_dir": "recorded/shards"}
    old = hub.start_job("train", "chexnet", "tiny", MODEL_NAME, {"config": config})
    hub.finish_job(old, "succeeded", {"mean_auroc": 0.9}, model_version=1)
    res = cli("jobs", "rerun", old[:6], "--hub", str(hub.path))
    assert res.returncode == 1 and f"of {old[:6]} failed" in res.stderr, res.stderr
    (new,) = [j for j in hub.list_jobs(kind="train") if j.rerun_of == old]
    assert new.status == "failed" and "exited with code" in (new.error or "")
    import yaml

    # The recorded config, except the job directory: a rerun trains from scratch in a new one.
    assert yaml.safe_load((hub.path.parent / "reruns" / f"{new.id}.yaml").read_text()) == {
        **config,
        "data_dir": str(Path.cwd() / "recorded" / "shards"),
        "job_dir": None,
    }
    serve = hub.start_job("serve", "chexnet", "tiny", MODEL_NAME, {"action": "promote"})
    res = cli("jobs", "rerun", serve, "--hub", str(hub.path))
    assert res.returncode == 1 and "only train jobs can be rerun" in res.stderr

    # Through the API the rerun runs in the background: queued at once, failed once the child exits.
    from chexstack.hub.api import serve_in_thread

    server = start_api(Service(hub, Settings(hub.path)), reruns=True)
    serve_in_thread(server)
    try:
        queued = HubClient(server.url, timeout_s=CLIENT_TIMEOUT_S).rerun(old)
        assert (queued["status"], queued["rerun_of"]) == ("queued", old)
        deadline = time.monotonic() + 120
        while hub.get_job(queued["id"]).status in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.5)
        done = HubClient(server.url, timeout_s=CLIENT_TIMEOUT_S).job(queued["id"])
        assert done["status"] == "failed" and "exited with code" in done["error"]
    finally:
        server.shutdown()
        server.server_close()

    # Where the API process has no training data (the platform's hub service), reruns are refused.
    server = start_api(Service(hub, Settings(hub.path)), reruns=False)
    serve_in_thread(server)
    try:
        with pytest.raises(HubClientError) as refused:
            HubClient(server.url, timeout_s=CLIENT_TIMEOUT_S).rerun(old)
        assert refused.value.status == 409 and "trainer service" in str(refused.value)
    finally:
        server.shutdown()
        server.server_close()


def test_api_errors_are_json_a_client_can_act_on(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    # Each of these was a 500 naming Python internals (OverflowError from SQLite, int() on "²", a NUL in a
    # path, json.loads' digit limit and recursion), an HTML 501, or a 405 without Allow.
    from chexstack.hub.api import serve_in_thread

    caplog.set_level(logging.INFO, logger="chexstack.hub.api")
    server = start_api(Service(hub, Settings(hub.path)), reruns=False)
    serve_in_thread(server)
    promote = f"{server.url}/v1/models/{MODEL_NAME}/promote"
    try:
        cases = [
            (requests.get(f"{server.url}/v1/jobs", params={"limit": "9" * 30, "token": "SECRET"}, timeout=10),
             400, "limit is out of range: at most 9223372036854775807"),
            (requests.get(f"{server.url}/v1/jobs?limit=%C2%B2", timeout=10),
             400, "limit must be a positive integer, got '\u00b2'"),
            (requests.get(f"{server.url}/v1/models?name=a%00b", timeout=10),
             400, "name must be a model name ([A-Za-z0-9._-]+), got 'a\\x00b'"),
            (requests.post(promote, json={"version": 10**30, "label": "stable"}, timeout=10),
             400, "version is out of range: at most 9223372036854775807"),
            (requests.post(promote, data=b'{"version": ' + b"9" * 5000 + b', "label": "stable"}', timeout=10),
             400, "request body is not JSON: an integer has more than 4300 digits"),
            (requests.post(promote, data=b"[" * 60_000, timeout=10),
             400, "request body is not JSON: arrays or objects are nested too deeply"),
            (requests.delete(f"{server.url}/v1/jobs", timeout=10),
             405, "method DELETE is not allowed; use GET, POST, PUT"),
            (requests.put(f"{server.url}/v1/jobs", timeout=10), 405, "PUT not allowed; use GET"),
            (requests.post(f"{server.url}/v1/models/{MODEL_NAME}/ab", json={}, timeout=10),
             405, "POST not allowed; use GET, PUT"),
        ]  # fmt: skip
        for res, status, message in cases:
            assert (res.status_code, res.json()) == (status, {"error": message}), res.text
            assert res.headers["Content-Type"] == "application/json"
            if status == 405:
                assert res.headers["Allow"] == message.rpartition("use ")[2]
    finally:
        server.shutdown()
        server.server_close()
    assert "SECRET" not in caplog.text  # the access log drops query strings
    assert '"GET /v1/jobs HTTP/1.1" 400 -' in caplog.text


def test_a_read_token_lists_and_shows_but_changes_nothing(hub: Hub) -> None:
    """The notebooks' token: every GET works, every change is 403 and leaves the hub as it was."""
    from chexstack.hub.api import make_server, serve_in_thread

    service = Service(hub, Settings(hub.path))
    server = make_server(service, host="127.0.0.1", port=0, token=TOKEN, reruns=False, label_wait_s=WAIT_S,
                         read_token="read-only-" + TOKEN)  # fmt: skip
    serve_in_thread(server)
    reader = HubClient(server.url, token="read-only-" + TOKEN, timeout_s=CLIENT_TIMEOUT_S)
    admin = HubClient(server.url, token=TOKEN, timeout_s=CLIENT_TIMEOUT_S)
    try:
        before = admin.jobs()
        assert reader.jobs() == before and reader.projects() == admin.projects()
        changes: list[Callable[[], object]] = [
            lambda: reader.promote(MODEL_NAME, 1, "stable"),
            lambda: reader.rollback(MODEL_NAME),
            lambda: reader.set_ab(MODEL_NAME, {"stable": 100}),
            lambda: reader.rerun("0123456789ab"),
        ]
        for change in changes:
            with pytest.raises(HubClientError) as refused:
                change()
            assert refused.value.status == 403 and "needs the admin token" in str(refused.value)
        assert admin.jobs() == before  # nothing was recorded, not even a failed job
        # The admin token still changes things: past the token check, on to the state's own answer.
        with pytest.raises(HubClientError) as admin_refused:
            admin.rerun("0123456789ab")
        assert admin_refused.value.status == 409 and "does not run training" in str(admin_refused.value)
        with pytest.raises(HubClientError) as wrong:
            HubClient(server.url, token="read-only-" + TOKEN + "x", timeout_s=CLIENT_TIMEOUT_S).jobs()
        assert wrong.value.status == 401
    finally:
        server.shutdown()
        server.server_close()


def test_a_read_token_without_an_admin_token_is_refused(hub: Hub) -> None:
    from chexstack.hub.api import make_server

    service = Service(hub, Settings(hub.path))
    for token, read_token, message in [
        (None, "r" * 40, "needs an admin token"),
        ("t" * 40, "t" * 40, "must differ"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_server(service, host="127.0.0.1", port=0, token=token, reruns=False, label_wait_s=WAIT_S,
                        read_token=read_token)  # fmt: skip
