"""Follow uploaded images through the pipeline: preprocessed, predicted, or dead-lettered.

`positions()` is taken before a batch is uploaded, so every message caused by the batch lies after
it; `follow()` then reads the three topics from there (messages are keyed by image_id) and calls back
once per event. It never commits offsets: it is a reader beside the workers, not one of them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from chexstack.messages import BadMessage, DeadLetter, Prediction, Preprocessed, decode
from chexstack.topics import Topics

EventKind = Literal["preprocessed", "predicted", "rejected"]


@dataclass(frozen=True)
class Event:
    kind: EventKind
    image_id: str
    preprocessed: Preprocessed | None = None
    prediction: Prediction | None = None
    reason: str | None = None


class TrackerError(RuntimeError):
    """Kafka cannot be read (unreachable broker, missing topic); the message says which."""


class Tracker:
    def __init__(self, bootstrap: str, topics: Topics = Topics(), timeout_s: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.timeout_s = timeout_s
        self._names = (topics.preprocessed, topics.predictions, topics.dlq)

    def _consumer(self) -> Any:
        return Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"chexstack-notebook-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
            }
        )

    def positions(self) -> list[TopicPartition]:
        """The current end of every partition of the three topics."""
        consumer = self._consumer()
        try:
            try:
                meta = consumer.list_topics(timeout=self.timeout_s)
            except Exception as exc:
                raise TrackerError(f"cannot reach Kafka at {self.bootstrap}: {exc}") from exc
            out = []
            for name in self._names:
                topic = meta.topics.get(name)
                if topic is None or topic.error is not None:
                    raise TrackerError(f"Kafka at {self.bootstrap} has no topic {name}")
                for p in sorted(topic.partitions):
                    _, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=self.timeout_s)
                    out.append(TopicPartition(name, p, high))
            return out
        finally:
            consumer.close()

    def follow(
        self,
        image_ids: Iterable[str],
        start: list[TopicPartition],
        on_event: Callable[[Event], None],
        *,
        timeout_s: float,
        stop: threading.Event | None = None,
    ) -> set[str]:
        """Report events for `image_ids` until each is predicted or rejected, or the time is up.

        Returns the image ids still unfinished (empty when everything finished).
        """
        pending = set(image_ids)
        if not pending:
            return set()
        try:
            consumer = self._consumer()
            consumer.assign(start)
        except KafkaException as exc:
            raise TrackerError(f"cannot read Kafka at {self.bootstrap}: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        try:
            while pending and time.monotonic() < deadline and not (stop is not None and stop.is_set()):
                msg = consumer.poll(0.25)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    # librdkafka reports broker hiccups (_TRANSPORT, _ALL_BROKERS_DOWN) here and
                    # recovers by itself; only a fatal error ends the tracking.
                    if err.code() == KafkaError._PARTITION_EOF or not err.fatal():
                        continue
                    raise TrackerError(f"reading {msg.topic()}: {err}")
                key = msg.key()
                image_id = key.decode(errors="replace") if key else ""
                if image_id not in pending:
                    continue
                event = self._event(msg.topic(), image_id, msg.value())
                if event is None:
                    continue
                if event.kind != "preprocessed":
                    pending.discard(image_id)
                on_event(event)
            return pending
        finally:
            consumer.close()

    def _event(self, topic: str, image_id: str, value: bytes | None) -> Event | None:
        try:
            if topic == self.topics.preprocessed:
                return Event("preprocessed", image_id, preprocessed=decode(Preprocessed, value))
            if topic == self.topics.predictions:
                return Event("predicted", image_id, prediction=decode(Prediction, value))
            letter = decode(DeadLetter, value)
        except BadMessage:
            return None  # not ours to judge: the workers dead-letter bad messages themselves
        where = letter.source_topic.removeprefix(self.topics.prefix)
        return Event("rejected", image_id, reason=f"{letter.reason} (in {where}, {letter.worker})")
