"""The consume -> transform -> produce loop every worker shares.

Each micro-batch (up to `max_batch` messages or `max_wait_s`) is handled, then its outputs, its dead
letters and its input offsets are committed in ONE Kafka transaction: an output is never visible
without its offset moving, and an offset never moves without its output. A crash or a rebalance
mid-batch replays the batch; consumers read with isolation.level=read_committed, so downstream sees
each result exactly once.
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from chexstack.bus import make_consumer, producer_config
from chexstack.messages import DeadLetter, now_ms

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Output:
    topic: str
    key: str | None
    value: bytes


class Retry(Exception):
    """The whole batch must be retried later (a dependency such as serving is unavailable)."""


@dataclass
class WorkerStats:
    batches: int = 0
    consumed: int = 0
    produced: int = 0
    dead_letters: int = 0
    retries: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def dead_letter(msg: Message, dlq_topic: str, worker: str, reason: str, error_type: str) -> Output:
    key = msg.key()
    letter = DeadLetter(
        source_topic=msg.topic() or "",
        source_partition=msg.partition() or 0,
        source_offset=msg.offset() or 0,
        key=key.decode(errors="replace") if key else None,
        reason=reason,
        error_type=error_type,
        worker=worker,
        failed_at_ms=now_ms(),
        payload_b64=base64.b64encode(msg.value() or b"").decode(),
    )
    return Output(dlq_topic, letter.key, letter.to_bytes())


Handler = Callable[[Sequence[Message]], list[Output]]


class BatchWorker:
    """Runs `handler` over micro-batches of `in_topic` with transactional output and offsets."""

    def __init__(
        self,
        *,
        name: str,
        bootstrap: str,
        group: str,
        in_topic: str,
        handler: Handler,
        max_batch: int = 32,
        max_wait_s: float = 0.05,
        retry_backoff_s: tuple[float, float] = (0.5, 10.0),
        dlq_topic: str | None = None,
    ) -> None:
        self.name = name
        self.in_topic = in_topic
        self.handler = handler
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.backoff = retry_backoff_s
        self.dlq_topic = dlq_topic
        self.stats = WorkerStats()
        self.stop_event = threading.Event()
        self._revoked = False
        # Touched while the loop runs (also while waiting out a retry): a container healthcheck
        # compares its age with a limit.
        self.health_file: Path | None = None
        self._last_beat = 0.0
        self.consumer: Consumer = make_consumer(bootstrap, group)
        # A fresh transactional.id per process is safe with KIP-447: fencing uses the group metadata.
        self.producer = Producer(
            producer_config(bootstrap, **{"transactional.id": f"{group}-{uuid.uuid4().hex[:12]}"})
        )

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("%s: assigned %s", self.name, [p.partition for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._revoked = True
        log.info("%s: revoked %s", self.name, [p.partition for p in partitions])

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())

    def run(self) -> WorkerStats:
        self.producer.init_transactions(30)
        self.consumer.subscribe([self.in_topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("%s: consuming %s", self.name, self.in_topic)
        try:
            while not self.stop_event.is_set():
                self._beat()
                msgs = self._poll_batch()
                if msgs:
                    self._process(msgs)
        finally:
            self.consumer.close()
            self.producer.flush(10)
        return self.stats

    def _beat(self, every_s: float = 5.0) -> None:
        if self.health_file is None or time.monotonic() - self._last_beat < every_s:
            return
        self._last_beat = time.monotonic()
        try:
            self.health_file.touch()
            os.utime(self.health_file)
        except OSError as exc:
            log.warning("%s: cannot touch health file %s: %s", self.name, self.health_file, exc)

    def _poll_batch(self) -> list[Message]:
        batch = self.consumer.consume(num_messages=self.max_batch, timeout=self.max_wait_s)
        good = []
        for m in batch:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("%s: consumer error: %s", self.name, err)
        return good

    def _process(self, msgs: list[Message]) -> None:
        delay = self.backoff[0]
        self._revoked = False
        while True:
            try:
                outputs = self.handler(msgs)
                break
            except Retry as exc:
                self.stats.retries += 1
                log.warning("%s: %s; retrying %d messages in %.1f s", self.name, exc, len(msgs), delay)
                if not self._wait_paused(delay) or self._revoked:
                    # Stopping, or partitions moved to another worker: give the batch back unprocessed.
                    self._rewind(msgs)
                    return
                delay = min(delay * 2, self.backoff[1])
        self._commit(msgs, outputs)

    def _wait_paused(self, seconds: float) -> bool:
        """Sleep while keeping group membership alive; False when asked to stop."""
        assignment = self.consumer.assignment()
        self.consumer.pause(assignment)
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if self.stop_event.is_set():
                    return False
                self._beat()
                # poll() serves heartbeats and rebalance callbacks; paused partitions deliver nothing.
                msg = self.consumer.poll(0.2)
                if msg is not None and msg.error() is None:
                    self._rewind([msg])
            return True
        finally:
            self.consumer.resume(self.consumer.assignment())

    def _rewind(self, msgs: Sequence[Message]) -> None:
        owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        first: dict[tuple[str, int], int] = {}
        for m in msgs:
            tp = (m.topic() or "", m.partition() or 0)
            first[tp] = min(first.get(tp, m.offset() or 0), m.offset() or 0)
        for (topic, part), off in first.items():
            if (topic, part) in owned:
                try:
                    self.consumer.seek(TopicPartition(topic, part, off))
                except KafkaException as exc:
                    log.warning("%s: seek %s[%d] failed: %s", self.name, topic, part, exc)

    def _commit(self, msgs: Sequence[Message], outputs: list[Output]) -> None:
        offsets: dict[tuple[str, int], int] = {}
        for m in msgs:
            tp = (m.topic() or "", m.partition() or 0)
            offsets[tp] = max(offsets.get(tp, -1), (m.offset() or 0) + 1)
        try:
            self.producer.begin_transaction()
            for out in outputs:
                self.producer.produce(out.topic, key=out.key, value=out.value)
                # Keep the local queue small for big batches of inline pixels.
                self.producer.poll(0)
            self.producer.send_offsets_to_transaction(
                [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                self.consumer.consumer_group_metadata(),
                30,
            )
            self.producer.commit_transaction(60)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            log.warning("%s: transaction failed (%s); the batch will be processed again", self.name, exc)
            if isinstance(err, KafkaError) and err.fatal():
                raise
            try:
                self.producer.abort_transaction(30)
            except KafkaException as abort_exc:
                log.warning("%s: abort failed: %s", self.name, abort_exc)
            self._rewind(msgs)
            return
        self.stats.batches += 1
        self.stats.consumed += len(msgs)
        self.stats.produced += len(outputs)
        if self.dlq_topic:
            self.stats.dead_letters += sum(1 for o in outputs if o.topic == self.dlq_topic)
