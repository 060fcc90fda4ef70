"""Shared fixtures. `kafka` starts the project's real broker once per test session (no mocks);
`e2e_platform` deploys the whole platform once per test session for the e2e, security and browser tiers."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chexstack.broker import Broker
from chexstack.settings import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, Limits
from tests import platform_instance

# The upload limits the CLI and the roles default to.
LIMITS = Limits(max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_port_pair() -> int:
    """A port p where p and p+1 are both free (broker + its controller)."""
    for _ in range(50):
        p = free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue
    raise RuntimeError("no free port pair")


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real single-node KRaft broker started for this test session."""
    broker = Broker(tmp_path_factory.mktemp("kafka"), port=free_port_pair())
    broker.up(timeout_s=120)
    try:
        yield broker.bootstrap
    finally:
        broker.down()


@pytest.fixture
def topics(kafka: str) -> dict[str, str]:
    """Fresh, uniquely named topics for one test, so tests never see each other's messages.

    Returns a mapping from the canonical topic name to this test's name; pass it to components
    through their topic-prefix option.
    """
    from confluent_kafka.admin import AdminClient, NewTopic

    from chexstack import topics as t
    from chexstack.commands.kafka import DEFAULT_RETENTION_MS

    prefix = f"t{uuid.uuid4().hex[:8]}."
    admin = AdminClient({"bootstrap.servers": kafka})
    specs = t.specs(int(os.environ.get("CHEXSTACK_TEST_PARTITIONS", "3")), DEFAULT_RETENTION_MS)
    futs = admin.create_topics(
        [
            NewTopic(prefix + s.name, num_partitions=s.partitions, replication_factor=1, config=s.config)
            for s in specs
        ]
    )
    for f in futs.values():
        f.result()
    return {s.name: prefix + s.name for s in specs} | {"prefix": prefix}


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    d = tmp_path / "blobs"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def e2e_platform() -> Iterator[platform_instance.Platform]:
    """The isolated platform instance (tests/e2e/platform-vars.yml), deployed once per pytest process.

    tests/e2e/test_platform.py, tests/security/ and tests/browser/ share this one deployment (`make e2e`
    runs them in one process; a second deployment would cost about 15 minutes): the instance's
    containers, volumes and files are removed, `make up` deploys it from scratch (images are the
    engine's cache), and everything is removed again at the end of the session.

    Development: with CHEXSTACK_E2E_REUSE=1 a running instance whose containers are all healthy is reused
    as it is (`first_run` is then None); when none runs, `make up` deploys it without removing anything
    first. Either way `reused` is True (the tests that judge a run from scratch skip) and the instance is
    left running at the end, for the next run. Deploy it by hand with
    `make up ARGS="-e @tests/e2e/platform-vars.yml -e chexstack_image_source=bootstrap"`. CI never sets it.
    """
    reuse = os.environ.get("CHEXSTACK_E2E_REUSE", "") == "1"
    # The tests' own Kafka clients (read_predictions, probes) log in as the admin once the instance
    # exists; a probe that needs a service's rights asks for that user (platform_instance.kafka_env).
    running = reuse and platform_instance.healthy(platform_instance.containers())
    if not reuse:
        platform_instance.remove_instance()  # from scratch
    try:
        first_run = None if running else platform_instance.make("up")
        with pytest.MonkeyPatch.context() as mp:
            for name, value in platform_instance.kafka_env("admin").items():
                mp.setenv(name, value)
            yield platform_instance.Platform(first_run=first_run, reused=reuse)
    finally:
        if not reuse:
            platform_instance.remove_instance()
