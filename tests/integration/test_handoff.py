"""The README's train -> hand off -> promote journey with the CLI, a real `chexstack serve` and real exports.

`models init-config` writes the models.config serving starts with; a version exported later is handed
off as canary and promoted to stable; promote tells a version that is not on disk from one serving has
not loaded, and a hand-off serving never completes fails naming what serving says.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from chexstack.hub import modelsconfig
from chexstack.hub.api import serve_in_thread
from chexstack.hub.service import Service, Settings
from chexstack.hub.store import Hub
from tests.integration.conftest import MODEL_NAME, ServeFactory
from tests.integration.test_hub import POLL, cli, served_version, start_api

pytestmark = pytest.mark.integration


def last_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr  # one line, no traceback
    return lines[0]


def test_init_config_serve_handoff_canary_promote_stable(
    tmp_path: Path, model_base: Path, serve_factory: ServeFactory
) -> None:
    base = tmp_path / "models" / MODEL_NAME
    base.mkdir(parents=True)
    (base / "1").symlink_to(model_base / "1")
    config_file = tmp_path / "models.config"
    init = cli(
        "models", "init-config", "--model-base-path", str(base), "--model-config-file", str(config_file)
    )
    assert init.returncode == 0, init.stderr
    server = serve_factory([*POLL, "--model-config-file", str(config_file)])
    hub = tmp_path / "hub" / "hub.sqlite"
    flags = ["--hub", str(hub), "--model-config-file", str(config_file), "--serving", server.grpc_target]
    assert served_version(server, "stable") == 1

    # A new version on disk (as `train` exports it), handed to serving as canary.
    (base / "2").symlink_to(model_base / "2")
    handed = cli("models", "handoff", MODEL_NAME, "2", "--label", "canary", *flags)
    assert handed.returncode == 0, handed.stderr
    assert handed.stdout.startswith("chexnet: canary -> v2 (was unset); job ")
    config = modelsconfig.read(config_file)
    assert modelsconfig.policy_text(config, MODEL_NAME) == "specific 1,2"
    assert modelsconfig.labels(config, MODEL_NAME) == {"canary": 2, "stable": 1}
    assert (served_version(server, "canary"), served_version(server, "stable")) == (2, 1)

    promoted = cli("models", "promote", MODEL_NAME, "2", "--label", "stable", *flags)
    assert promoted.returncode == 0, promoted.stderr
    assert "stable -> v2 (was 1)" in promoted.stdout
    assert served_version(server, "stable") == 2
    with Hub.open(hub) as h:
        jobs = h.list_jobs(kind="serve", limit=None)
        assert [(j.spec["action"], j.model_version, j.status) for j in jobs] == [
            ("promote", 2, "succeeded"), ("handoff", 2, "succeeded")
        ]  # fmt: skip
        assert jobs[1].results == {"label": "canary", "version": 2, "previous_version": None, "applied": True}
        assert [(c.action, c.version) for c in h.label_history(MODEL_NAME, "canary")] == [("handoff", 2)]

    # Two different refusals: no such version on disk, and on disk but not loaded (not in the policy).
    (base / "3").symlink_to(model_base / "1")
    before = config_file.read_text()
    for version, message in [
        (9, f"no version 9 on disk in {base} (versions there: 1, 2, 3)"),
        (3, f"version 3 is on disk in {base} but serving at {server.grpc_target} has not loaded it "
            "(state: not loaded); hand it to serving first: chexstack models handoff chexnet 3"),
    ]:  # fmt: skip
        refused = cli("models", "promote", MODEL_NAME, str(version), "--label", "stable", *flags)
        assert refused.returncode == 1, refused.stderr
        assert last_line(refused.stderr) == (
            f"error: refusing to promote 'chexnet' version {version} to 'stable': {message}"
        )
    missing = cli("models", "handoff", MODEL_NAME, "9", "--label", "canary", *flags)
    assert missing.returncode == 1
    assert last_line(missing.stderr) == (
        f"error: cannot hand off 'chexnet' version 9: no version 9 on disk in {base} "
        "(versions there: 1, 2, 3)"
    )
    assert config_file.read_text() == before

    # The hub API hands off as the CLI does: 3 (on disk, refused above) is loaded and becomes canary.
    with Hub.open(hub) as h:
        settings = Settings(h.path, model_config_file=config_file, serving=server.grpc_target)
        api = start_api(Service(h, settings), reruns=False)
        serve_in_thread(api)
        try:
            url = f"{api.url}/v1/models/{MODEL_NAME}/handoff"
            res = requests.post(url, json={"version": 3, "label": "canary"}, timeout=120)
            assert res.status_code == 200, res.text
            assert res.json()["job"]["results"] == {
                "label": "canary", "version": 3, "previous_version": 2, "applied": True
            }  # fmt: skip
            res = requests.post(url, json={"version": 8}, timeout=120)
            assert res.status_code == 404
            assert res.json()["error"] == (
                f"cannot hand off 'chexnet' version 8: no version 8 on disk in {base} "
                "(versions there: 1, 2, 3)"
            )
        finally:
            api.shutdown()
            api.server_close()
    assert served_version(server, "canary") == 3

    # A version serving cannot load (an empty directory): the hand-off gives up naming serving's state,
    # after adding it to the policy but before moving the label.
    (base / "4").mkdir()
    broken = cli("models", "handoff", MODEL_NAME, "4", "--label", "canary", "--wait-s", "5", *flags)
    assert broken.returncode == 1
    line = last_line(broken.stderr)
    assert line.startswith(
        f"error: serving at {server.grpc_target} has not loaded version 4 of 'chexnet' (state: "
    ), line
    assert "its version policy: specific 1,2,3,4" in line
    config = modelsconfig.read(config_file)
    assert modelsconfig.labels(config, MODEL_NAME) == {"canary": 3, "stable": 2}
    assert served_version(server, "canary") == 3
    with Hub.open(hub) as h:
        failed = h.list_jobs(kind="serve", limit=1)[0]
        assert (failed.spec["action"], failed.status, failed.model_version) == ("handoff", "failed", 4)
