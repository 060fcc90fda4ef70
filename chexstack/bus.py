"""Kafka clients with the settings every CheXStack service shares (confluent-kafka / librdkafka)."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """A message was not acknowledged by the broker."""


def producer_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        # Idempotent: retries never duplicate or reorder a message within a partition.
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": 5,
        "message.max.bytes": 2_000_000,
    }
    cfg.update(extra)
    return cfg


def make_producer(bootstrap: str, **extra: Any) -> Producer:
    return Producer(producer_config(bootstrap, **extra))


def consumer_config(bootstrap: str, group: str, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,  # offsets are committed only after the output is acknowledged
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        "max.poll.interval.ms": 300_000,
    }
    cfg.update(extra)
    return cfg


def make_consumer(bootstrap: str, group: str, **extra: Any) -> Consumer:
    return Consumer(consumer_config(bootstrap, group, **extra))


def produce_sync(
    producer: Producer, topic: str, key: str | bytes | None, value: bytes, timeout_s: float = 30.0
) -> Message:
    """Produce one message and wait for the broker's acknowledgement; raise PublishError otherwise."""
    result: dict[str, Any] = {}

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        result["err"], result["msg"] = err, msg

    producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
    remaining = producer.flush(timeout_s)
    if remaining or "msg" not in result:
        raise PublishError(f"no acknowledgement from Kafka for {topic} within {timeout_s:.0f} s")
    if result["err"] is not None:
        raise PublishError(f"Kafka refused the message for {topic}: {result['err']}")
    msg: Message = result["msg"]
    return msg


def raise_on_error(msg: Message) -> None:
    err = msg.error()
    if err is not None:
        raise KafkaException(err)
