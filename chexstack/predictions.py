"""Reading xray.predictions: by image id, to the end of the topic, or following it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator

from confluent_kafka import Consumer, KafkaError, TopicPartition

from chexstack.messages import BadMessage, Prediction, decode


def read_predictions(
    bootstrap: str,
    topic: str,
    *,
    image_ids: Iterable[str] = (),
    follow: bool = False,
    timeout_s: float | None = None,
) -> Iterator[Prediction]:
    """Yield predictions from the start of the topic.

    Without `follow` it stops at the end of the topic as it was when called; with image ids it stops
    once each has a prediction. `timeout_s` bounds the whole wait either way.
    """
    wanted = set(image_ids)
    seen: set[str] = set()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"chexstack-predictions-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        md = consumer.list_topics(topic, timeout=10)
        if topic not in md.topics or md.topics[topic].error is not None:
            raise RuntimeError(f"topic {topic} does not exist on {bootstrap}")
        parts = sorted(md.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        # Where "the end" is: the high watermark of each partition right now.
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        at_end: set[int] = {p for p, hi in ends.items() if hi == 0}
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if wanted and wanted <= seen:
                return
            if not follow and not wanted and at_end >= set(parts):
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition() or 0)
                    continue
                raise RuntimeError(f"reading {topic}: {err}")
            if (msg.offset() or 0) + 1 >= ends.get(msg.partition() or 0, 0):
                at_end.add(msg.partition() or 0)
            try:
                pred = decode(Prediction, msg.value())
            except BadMessage:
                continue
            if wanted and pred.image_id not in wanted:
                continue
            seen.add(pred.image_id)
            yield pred
    finally:
        consumer.close()
