"""Poison messages for real: every kind of bad value on each worker's input topic and on the control topic.

Before, a 4,301-digit number (ValueError) or deep nesting (RecursionError) escaped the handlers: the
worker ended before committing and its successor read the same message again, forever. A bad record on
the compacted control topic ended every later router start. Now each becomes a dead letter naming why
(or, on the control topic, a log line), the workers stay up, and later messages flow. Valid weights
naming a label serving does not know are refused the same way: they would dead-letter every image.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chexstack.ab import publish_weights
from chexstack.bus import make_producer, produce_sync
from chexstack.cli import app
from chexstack.ingest.uploader import Uploader
from chexstack.messages import AbConfig, DeadLetter, decode
from chexstack.topics import Topics
from chexstack.workers.base import MAX_PAYLOAD_BYTES
from tests.integration.conftest import ServeFactory, models_config
from tests.integration.test_pipeline import make_uploads, read_topic, upload, wait_predictions
from tests.integration.workers import Proc, running_workers
from tests.poison import POISON

pytestmark = pytest.mark.integration


def wait_log(proc: Proc, needle: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while needle not in proc.text() and time.monotonic() < deadline:
        assert proc.proc.poll() is None, f"{proc.name} exited {proc.proc.returncode}:\n{proc.text()[-3000:]}"
        time.sleep(0.2)
    assert needle in proc.text(), f"{proc.name} never logged {needle!r}:\n{proc.text()[-3000:]}"


def test_poison_on_every_topic_never_stops_the_workers_and_later_messages_flow(
    kafka: str,
    topics: dict[str, str],
    pipeline_env: dict[str, str],
    uploader: Uploader,
    serve_factory: ServeFactory,
    model_base: Path,
    tmp_path: Path,
) -> None:
    t = Topics(topics["prefix"])
    server = serve_factory(config=models_config(model_base, labels={"stable": 1, "canary": 2}))
    env = {**pipeline_env, "CHEXSTACK_SERVING": server.grpc_target}
    key = AbConfig.key_for("chexnet")
    producer = make_producer(kafka)
    # Control: bad records are the newest for the router's key when it starts. Compaction keeps them,
    # so every later router start reads them first.
    publish_weights(kafka, t.control, "chexnet", {"stable": 0, "canary": 100})
    control_poison = {n: v for n, (v, _) in POISON.items() if v is not None}  # a tombstone is a reset
    control_poison["other-model"] = AbConfig(model_name="other", weights={"stable": 100}).to_bytes()
    for record in control_poison.values():
        produce_sync(producer, t.control, key, record)
    produce_sync(producer, t.control, b"\xff\xfe", b"[" * 100_000)  # a key that is not even UTF-8

    with running_workers(env, tmp_path) as w:
        procs = [w.start("preprocess"), w.start("route")]
        router = procs[1]
        w.wait_assigned(procs)
        wait_log(router, "A/B weights for chexnet: {'stable': 0, 'canary': 100}")
        assert router.text().count("control topic: ignoring") == len(control_poison), router.text()[-4000:]

        # Inputs: every poison on both input topics, then uploads, which get through only if the workers
        # went on. The weights read before the control poison still route: canary only.
        for topic in (t.uploaded, t.preprocessed):
            for name, (value, _) in POISON.items():
                produce_sync(producer, topic, f"poison-{name}", value)
        preds = wait_predictions(kafka, t, upload(uploader, make_uploads(2, seed=11)), timeout_s=180)
        assert {(p.variant, p.model_version) for p in preds} == {("canary", 2)}

        # Control poison while following, then good weights: the follower is still reading.
        for record in control_poison.values():
            produce_sync(producer, t.control, key, record)
        publish_weights(kafka, t.control, "chexnet", {"stable": 100, "canary": 0})
        wait_log(router, "A/B weights for chexnet: {'stable': 100, 'canary': 0}")
        assert router.text().count("control topic: ignoring") == 2 * len(control_poison)

        # Valid weights naming a label serving does not know: every image would be a NOT_FOUND dead
        # letter. The router refuses them and keeps routing by the last good ones.
        publish_weights(kafka, t.control, "chexnet", {"stable": 0, "beta": 100})
        wait_log(router, "control topic: refusing the A/B weights {'stable': 0, 'beta': 100}")
        assert "knows no label 'beta' for 'chexnet'" in router.text()
        preds = wait_predictions(kafka, t, upload(uploader, make_uploads(2, seed=12)), timeout_s=180)
        assert {(p.variant, p.model_version) for p in preds} == {("stable", 1)}
        for p in procs:
            assert p.proc.poll() is None, f"{p.name} exited {p.proc.returncode}:\n{p.text()[-3000:]}"
        w.stop_all()

    # Exactly one dead letter per input poison, none for the control topic or the uploads.
    letters = [decode(DeadLetter, v) for _, v in read_topic(kafka, t.dlq)]
    got = {(lt.source_topic, lt.key): lt for lt in letters}
    assert len(letters) == 2 * len(POISON), sorted(got)
    for topic, worker in ((t.uploaded, "preprocess"), (t.preprocessed, "router")):
        for name, (value, needle) in POISON.items():
            letter = got[(topic, f"poison-{name}")]
            assert needle in letter.reason, (topic, name, letter.reason)
            assert letter.worker == worker
            assert letter.payload_bytes == len(value or b"")
            # The original is kept for a replay; an oversized one only up to the limit, so that the
            # dead letter itself stays under the broker's message size limit.
            assert base64.b64decode(letter.payload_b64) == (value or b"")[:MAX_PAYLOAD_BYTES]
    # `predictions --image-id` names a dead-lettered image with the reason instead of waiting for it,
    # next to an image that was predicted.
    result = CliRunner().invoke(
        app,
        ["predictions", "--image-id", "poison-not-json", "--image-id", preds[0].image_id, "--timeout", "60"],
        env={"CHEXSTACK_KAFKA": kafka, "CHEXSTACK_TOPIC_PREFIX": t.prefix},
    )
    assert result.exit_code == 1, result.output
    assert preds[0].image_id in result.stdout and "poison-not-json" not in result.stdout
    assert f"poison-not-json: no prediction: in {t.dlq} since " in result.stderr, result.stderr
    assert "not UTF-8 JSON" in result.stderr, result.stderr  # (preprocess and router both refused it)
    # And each worker said so in its log, one line per dead letter: no image goes to the DLQ silently.
    for proc, topic in ((procs[0], t.uploaded), (procs[1], t.preprocessed)):
        for name in POISON:
            line = f"dead letter for 'poison-{name}' in {t.dlq}: {topic}: "
            assert proc.text().count(line) == 1, (proc.name, line, proc.text()[-3000:])
