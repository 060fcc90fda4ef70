"""The streaming path for real: broker, `chexstack serve`, preprocess and router processes.

upload -> xray.uploaded -> preprocess -> xray.preprocessed -> route -> serving -> xray.predictions
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from chexstack.ab import choose_variant
from chexstack.blobstore import open_store
from chexstack.bus import client_config, make_producer, produce_sync
from chexstack.deid import load_or_create_key, pseudonym
from chexstack.ingest.uploader import Uploader
from chexstack.messages import DeadLetter, Prediction, Uploaded, decode
from chexstack.predictions import read_predictions
from chexstack.synth import make_dicom, make_jpeg, make_png, render_radiograph
from chexstack.topics import Topics
from tests.integration.conftest import ServeFactory
from tests.integration.workers import Proc, running_workers

pytestmark = pytest.mark.integration


def read_topic(kafka: str, topic: str, timeout_s: float = 10) -> list[tuple[str | None, bytes]]:
    """Every committed message of a topic, from the beginning to its current end."""
    c = Consumer(
        {
            **client_config(kafka),  # the caller's Kafka login, if any (the platform's tiers: admin)
            "group.id": f"t-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        parts = list(c.list_topics(topic, timeout=10).topics[topic].partitions)
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[tuple[str | None, bytes]] = []
        eof: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while eof != set(parts) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                continue
            out.append((m.key().decode() if m.key() else None, m.value()))
        return out
    finally:
        c.close()


def make_uploads(count: int, seed: int) -> list[tuple[str, bytes]]:
    """A mix of PNG (8/16-bit), JPEG and DICOM synthetic radiographs."""
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        px = render_radiograph(rng, ["Cardiomegaly"] if i % 2 else [], size=256)
        kind = i % 4
        if kind == 0:
            files.append((f"img{i}.png", make_png(px)))
        elif kind == 1:
            files.append((f"img{i}.png", make_png(px, bits=16)))
        elif kind == 2:
            files.append((f"img{i}.jpg", make_jpeg(px)))
        else:
            files.append((f"img{i}.dcm", make_dicom(px, patient_id=f"SYN-{seed}-{i}")))
    return files


def upload(uploader: Uploader, files: list[tuple[str, bytes]], patient_id: str | None = None) -> list[str]:
    ids = []
    for name, data in files:
        res = uploader.upload_bytes(data, name, patient_id=patient_id)
        assert res.image_id is not None, f"{name} rejected: {res.reason}"
        ids.append(res.image_id)
    return ids


def wait_predictions(kafka: str, t: Topics, ids: list[str], timeout_s: float = 300) -> list[Prediction]:
    preds = list(read_predictions(kafka, t.predictions, image_ids=ids, timeout_s=timeout_s))
    missing = set(ids) - {p.image_id for p in preds}
    assert not missing, f"{len(missing)} of {len(ids)} images got no prediction"
    return preds


def test_two_preprocess_two_routers_exactly_one_prediction_each(
    kafka: str,
    topics: dict[str, str],
    pipeline_env: dict[str, str],
    uploader: Uploader,
    serve_factory: ServeFactory,
    model_base: Path,
    tmp_path: Path,
) -> None:
    t = Topics(topics["prefix"])
    server = serve_factory(["--enable-batching"], model_base=model_base)
    env = {**pipeline_env, "CHEXSTACK_SERVING": server.grpc_target}
    with running_workers(env, tmp_path) as w:
        pre = [w.start("preprocess"), w.start("preprocess")]
        route = [w.start("route"), w.start("route")]
        w.wait_assigned(pre + route)

        ids = upload(uploader, make_uploads(24, seed=1))
        # Poison: not JSON, a reference to a blob that does not exist, garbage pixels for the router.
        producer = make_producer(kafka)
        produce_sync(producer, t.uploaded, "poison-1", b"this is not json")
        missing = Uploaded(
            image_id="f" * 32,
            sha256="f" * 64,
            blob_uri="blob://sha256/" + "f" * 64,
            format="png",
            size_bytes=1,
            width=1,
            height=1,
            uploaded_at_ms=1,
        )
        produce_sync(producer, t.uploaded, missing.image_id, missing.to_bytes())
        produce_sync(producer, t.preprocessed, "poison-3", b'{"schema": "xray.preprocessed/v1"}')

        preds = wait_predictions(kafka, t, ids)
        late = upload(uploader, make_uploads(2, seed=2))  # workers are still alive after the poison
        wait_predictions(kafka, t, late)
        w.stop_all()
        for p in pre + route:
            assert p.consumed() > 0, f"{p.name} did no work:\n{p.text()[-2000:]}"

    per_image = Counter(decode(Prediction, v).image_id for _, v in read_topic(kafka, t.predictions))
    assert per_image == Counter({i: 1 for i in ids + late}), "every upload gets exactly one prediction"
    assert {(p.model_name, p.model_version, p.variant) for p in preds} == {("chexnet", 2, "latest")}
    assert all(len(p.probabilities) == 14 and p.latency.end_to_end_ms > 0 for p in preds)

    letters = [decode(DeadLetter, v) for _, v in read_topic(kafka, t.dlq)]
    reasons = {lt.source_topic: [] for lt in letters}  # type: dict[str, list[str]]
    for lt in letters:
        reasons[lt.source_topic].append(lt.reason)
    assert len(letters) == 3, reasons
    assert any("not UTF-8 JSON" in r for r in reasons[t.uploaded])
    assert any("blob" in r for r in reasons[t.uploaded])
    assert any("Preprocessed" in r for r in reasons[t.preprocessed])


def test_serving_stopped_and_restarted_mid_stream_loses_nothing(
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
    with running_workers(env, tmp_path) as w:
        health = tmp_path / "route.health"
        procs = [
            w.start("preprocess"),
            w.start("route", "--serving-timeout-s", "5", "--health-file", str(health)),
        ]
        w.wait_assigned(procs)
        first = upload(uploader, make_uploads(4, seed=3))
        wait_predictions(kafka, t, first)

        server.stop()
        second = upload(uploader, make_uploads(8, seed=4))
        # Let the router hit the outage before serving comes back.
        deadline = time.monotonic() + 60
        while "retrying" not in procs[1].text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "retrying" in procs[1].text(), procs[1].text()[-2000:]
        # A router waiting out an outage is alive: its health file keeps being touched.
        beat = health.stat().st_mtime
        time.sleep(6)
        assert health.stat().st_mtime > beat
        server.start()
        wait_predictions(kafka, t, second)

    per_image = Counter(decode(Prediction, v).image_id for _, v in read_topic(kafka, t.predictions))
    assert per_image == Counter({i: 1 for i in first + second})
    assert read_topic(kafka, t.dlq) == []


def set_weights(env: dict[str, str], weights: dict[str, int]) -> None:
    """Publish A/B weights for chexnet with the CLI, as an operator would."""
    args = [f"{name}={weight}" for name, weight in weights.items()]
    ab = subprocess.run(
        [sys.executable, "-m", "chexstack", "ab", "set", "chexnet", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ab.returncode == 0, ab.stderr


def wait_weights_applied(router: Proc, weights: dict[str, int], timeout_s: float = 30) -> None:
    """Wait for the router's log line saying it follows these weights: from then on it routes by them."""
    line = f"A/B weights for chexnet: {weights}"
    deadline = time.monotonic() + timeout_s
    while line not in router.text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert line in router.text(), router.text()[-2000:]


def test_ab_weights_change_live_and_stick_per_patient(
    kafka: str,
    topics: dict[str, str],
    pipeline_env: dict[str, str],
    uploader: Uploader,
    store_dir: Path,
    serve_factory: ServeFactory,
    model_base: Path,
    tmp_path: Path,
) -> None:
    t = Topics(topics["prefix"])
    config = tmp_path / "models.config"
    config.write_text(
        "model_config_list {\n  config {\n    name: 'chexnet'\n"
        f"    base_path: '{model_base}'\n    model_platform: 'tensorflow'\n"
        "    model_version_policy { specific { versions: 1 versions: 2 } }\n"
        "    version_labels { key: 'stable' value: 1 }\n    version_labels { key: 'canary' value: 2 }\n"
        "  }\n}\n"
    )
    server = serve_factory(config=config.read_text())
    env = {**pipeline_env, "CHEXSTACK_SERVING": server.grpc_target}
    with running_workers(env, tmp_path) as w:
        procs = [w.start("preprocess"), w.start("route", "--ab-weights", "stable=100")]
        w.wait_assigned(procs)
        ids = upload(uploader, make_uploads(3, seed=5))
        assert {(p.variant, p.model_version) for p in wait_predictions(kafka, t, ids)} == {("stable", 1)}

        set_weights(env, {"stable": 0, "canary": 100})
        wait_weights_applied(procs[1], {"stable": 0, "canary": 100})
        ids = upload(uploader, make_uploads(3, seed=6))
        assert {(p.variant, p.model_version) for p in wait_predictions(kafka, t, ids)} == {("canary", 2)}

        split = {"stable": 50, "canary": 50}
        set_weights(env, split)
        wait_weights_applied(procs[1], split)
        # The router's sticky key is the patient's pseudonym: take the first patient the split sends
        # to each variant, so stickiness is shown apart from "everything lands on one variant".
        key = load_or_create_key(open_store(str(store_dir)), None)  # the uploader's key
        patients: dict[str, str] = {}  # variant -> patient ID
        for pid in (f"MRN-STICKY-{n}" for n in range(100)):
            patients.setdefault(choose_variant(split, pseudonym(key, pid), "chexnet"), pid)
        assert set(patients) == {"stable", "canary"}
        expected = {(pseudonym(key, pid), variant) for variant, pid in patients.items()}
        # Alternating, so both patients' images share the router's batches.
        ids = []
        for i, file in enumerate(make_uploads(8, seed=7)):
            ids += upload(uploader, [file], patient_id=list(patients.values())[i % 2])
        preds = wait_predictions(kafka, t, ids)
        # Each patient's images all land on its one variant, and the two patients on different ones.
        assert {(p.patient, p.variant) for p in preds} == expected
        assert Counter(p.patient for p in preds) == Counter({patient: 4 for patient, _ in expected})
        assert {(p.variant, p.model_version) for p in preds} == {("stable", 1), ("canary", 2)}
