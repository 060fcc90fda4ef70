"""Every poison value through the real decoders and worker handlers (confluent_kafka.Message objects):
each becomes a dead letter naming why, and none escapes a handler to end the worker."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from confluent_kafka import Message

from chexstack.blobstore import open_store
from chexstack.messages import SCHEMAS, BadMessage, DeadLetter, decode
from chexstack.serving_client import ServingClient
from chexstack.settings import Limits
from chexstack.topics import Topics
from chexstack.workers.base import MAX_PAYLOAD_BYTES, Output, dead_letter
from chexstack.workers.preprocess import handle_uploaded
from chexstack.workers.router import Router
from tests.poison import POISON

TOPICS = Topics("t.")


def messages(topic: str) -> list[Message]:
    return [
        Message(topic=topic, partition=0, offset=i, key=f"poison-{name}".encode(), value=value)
        for i, (name, (value, _)) in enumerate(POISON.items())
    ]


def check_letters(outputs: list[Output], topic: str, worker: str) -> None:
    assert [o.topic for o in outputs] == [TOPICS.dlq] * len(POISON)
    for out, (name, (value, needle)) in zip(outputs, POISON.items(), strict=True):
        letter = decode(DeadLetter, out.value)
        assert (letter.source_topic, letter.key, letter.worker) == (topic, f"poison-{name}", worker)
        assert needle in letter.reason, (name, letter.reason)
        assert base64.b64decode(letter.payload_b64) == (value or b"")[:MAX_PAYLOAD_BYTES]
        assert letter.payload_bytes == len(value or b"")


@pytest.mark.parametrize("name", sorted(POISON))
@pytest.mark.parametrize("topic", sorted(SCHEMAS))
def test_decode_refuses_each_poison_for_each_schema(topic: str, name: str) -> None:
    value, needle = POISON[name]
    with pytest.raises(BadMessage, match=needle):
        decode(SCHEMAS[topic], value)


def test_preprocess_handler_dead_letters_every_poison(tmp_path: Path) -> None:
    outputs = handle_uploaded(
        messages(TOPICS.uploaded),
        store=open_store(str(tmp_path)),
        topics=TOPICS,
        limits=Limits(max_bytes=1 << 20, max_pixels=1 << 22),
    )
    check_letters(outputs, TOPICS.uploaded, "preprocess")


def test_router_handler_dead_letters_every_poison_without_calling_serving() -> None:
    # Nothing listens on port 1: a message that reached serving would raise Retry (unavailable).
    client = ServingClient("127.0.0.1:1", timeout_s=1)
    try:
        router = Router(serving=client, model_name="chexnet", topics=TOPICS, static_weights={"stable": 1})
        check_letters(router.handle(messages(TOPICS.preprocessed)), TOPICS.preprocessed, "router")
    finally:
        client.close()


def test_dead_letter_of_a_huge_value_fits_the_broker_limit() -> None:
    value = b"x" * (900 * 1024)  # a value the broker accepts (1 MiB default limit)
    msg = Message(topic=TOPICS.uploaded, partition=3, offset=7, key=b"k" * 10_000, value=value)
    out = dead_letter(msg, TOPICS.dlq, "preprocess", "r" * 10_000, "BadMessage")
    letter = decode(DeadLetter, out.value)
    assert len(out.value) < 1024 * 1024 * 0.5
    assert letter.payload_bytes == len(value)
    assert base64.b64decode(letter.payload_b64) == value[:MAX_PAYLOAD_BYTES]
    assert letter.key is not None and len(letter.key) < 10_000 and len(letter.reason) < 10_000
