"""`chexstack ab set` asks serving before it publishes: real broker, real `chexstack serve`.

Weights naming a label serving does not resolve would send every image of that variant to the DLQ
("Unrecognized servable version label"), so they are refused with the labels serving has, and nothing
reaches the control topic; with a hub the refusal is a failed request, not a recorded job.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from chexstack.ab import read_weights
from chexstack.cli import app
from chexstack.hub.store import Hub
from chexstack.topics import Topics
from tests.conftest import free_port
from tests.integration.conftest import ServeFactory, models_config

pytestmark = pytest.mark.integration


def ab_set(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["ab", "set", "chexnet", *args], env=env)
    return result.exit_code, result.output


def test_ab_set_refuses_labels_serving_does_not_have(
    kafka: str, topics: dict[str, str], serve_factory: ServeFactory, model_base: Path, tmp_path: Path
) -> None:
    t = Topics(topics["prefix"])
    env = {"CHEXSTACK_KAFKA": kafka, "CHEXSTACK_TOPIC_PREFIX": t.prefix, "CHEXSTACK_HOME": str(tmp_path)}

    # The README's first serve: --model-base-path, no labels at all.
    bare = serve_factory(model_base=model_base)
    code, out = ab_set({**env, "CHEXSTACK_SERVING": bare.grpc_target}, "stable=90", "canary=10")
    assert code == 1, out
    assert f"serving at {bare.grpc_target} knows no label 'canary', 'stable' for 'chexnet'" in out
    assert "it has none of canary, stable: a `chexstack serve --model-base-path` has no labels" in out
    assert read_weights(kafka, t.control, "chexnet") is None  # nothing was published

    # A serve with one of the two labels: the refusal names the one it has.
    labelled = serve_factory(config=models_config(model_base, labels={"stable": 1}))
    serving = {**env, "CHEXSTACK_SERVING": labelled.grpc_target}
    code, out = ab_set(serving, "stable=90", "canary=10")
    assert code == 1 and "knows no label 'canary'" in out and "its labels: stable -> version 1" in out, out
    assert read_weights(kafka, t.control, "chexnet") is None

    # What serving has, and a label without traffic, go through.
    code, out = ab_set(serving, "stable=100", "canary=0")
    assert code == 0, out
    config = read_weights(kafka, t.control, "chexnet")
    assert config is not None and config.weights == {"stable": 100, "canary": 0}

    # Serving that does not answer: refused, naming where it was asked.
    gone = f"127.0.0.1:{free_port()}"
    code, out = ab_set({**env, "CHEXSTACK_SERVING": gone}, "stable=50", "canary=50")
    assert code == 1 and f"cannot ask serving at {gone}" in out, out

    # Through the hub: the same refusal, and the hub records only the change that was made.
    hub_path = tmp_path / "hub.sqlite"
    code, out = ab_set(serving, "stable=10", "canary=90", "--hub", str(hub_path))
    assert code == 1 and "knows no label 'canary'" in out, out
    code, out = ab_set(serving, "stable=100", "--hub", str(hub_path))
    assert code == 0 and "hub job" in out, out
    with Hub.open(hub_path) as hub:
        jobs = hub.list_jobs(kind="serve", limit=None)
    assert [(j.spec["action"], j.status) for j in jobs] == [("ab", "succeeded")]
    # The job records the serving the check asked, not the default address.
    assert jobs[0].spec["serving"] == labelled.grpc_target, jobs[0].spec
