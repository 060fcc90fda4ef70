"""The project's broker manager and topics, against the real broker it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from chexstack.broker import Broker
from chexstack.bus import make_producer, produce_sync
from chexstack.messages import AbConfig
from chexstack.topics import ensure_topics
from tests.conftest import free_port_pair

pytestmark = pytest.mark.integration


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chexstack", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


def test_kafka_up_down_status_cli(tmp_path: Path) -> None:
    port = free_port_pair()
    data = tmp_path / "kafka"
    address = f"127.0.0.1:{port}"
    args = ["--data-dir", str(data), "--kafka", address]
    other_port = free_port_pair()
    while abs(other_port - port) < 2:  # two brokers' port pairs must not overlap
        other_port = free_port_pair()
    other = f"127.0.0.1:{other_port}"
    assert cli("kafka", "status", *args).returncode == 1
    up = cli("kafka", "up", *args, "--partitions", "2")
    assert up.returncode == 0, up.stderr
    assert f"kafka started on {address}, data in {data}" in up.stdout
    assert "xray.uploaded" in up.stdout
    try:
        pid = int((data / "broker.pid").read_text())
        again = cli("kafka", "up", *args)
        assert f"kafka already running on {address}, data in {data}" in again.stdout
        status = cli("kafka", "status", *args)
        assert (status.returncode, status.stdout) == (
            0,
            f"kafka running (pid {pid}) on {address}, data in {data}\n",
        )
        md = AdminClient({"bootstrap.servers": address}).list_topics(timeout=10)
        assert len(md.topics["xray.uploaded"].partitions) == 2

        # The same data dir on another port: its broker runs on `port`, and `up` says so, starting nothing.
        moved = cli("kafka", "up", "--data-dir", str(data), "--kafka", other)
        assert (moved.returncode, moved.stdout) == (1, "")
        assert moved.stderr == (
            f"error: kafka in {data} already runs on {address}, not {other}: "
            f"stop it first or use --kafka {address}\n"
        )
        assert int((data / "broker.pid").read_text()) == pid
        assert not Broker(tmp_path / "unused", port=other_port).accepts_connections()
        elsewhere = cli("kafka", "status", "--data-dir", str(data), "--kafka", other)
        assert elsewhere.returncode == 1
        assert elsewhere.stdout == f"kafka running (pid {pid}) on {address}, not {other}, data in {data}\n"

        # Another data dir on the port this broker holds (or its controller port): refused at once.
        data2 = tmp_path / "kafka2"
        for clash in (port, port - 1):
            taken = cli("kafka", "up", "--data-dir", str(data2), "--kafka", f"127.0.0.1:{clash}")
            assert taken.returncode == 1
            assert len(taken.stderr.splitlines()) == 1, taken.stderr
            assert f"error: port {port} " in taken.stderr and "is taken by another process" in taken.stderr
            assert f"(the broker of data dir {data}, on {address})" in taken.stderr
            assert not (data2 / "broker.pid").exists()
        status2 = cli("kafka", "status", "--data-dir", str(data2), "--kafka", address)
        assert status2.returncode == 1
        assert status2.stdout.startswith(
            f"kafka not running in {data2} ({address}); port {port} on 127.0.0.1"
        )
    finally:
        # `down` with another --kafka stops the data dir's broker and says where it ran.
        down = cli("kafka", "down", "--data-dir", str(data), "--kafka", other)
    assert down.stdout == f"kafka stopped (pid {pid}) on {address} (not {other}), data in {data}\n"
    status = cli("kafka", "status", *args)
    assert (status.returncode, status.stdout) == (1, f"kafka not running in {data} ({address})\n")
    # Data survives a restart, also on another address: the topics are still there.
    assert cli("kafka", "up", "--data-dir", str(data), "--kafka", other).returncode == 0
    try:
        md = AdminClient({"bootstrap.servers": other}).list_topics(timeout=10)
        assert "xray.predictions" in md.topics
    finally:
        down = cli("kafka", "down", "--data-dir", str(data), "--kafka", other)
    assert down.stdout.startswith("kafka stopped (pid ") and f"on {other}, data in {data}" in down.stdout


def test_topics_created_with_partitions_retention_and_compaction(kafka: str) -> None:
    created = ensure_topics(kafka, partitions=5, retention_ms=3_600_000, prefix="cfg.")
    assert sorted(created) == sorted(
        f"cfg.{t}"
        for t in ["xray.uploaded", "xray.preprocessed", "xray.predictions", "xray.dlq", "chexstack.control"]
    )
    assert ensure_topics(kafka, 5, 3_600_000, prefix="cfg.") == []  # idempotent
    admin = AdminClient({"bootstrap.servers": kafka})
    md = admin.list_topics(timeout=10)
    assert len(md.topics["cfg.xray.preprocessed"].partitions) == 5
    res = [ConfigResource("topic", "cfg.xray.uploaded"), ConfigResource("topic", "cfg.chexstack.control")]
    configs = {r.name: f.result() for r, f in admin.describe_configs(res).items()}
    assert configs["cfg.xray.uploaded"]["retention.ms"].value == "3600000"
    assert configs["cfg.chexstack.control"]["cleanup.policy"].value == "compact"


def test_messages_are_readable_with_kcat(kafka: str, topics: dict[str, str]) -> None:
    cfg = AbConfig(model_name="chexnet", weights={"stable": 90, "canary": 10})
    produce_sync(make_producer(kafka), topics["chexstack.control"], cfg.key_for("chexnet"), cfg.to_bytes())
    out = subprocess.run(
        ["kcat", "-b", kafka, "-C", "-t", topics["chexstack.control"], "-c", "1", "-e", "-f", "%k\t%s\n"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    key, value = out.strip().split("\t", 1)
    assert key == "ab/chexnet"
    assert json.loads(value)["weights"] == {"stable": 90, "canary": 10}
