"""The isolated platform instance the e2e and browser tiers share: `site.yml` with platform-vars.yml.

Its own data directory, network, compose projects, volumes and host ports, so it runs beside a
developer's platform. `tests/conftest.py`'s session fixture `e2e_platform` deploys it once per pytest
process; these are the helpers both tiers use to reach it.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from chexstack.kafka_auth import password_file

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VARS_FILE = ROOT / "tests" / "e2e" / "platform-vars.yml"
VARS = yaml.safe_load(VARS_FILE.read_text())
ARGS = f"-e @{VARS_FILE} -e chexstack_image_source=bootstrap"
PROJECTS = [
    VARS[k]
    for k in (
        "kafka_project_name",
        "serving_project_name",
        "workers_project_name",
        "hub_project_name",
        "ingest_project_name",
        "jupyter_project_name",
        "tensorboard_project_name",
    )
]
VOLUMES = [v for k, v in VARS.items() if k.endswith("_volume")]
KAFKA = f"127.0.0.1:{VARS['chexstack_kafka_port']}"
TOPIC_PREFIX = VARS.get("chexstack_topic_prefix", "")
DATA_DIR = Path(VARS["chexstack_data_dir"])
JUPYTER_URL = f"http://127.0.0.1:{VARS['chexstack_jupyter_port']}"
HUB_URL = f"http://127.0.0.1:{VARS['chexstack_hub_port']}"
INGEST_URL = f"http://127.0.0.1:{VARS['chexstack_ingest_port']}"
TENSORBOARD_URL = f"http://127.0.0.1:{VARS['chexstack_tensorboard_port']}"
SECRETS_DIR = DATA_DIR / "secrets"
JUPYTER_TOKEN_FILE = SECRETS_DIR / "jupyter-token"
HUB_TOKEN_FILE = SECRETS_DIR / "hub-token"
HUB_READ_TOKEN_FILE = SECRETS_DIR / "hub-read-token"
INGEST_TOKEN_FILE = SECRETS_DIR / "ingest-token"
PSEUDONYM_KEY_FILE = SECRETS_DIR / "pseudonym-key"
KAFKA_USERS_DIR = SECRETS_DIR / "kafka"
# The JupyterLab container's work directory (its root) and where the host sees it.
JUPYTER_WORK_DIR = "/home/chexstack/work"
JUPYTER_WORK_DIR_ON_HOST = DATA_DIR / "jupyter" / "work"


@dataclass(frozen=True)
class Platform:
    """The deployed instance: the first `make up`'s output (None when a running instance was reused), and
    whether CHEXSTACK_E2E_REUSE=1 asked to reuse one (so the first run may not have been from scratch)."""

    first_run: str | None
    reused: bool


def _env() -> dict[str, str]:
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", NO_COLOR="1", PY_COLORS="0")
    # The play logs in to Kafka with the files it generates, not as the tests' client.
    for name in ("CHEXSTACK_KAFKA_USER", "CHEXSTACK_KAFKA_PASSWORD", "CHEXSTACK_KAFKA_PASSWORD_FILE"):
        env.pop(name, None)
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


def docker(*args: str, check: bool = True, input: str | None = None) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, input=input, check=False)
    if check:
        assert proc.returncode == 0, f"docker {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


def container_logs(name: str) -> str:
    """Everything a container wrote, both streams (the services log to stderr)."""
    proc = subprocess.run(["docker", "logs", name], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"docker logs {name} exited {proc.returncode}:\n{proc.stderr}"
    return proc.stdout + proc.stderr


def containers() -> list[dict[str, Any]]:
    rows = []
    for project in PROJECTS:
        out = docker("compose", "-p", project, "ps", "--all", "--format", "json")
        rows += [json.loads(line) for line in out.splitlines() if line.strip()]
    return rows


def healthy(rows: list[dict[str, object]]) -> bool:
    """Every service of every project has a running container that is healthy (or has no healthcheck)."""
    services = {(r["Project"], r["Service"]) for r in rows}
    return (
        {r["Project"] for r in rows} == set(PROJECTS)
        and len(services) >= len(PROJECTS)
        and all(r["State"] == "running" and r["Health"] in ("healthy", "") for r in rows)
    )


def wait_healthy(timeout_s: float = 300) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = containers()
        if rows and all(r["State"] == "running" and r["Health"] in ("healthy", "") for r in rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(json.dumps(rows, indent=1))
        time.sleep(3)


def remove_instance() -> None:
    """The instance's containers, volumes and files; the images stay (the engine's cache)."""
    for project in [*PROJECTS, VARS["trainer_project_name"]]:
        docker("compose", "-p", project, "down", "--volumes", "--remove-orphans", check=False)
    for volume in VOLUMES:
        docker("volume", "rm", "-f", volume, check=False)
    docker("network", "rm", VARS["chexstack_network"], check=False)
    subprocess.run(["rm", "-rf", str(DATA_DIR)], check=True)


def jupyter_token() -> str:
    return JUPYTER_TOKEN_FILE.read_text().strip()


def hub_token() -> str:
    return HUB_TOKEN_FILE.read_text().strip()


def hub_read_token() -> str:
    return HUB_READ_TOKEN_FILE.read_text().strip()


def hub_api(path: str, token: str | None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"{HUB_URL}{path}", headers={"Authorization": f"Bearer {token}"} if token else {}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def service_container(service: str) -> str:
    """Name of the one container of `service` (e.g. "hub", "jupyter") in the instance, in any state."""
    rows = [r for r in containers() if r["Service"] == service]
    assert len(rows) == 1, f"{service}: {rows}"
    name: str = rows[0]["Name"]
    return name


def jupyter_container() -> str:
    return service_container("jupyter")


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


def kafka_env(user: str) -> dict[str, str]:
    """The environment of a CheXStack client on the host that logs in to the instance's Kafka as `user`."""
    return {
        "CHEXSTACK_KAFKA_USER": user,
        "CHEXSTACK_KAFKA_PASSWORD_FILE": str(password_file(KAFKA_USERS_DIR, user)),
    }


def upload_in_container(count: int, seed: int) -> list[str]:
    """Synthetic PNG and DICOM files uploaded through the ingest service from a one-shot chexstack container
    on the network, as the notebooks upload: with the ingest token, without the key or the store."""
    ref = python_image()
    out = docker(
        "run",
        "--rm",
        "--network",
        VARS["chexstack_network"],
        "--volume",
        f"{INGEST_TOKEN_FILE}:/run/secrets/ingest_token:ro",
        "--env",
        "CHEXSTACK_INGEST_TOKEN_FILE=/run/secrets/ingest_token",
        ref,
        "bash",
        "-c",
        f"chexstack data synth --out /tmp/s --count {count} --seed {seed} >/dev/null && "
        "chexstack upload --ingest-url http://ingest:8700 /tmp/s/images /tmp/s/dicom "
        "--patient-id MRN-E2E-0001",
    )
    ids = [line.split("\t")[1] for line in out.splitlines() if "\t" in line]
    assert ids and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), out
    return ids
