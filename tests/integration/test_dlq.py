"""Dead letters for real: a router asking serving for a model it does not have sends every image to the
DLQ; once the router is put right, `chexstack dlq replay` gives each of them one more try, exactly once.

Real broker, `chexstack serve`, preprocess and router processes, the CLI in-process.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chexstack.bus import make_producer, produce_sync
from chexstack.cli import app
from chexstack.dlq import read_letters
from chexstack.hub.store import Hub
from chexstack.ingest.uploader import Uploader
from chexstack.messages import MAX_VALUE_BYTES, Prediction, decode
from chexstack.topics import Topics
from tests.integration.conftest import ServeFactory
from tests.integration.test_pipeline import make_uploads, read_topic, upload, wait_predictions
from tests.integration.workers import running_workers

pytestmark = pytest.mark.integration


def dlq(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["dlq", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def wait_letters(kafka: str, topic: str, keys: set[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if keys <= {lt.letter.key for lt in read_letters(kafka, topic).letters}:
            return
        time.sleep(1)
    raise AssertionError(f"no dead letters for {sorted(keys)} within {timeout_s} s")


def test_dead_letters_are_listed_shown_and_replayed_once_the_cause_is_fixed(
    kafka: str,
    topics: dict[str, str],
    pipeline_env: dict[str, str],
    uploader: Uploader,
    serve_factory: ServeFactory,
    model_base: Path,
    tmp_path: Path,
) -> None:
    t = Topics(topics["prefix"])
    server = serve_factory(model_base=model_base)
    env = {**pipeline_env, "CHEXSTACK_SERVING": server.grpc_target}
    cli_env = {"CHEXSTACK_KAFKA": kafka, "CHEXSTACK_TOPIC_PREFIX": t.prefix, "CHEXSTACK_HOME": str(tmp_path)}
    with running_workers(env, tmp_path) as w:
        pre, wrong = w.start("preprocess"), w.start("route", "--model-name", "chexnet-typo")
        w.wait_assigned([pre, wrong])
        first, second = upload(uploader, make_uploads(2, seed=31))
        wait_letters(kafka, t.dlq, {first, second})
        # An original too large to keep whole: it can never be replayed, and replay says so.
        produce_sync(
            make_producer(kafka), t.uploaded, "too-big", b'{"pad": "' + b"x" * MAX_VALUE_BYTES + b'"}'
        )
        wait_letters(kafka, t.dlq, {"too-big"})

        code, out, err = dlq(cli_env, "list", "--reason", "chexnet-typo", "--json")
        listed = [json.loads(line) for line in out.splitlines()]
        assert code == 0 and sorted(d["key"] for d in listed) == sorted([first, second]), out + err
        assert all(d["worker"] == "router" and d["source_topic"] == t.preprocessed for d in listed), listed
        code, out, _ = dlq(cli_env, "show", first)
        assert code == 0 and f"from:       {t.preprocessed}" in out and "in router (ServingError)" in out, out
        assert "serving refused chexnet-typo/latest" in out and "NOT_FOUND" in out, out
        assert dlq(cli_env, "show", "0" * 32)[0] == 1
        assert dlq(cli_env, "replay")[0] == 2  # a replay needs a selection

        # The cause fixed: a router asking for the served model. Replay one image, then everything.
        wrong.stop()
        w.wait_assigned([w.start("route")])
        hub = tmp_path / "hub.sqlite"
        code, out, err = dlq(cli_env, "replay", "--image-id", first, "--hub", str(hub))
        assert code == 0 and out.startswith(f"{first}\t{t.preprocessed}\treplayed (hub job "), out + err
        wait_predictions(kafka, t, [first])
        code, out, err = dlq(cli_env, "replay", "--all")
        assert code == 1, out + err  # too-big cannot be replayed
        assert f"{first}\t{t.preprocessed}\tpredicted since: nothing to do" in out, out
        assert f"{second}\t{t.preprocessed}\treplayed" in out, out
        assert f"too-big\t{t.uploaded}\tskipped: only the first " in out, out
        wait_predictions(kafka, t, [second])
        # Again: both predicted since, nothing is published twice.
        code, out, _ = dlq(cli_env, "replay", "--reason", "chexnet-typo")
        assert code == 0 and out.count("predicted since: nothing to do") == 2, out
        time.sleep(3)  # a second publish would reach the router within this

    per_image = Counter(decode(Prediction, v).image_id for _, v in read_topic(kafka, t.predictions))
    assert per_image == Counter({first: 1, second: 1})
    with Hub.open(hub) as store:
        (job,) = store.list_jobs(kind="serve", limit=None)
    assert (job.spec["action"], job.status) == ("dlq-replay", "succeeded")
    assert job.spec["selection"]["image_ids"] == [first]
    assert job.results["replayed"] == [first]
    assert [lt["image_id"] for lt in job.spec["letters"]] == [first]
