"""Kafka with SASL/SCRAM and ACLs for real: a broker started as `chexstack kafka up --kafka-auth` does.

The workers run as their own users and an upload flows end to end; anonymous clients, wrong passwords
and every service stepping outside its ACLs are refused by the broker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException

from chexstack import kafka_auth
from chexstack.blobstore import open_store
from chexstack.broker import Broker
from chexstack.bus import PublishError, ReadError, TopicReader, make_producer, produce_sync
from chexstack.deid import load_or_create_key
from chexstack.ingest.uploader import Uploader
from chexstack.settings import Limits
from chexstack.synth import make_png, render_radiograph
from chexstack.topics import Topics, ensure_topics
from tests.conftest import free_port_pair
from tests.integration.conftest import ServeFactory
from tests.integration.test_pipeline import wait_predictions
from tests.integration.workers import running_workers

pytestmark = pytest.mark.integration

CREDENTIAL_VARS = ("CHEXSTACK_KAFKA_USER", "CHEXSTACK_KAFKA_PASSWORD", "CHEXSTACK_KAFKA_PASSWORD_FILE")


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = Broker(tmp_path_factory.mktemp("kafka-auth"), port=free_port_pair(), auth=True)
    broker.up(timeout_s=120)
    try:
        yield broker
    finally:
        broker.down()


@pytest.fixture
def auth_topics(auth_broker: Broker) -> Topics:
    """This test's topics and the services' users and ACLs for them, as `kafka up --kafka-auth` does."""
    t = Topics(f"a{os.urandom(4).hex()}.")
    ensure_topics(auth_broker.bootstrap, 2, 3_600_000, prefix=t.prefix, security=auth_broker.admin_config())
    passwords = auth_broker.passwords()
    kafka_auth.apply(auth_broker.bootstrap, passwords, t)
    return t


def connect_as(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """This process's Kafka clients authenticate with `env` (none: anonymous)."""
    for name in CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def refused_write(bootstrap: str, topic: str) -> str:
    """Why the broker refused a write. A user who may write no topic at all (the notebooks') cannot even
    start an idempotent producer: a fatal CLUSTER_AUTHORIZATION_FAILED instead of a topic's refusal."""
    try:
        produce_sync(make_producer(bootstrap), topic, "forged", b"{}", timeout_s=10)
    except (PublishError, KafkaException) as exc:
        return str(exc)
    raise AssertionError(f"the broker accepted a write to {topic}")


def refused_read(bootstrap: str, topic: str) -> str:
    try:
        with TopicReader(bootstrap, topic, timeout_s=5) as reader:
            reader.start()
    except ReadError as exc:
        return str(exc)
    raise AssertionError(f"the broker let this client read {topic}")


def test_workers_as_their_own_users_carry_an_upload_end_to_end(
    auth_broker: Broker,
    auth_topics: Topics,
    serve_factory: ServeFactory,
    model_base: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = serve_factory(model_base=model_base)
    store_dir = tmp_path / "blobs"
    store_dir.mkdir()
    env = {
        "CHEXSTACK_KAFKA": auth_broker.bootstrap,
        "CHEXSTACK_STORE": str(store_dir),
        "CHEXSTACK_TOPIC_PREFIX": auth_topics.prefix,
        "CHEXSTACK_SERVING": server.grpc_target,
    }
    with running_workers(env, tmp_path) as w:
        pre = w.start("preprocess", env=auth_broker.client_env("preprocess"))
        route = w.start("route", env=auth_broker.client_env("router"))
        w.wait_assigned([pre, route])

        connect_as(monkeypatch, auth_broker.client_env("ingest"))
        store = open_store(str(store_dir))
        uploader = Uploader(
            bootstrap=auth_broker.bootstrap,
            store=store,
            key=load_or_create_key(store, None),
            limits=Limits(max_bytes=64 * 1024 * 1024, max_pixels=60_000_000),
            topics=auth_topics,
        )
        import numpy as np

        res = uploader.upload_bytes(
            make_png(render_radiograph(np.random.default_rng(3), [], size=256)), "a.png"
        )
        assert res.image_id is not None, res.reason
        (pred,) = wait_predictions(auth_broker.bootstrap, auth_topics, [res.image_id], timeout_s=180)
        assert len(pred.probabilities) == 14
        w.stop_all()
        for p in (pre, route):
            assert p.consumed() == 1, f"{p.name}:\n{p.text()[-2000:]}"


def test_the_broker_refuses_strangers_and_services_outside_their_acls(
    auth_broker: Broker, auth_topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    bootstrap, t = auth_broker.bootstrap, auth_topics

    connect_as(monkeypatch, {})  # anonymous: the listener speaks SASL only
    assert "no answer from Kafka" in refused_read(bootstrap, t.predictions)
    connect_as(
        monkeypatch, {"CHEXSTACK_KAFKA_USER": "ingest", "CHEXSTACK_KAFKA_PASSWORD": "not-the-password"}
    )
    assert "no answer from Kafka" in refused_read(bootstrap, t.predictions)

    denied = "TOPIC_AUTHORIZATION_FAILED"
    connect_as(monkeypatch, auth_broker.client_env("ingest"))
    assert "may not read topic " + t.preprocessed in refused_read(bootstrap, t.preprocessed)  # pixels
    assert denied in refused_write(bootstrap, t.predictions)  # a forged prediction
    assert denied in refused_write(bootstrap, t.control)  # A/B weights
    connect_as(monkeypatch, auth_broker.client_env("preprocess"))
    assert denied in refused_write(bootstrap, t.predictions)
    assert "may not read topic " + t.control in refused_read(bootstrap, t.control)
    connect_as(monkeypatch, auth_broker.client_env("router"))
    assert denied in refused_write(bootstrap, t.control)
    assert denied in refused_write(bootstrap, t.uploaded)
    connect_as(monkeypatch, auth_broker.client_env("hub"))
    assert "may not read topic " + t.predictions in refused_read(bootstrap, t.predictions)
    connect_as(monkeypatch, auth_broker.client_env("notebook"))  # uploads go through the ingest service
    for topic in (t.uploaded, t.predictions, t.control):
        assert "AUTHORIZATION_FAILED" in refused_write(bootstrap, topic)

    # What each may do, it can: the refusals above are the ACLs, not a broken login.
    connect_as(monkeypatch, auth_broker.client_env("hub"))
    produce_sync(make_producer(bootstrap), t.control, "chexnet", b"{}", timeout_s=10)
    connect_as(monkeypatch, auth_broker.client_env("ingest"))
    with TopicReader(bootstrap, t.dlq, timeout_s=10) as reader:
        reader.start()
        assert list(reader.messages(timeout_s=10)) == []


def test_apply_takes_back_what_an_earlier_release_granted(
    auth_broker: Broker, auth_topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker set up by an earlier release let the notebooks publish uploads; `apply` (every `make up`)
    deletes that right, so an upgraded platform is as strict as a new one."""
    from confluent_kafka.admin import AdminClient

    bootstrap, t = auth_broker.bootstrap, auth_topics
    admin = AdminClient({"bootstrap.servers": bootstrap, **auth_broker.admin_config()})
    for fut in admin.create_acls([kafka_auth._binding(a) for a in kafka_auth.retired_acls(t)]).values():
        fut.result()
    connect_as(monkeypatch, auth_broker.client_env("notebook"))
    produce_sync(make_producer(bootstrap), t.uploaded, "earlier", b"{}", timeout_s=10)  # the old right

    kafka_auth.apply(bootstrap, auth_broker.passwords(), t)
    assert "AUTHORIZATION_FAILED" in refused_write(bootstrap, t.uploaded)
    # Applying again finds nothing to take back and changes nothing.
    kafka_auth.apply(bootstrap, auth_broker.passwords(), t)
    assert "AUTHORIZATION_FAILED" in refused_write(bootstrap, t.uploaded)
