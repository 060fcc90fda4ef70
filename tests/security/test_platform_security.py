"""The security tier: the probes of the platform's security review, repeated on the deployed platform.

The e2e instance (tests/e2e/platform-vars.yml; the session fixture `e2e_platform`, deployed once and
shared with the e2e and browser tiers; `make security` alone deploys it or, with CHEXSTACK_E2E_REUSE=1,
reuses a running one). Each test tries what a local user or a notebook user could:
  1. containers: no capabilities, no privilege gain, bounded memory and processes, a read-only root,
     never root;
  2. tokens: compose secrets in private files, never environment variables; a notebook holds only the
     hub's read token; TensorBoard answers only with a token; the data directories are private;
  3. the HTTP servers (serving REST, the hub): bodies over their caps, truncated bodies, deep JSON,
     unknown methods, idle and surplus connections, query strings in the access log;
  4. poison messages on both input topics and the control topic: dead letters naming why (a log line
     for control), the workers are neither restarted nor stopped, and later uploads are predicted;
  5. the patient identifier of the uploads is in no log, topic or volume;
  6. Kafka: a client without a user gets nothing; the notebooks' user can neither forge predictions,
     set A/B weights nor publish uploads, and the ingest service's user cannot read the preprocessed
     pixels;
  7. trust boundaries: a notebook user holds no pseudonym key (in no variable, secret or file it can
     read), cannot write the blob store, and uploads only through the ingest service, whose key is the
     one that makes the pseudonyms.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.error
import urllib.request
import uuid

import pytest

from chexstack import kafka_auth
from chexstack.bus import ReadError, TopicReader, make_producer, produce_sync
from chexstack.deid import pseudonym
from chexstack.messages import AbConfig, DeadLetter, Uploaded, decode
from chexstack.predictions import read_predictions
from chexstack.topics import Topics
from tests.http_probes import raw_exchange, split_reply
from tests.integration.test_pipeline import read_topic
from tests.platform_instance import (
    DATA_DIR,
    HUB_READ_TOKEN_FILE,
    HUB_TOKEN_FILE,
    INGEST_TOKEN_FILE,
    INGEST_URL,
    JUPYTER_TOKEN_FILE,
    JUPYTER_WORK_DIR_ON_HOST,
    KAFKA,
    KAFKA_USERS_DIR,
    PSEUDONYM_KEY_FILE,
    SECRETS_DIR,
    TENSORBOARD_URL,
    TOPIC_PREFIX,
    VARS,
    VOLUMES,
    Platform,
    container_logs,
    containers,
    docker,
    hub_api,
    hub_read_token,
    hub_token,
    jupyter_container,
    jupyter_token,
    kafka_env,
    python_image,
    service_container,
    upload_in_container,
    wait_healthy,
)
from tests.poison import POISON

# `make security` alone: the first test's fixture deploys the platform.
pytestmark = pytest.mark.timeout(3600)

MODEL = VARS["chexstack_model_name"]
SERVING_REST_PORT = int(VARS["chexstack_serving_rest_port"])
HUB_PORT = int(VARS["chexstack_hub_port"])
INGEST_PORT = int(VARS["chexstack_ingest_port"])
# What upload_in_container gives as the patient id: pseudonymized at upload, never stored.
PATIENT_ID = "MRN-E2E-0001"


def test_every_container_hardened_and_bounded(e2e_platform: Platform) -> None:
    """No capabilities, no privilege gain, a memory and pids limit, a read-only root, never root."""
    rows = wait_healthy()
    trainer = DATA_DIR / "trainer" / "compose.yaml"
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
    tokens |= {"ingest": INGEST_TOKEN_FILE.read_text().strip(), "key": PSEUDONYM_KEY_FILE.read_text().strip()}
    tokens |= {
        f"kafka {u}": kafka_auth.password_file(KAFKA_USERS_DIR, u).read_text().strip()
        for u in kafka_auth.USERS
    }
    for r in containers():
        env = json.loads(docker("inspect", "--format", "{{json .Config.Env}}", r["Name"]))
        for name, token in tokens.items():
            assert all(token not in variable for variable in env), (r["Name"], name)
    assert SECRETS_DIR.stat().st_mode & 0o777 == 0o700
    kafka_files = [kafka_auth.password_file(KAFKA_USERS_DIR, user) for user in kafka_auth.USERS]
    secret_files = (
        JUPYTER_TOKEN_FILE,
        HUB_TOKEN_FILE,
        HUB_READ_TOKEN_FILE,
        INGEST_TOKEN_FILE,
        PSEUDONYM_KEY_FILE,
    )
    for token_file in (*secret_files, *kafka_files):
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
        f"    client.rollback({MODEL!r})\n"
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


def json_reply(port: int, data: bytes, *, end_sending: bool = False) -> tuple[int, dict[str, str], str]:
    """A raw exchange whose reply must be a JSON error: status, headers, the error's text."""
    status, headers, body = split_reply(raw_exchange(port, data, end_sending=end_sending))
    assert headers["content-type"].startswith("application/json"), (status, headers, body[:300])
    error = json.loads(body)["error"]
    assert isinstance(error, str) and "Traceback" not in error and "/usr/" not in error, error
    return status, headers, error


def test_http_servers_bound_what_a_client_can_make_them_hold(e2e_platform: Platform) -> None:
    admin = hub_token()
    # Connections that never finish their request: the servers drop them after their read timeout
    # (checked last, so the probes below run meanwhile).
    idle = []
    for port in (SERVING_REST_PORT, HUB_PORT, INGEST_PORT):
        sock = socket.create_connection(("127.0.0.1", port), timeout=300)
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")  # no blank line: the headers never end
        idle.append(sock)

    # Bodies over the caps are refused from their Content-Length, before a byte of them is read.
    predict = f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    status, _, error = json_reply(SERVING_REST_PORT, f"{predict}Content-Length: {100 << 20}\r\n\r\n".encode())
    # 429: serving answers as TF Serving does (RESOURCE_EXHAUSTED).
    assert (status, error) == (429, f"request body larger than {64 << 20} bytes")
    rollback = f"POST /v1/models/{MODEL}/rollback HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n"
    status, _, error = json_reply(HUB_PORT, f"{rollback}Content-Length: {1 << 20}\r\n\r\n".encode())
    assert (status, error) == (400, f"request body larger than {64 << 10} bytes")  # the hub's own status
    ingest_token = INGEST_TOKEN_FILE.read_text().strip()
    upload = f"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ingest_token}\r\n"
    status, _, error = json_reply(INGEST_PORT, f"{upload}Content-Length: {100 << 20}\r\n\r\n".encode())
    assert (status, error) == (413, f"file is {100 << 20} bytes, over the limit of {64 << 20}")
    # Without the token nothing is read or stored, whatever the body.
    status, _, error = json_reply(
        INGEST_PORT, b"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n"
    )
    assert (status, error) == (401, "missing or wrong bearer token")

    # A rollback whose body is cut short is a 400, and nothing is rolled back.
    def state() -> tuple[object, int]:
        """The model's labels and how many jobs the hub has."""
        return hub_api(f"/v1/models?name={MODEL}", admin)[1]["models"][0]["labels"], len(
            hub_api("/v1/jobs", admin)[1]["jobs"]
        )

    before = state()
    status, _, error = json_reply(
        HUB_PORT, f"{rollback}Content-Length: 40\r\n\r\n".encode() + b'{"label": "sta', end_sending=True
    )
    assert status == 400 and "shorter than its Content-Length 40" in error, error
    assert state() == before

    # Deep JSON and unknown methods are JSON errors a client can act on, not 500s or HTML.
    deep = b'{"instances": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    status, _, error = json_reply(
        SERVING_REST_PORT, f"{predict}Content-Length: {len(deep)}\r\n\r\n".encode() + deep
    )
    assert (status, error) == (
        400,
        "JSON Parse error: arrays or objects are nested too deeply",
    )  # as TF Serving words it
    for port in (SERVING_REST_PORT, HUB_PORT, INGEST_PORT):
        status, headers, error = json_reply(port, b"BREW /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 405 and "GET" in headers["allow"], (port, headers, error)

    # A query string (a token or patient data pasted into a URL) never reaches the access log.
    marker = uuid.uuid4().hex
    assert hub_api(f"/v1/jobs?kind=train&probe={marker}", admin)[0] == 200
    hub_log = container_logs(service_container("hub"))
    assert "GET /v1/jobs" in hub_log and marker not in hub_log

    for sock in idle:
        with sock:
            # b"" (closed without a word) or a 408: the connection did not stay open for good.
            answer = sock.recv(65536)
            assert answer == b"" or b" 408 " in answer.split(b"\r\n", 1)[0], answer[:200]


def restarts(service: str) -> tuple[int, str]:
    state = json.loads(docker("inspect", "--format", "{{json .}}", service_container(service)))
    return state["RestartCount"], state["State"]["StartedAt"]


def test_kafka_lets_each_user_do_only_what_its_acls_allow(
    e2e_platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CHEXSTACK_KAFKA_USER", "CHEXSTACK_KAFKA_PASSWORD_FILE"):
        monkeypatch.delenv(name)
    with pytest.raises(ReadError, match="if the broker requires authentication"):
        TopicReader(KAFKA, Topics(TOPIC_PREFIX).predictions, timeout_s=15)
    # The ingest service's user sees the outcome of uploads, never the pixels.
    for name, value in kafka_env("ingest").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ReadError, match="Kafka user ingest may not read topic"):
        TopicReader(KAFKA, Topics(TOPIC_PREFIX).preprocessed, timeout_s=30)
    TopicReader(KAFKA, Topics(TOPIC_PREFIX).predictions, timeout_s=30).close()
    # The notebook container's own credentials, as a notebook user would use them: a forged prediction,
    # new A/B weights and an upload that skips the ingest service (its de-identification) are refused.
    # The notebooks' user may write no topic, so the broker refuses even an idempotent producer's start
    # (a fatal CLUSTER_AUTHORIZATION_FAILED) where another user gets the topic's refusal: either refuses.
    probe = (
        "import json, os\n"
        "from confluent_kafka import KafkaException\n"
        "from chexstack.bus import PublishError, make_producer, produce_sync\n"
        "from chexstack.topics import Topics\n"
        "t = Topics(os.environ.get('CHEXSTACK_TOPIC_PREFIX', ''))\n"
        "out = {'user': os.environ.get('CHEXSTACK_KAFKA_USER')}\n"
        "for topic in (t.predictions, t.control, t.uploaded):\n"
        "    try:\n"
        "        produce_sync(make_producer(os.environ['CHEXSTACK_KAFKA']), topic, 'chexnet', b'{}', 30)\n"
        "        out[topic] = 'delivered'\n"
        "    except (PublishError, KafkaException) as exc:\n"
        "        out[topic] = str(exc)\n"
        "print(json.dumps(out))\n"
    )
    out = json.loads(docker("exec", jupyter_container(), "python", "-c", probe).strip().splitlines()[-1])
    topics = Topics(TOPIC_PREFIX)
    assert out["user"] == "notebook", out
    for topic in (topics.predictions, topics.control, topics.uploaded):
        assert "AUTHORIZATION_FAILED" in out[topic], out


def test_poison_messages_are_dead_letters_and_the_workers_go_on(e2e_platform: Platform) -> None:
    topics = Topics(TOPIC_PREFIX)
    run = uuid.uuid4().hex[:8]
    workers_before = {s: restarts(s) for s in ("preprocess", "router")}
    router = service_container("router")
    ignored_before = container_logs(router).count("control topic: ignoring")
    producer = make_producer(KAFKA)
    key = AbConfig.key_for(MODEL)
    control_poison = [v for v, _ in POISON.values() if v is not None]  # a tombstone is a reset
    try:
        for record in control_poison:
            produce_sync(producer, topics.control, key, record)
        for topic in (topics.uploaded, topics.preprocessed):
            for name, (value, _) in POISON.items():
                produce_sync(producer, topic, f"sec-{run}-{name}", value)
        # Later uploads get through only if both workers went on past every poison.
        ids = upload_in_container(count=1, seed=21)
        preds = list(read_predictions(KAFKA, topics.predictions, image_ids=ids, timeout_s=300))
        assert [p.image_id for p in preds] == ids
    finally:
        produce_sync(producer, topics.control, key, None)  # back to the default routing
    assert container_logs(router).count("control topic: ignoring") - ignored_before == len(control_poison)
    assert {s: restarts(s) for s in workers_before} == workers_before, "a worker was restarted"

    letters = [decode(DeadLetter, v) for _, v in read_topic(KAFKA, topics.dlq)]
    mine = {(lt.source_topic, lt.key): lt for lt in letters if (lt.key or "").startswith(f"sec-{run}-")}
    assert len(mine) == 2 * len(POISON), sorted(mine)
    for topic, worker in ((topics.uploaded, "preprocess"), (topics.preprocessed, "router")):
        for name, (_, needle) in POISON.items():
            letter = mine[(topic, f"sec-{run}-{name}")]
            assert needle in letter.reason and letter.worker == worker, (topic, name, letter)


def test_no_patient_identifier_in_logs_topics_or_volumes(e2e_platform: Platform) -> None:
    """Every upload of the e2e tier gave PATIENT_ID; only its pseudonym may be kept anywhere."""
    upload_in_container(count=1, seed=22)  # one of its own, so the probe holds when run alone
    needle = PATIENT_ID.encode()
    for r in containers():
        assert PATIENT_ID not in container_logs(r["Name"]), r["Name"]
    topics = Topics(TOPIC_PREFIX)
    for topic in (topics.uploaded, topics.preprocessed, topics.predictions, topics.dlq, topics.control):
        records = read_topic(KAFKA, topic)
        assert all(needle not in (value or b"") and PATIENT_ID not in (k or "") for k, value in records), (
            topic
        )
    # Every volume and the data directory, searched byte for byte (SQLite, blobs, DICOM, logs).
    mounts = [arg for volume in VOLUMES for arg in ("-v", f"{volume}:/v/{volume}:ro")]
    found = docker(
        "run", "--rm", "--network", "none", "--user", "0", *mounts, "-v", f"{DATA_DIR}:/v/data-dir:ro",
        "--entrypoint", "grep", python_image(), "-rlaF", PATIENT_ID, "/v", check=False,
    )  # fmt: skip
    assert found == "", found


def test_a_notebook_user_holds_no_pseudonym_key_and_uploads_through_ingest(e2e_platform: Platform) -> None:
    """With the key and a list of MRNs a notebook user could reverse every pseudonym: the key lives only in
    the ingest service (and the trainer job), the notebooks upload through it and cannot write the store."""
    key = PSEUDONYM_KEY_FILE.read_text().strip()
    jupyter = jupyter_container()
    # Nowhere a notebook user can read: secrets, the store, home, /tmp, /etc. grep lists the files that
    # hold it (none) and exits 1, or 2 when some file was unreadable to the user (e.g. /etc/shadow).
    places = ["/run", "/var/lib/chexstack", "/home", "/tmp", "/etc"]
    found = subprocess.run(
        ["docker", "exec", jupyter, "grep", "-rlsF", "-e", key, *places],
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.stdout == "" and found.returncode in (1, 2), found.stdout + found.stderr
    probe = (
        "import json, os, pathlib\n"
        "from chexstack.ingest.client import IngestClient\n"
        "from chexstack.notebook.env import NotebookSettings\n"
        "from chexstack.synth import make_png, render_radiograph\n"
        "import numpy as np\n"
        "s = NotebookSettings.from_env()\n"
        "store = pathlib.Path(s.store)\n"
        "try:\n"
        "    (store / 'forged').write_bytes(b'x')\n"
        "    write = 'written'\n"
        "except OSError as exc:\n"
        "    write = exc.strerror\n"
        "rng = np.random.default_rng(int.from_bytes(os.urandom(4)))\n"
        "png = make_png(render_radiograph(rng, [], size=128))\n"
        "with IngestClient(s.ingest_url, s.ingest_token, limits=s.limits) as client:\n"
        "    client.check_connection()\n"
        "    result = client.upload_bytes(png, 'probe.png', 'MRN-SECURITY-7')\n"
        "print(json.dumps({'env': sorted(k for k in os.environ if 'PSEUDONYM' in k),\n"
        "                  'old_key': (store / '.pseudonym-key').exists(), 'write': write,\n"
        "                  'image_id': result.image_id, 'reason': result.reason}))\n"
    )
    out = json.loads(docker("exec", jupyter, "python", "-c", probe).strip().splitlines()[-1])
    assert out["env"] == [] and out["old_key"] is False, out
    assert out["write"] == "Read-only file system", out
    assert out["reason"] is None and re.fullmatch(r"[0-9a-f]{32}", out["image_id"] or ""), out
    # The ingest service made the pseudonym with the key file's key: the upload is on the topic with it.
    # (The poison test's records are on the topic too: only the upload's own record is decoded.)
    (record,) = [v for k, v in read_topic(KAFKA, Topics(TOPIC_PREFIX).uploaded) if k == out["image_id"]]
    assert decode(Uploaded, record).patient == pseudonym(key.encode(), "MRN-SECURITY-7")
    # The service answers nothing without its token.
    request = urllib.request.Request(f"{INGEST_URL}/v1/status")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401
