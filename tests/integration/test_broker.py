"""The project's broker manager and topics, against the real broker it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

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
    data = str(tmp_path / "kafka")
    args = ["--data-dir", data, "--port", str(port)]
    assert cli("kafka", "status", *args).returncode == 1
    up = cli("kafka", "up", *args, "--partitions", "2")
    assert up.returncode == 0, up.stderr
    assert f"kafka started on 127.0.0.1:{port}" in up.stdout
    assert "xray.uploaded" in up.stdout
    try:
        again = cli("kafka", "up", *args)
        assert "already running" in again.stdout
        status = cli("kafka", "status", *args)
        assert status.returncode == 0 and "running" in status.stdout
        md = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10)
        assert len(md.topics["xray.uploaded"].partitions) == 2
    finally:
        down = cli("kafka", "down", *args)
    assert "stopped" in down.stdout
    assert cli("kafka", "status", *args).returncode == 1
    # Data survives a restart: the topics are still there.
    assert cli("kafka", "up", *args).returncode == 0
    try:
        md = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10)
        assert "xray.predictions" in md.topics
    finally:
        cli("kafka", "down", *args)


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
