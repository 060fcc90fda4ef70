"""Shared fixtures. `kafka` starts the project's real broker once per test session (no mocks)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chexstack.broker import Broker


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

    prefix = f"t{uuid.uuid4().hex[:8]}."
    admin = AdminClient({"bootstrap.servers": kafka})
    specs = t.specs(partitions=int(os.environ.get("CHEXSTACK_TEST_PARTITIONS", "3")))
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
