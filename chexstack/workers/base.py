"""The consume -> transform -> produce loop every worker shares.

Exactly-once: each micro-batch (up to `max_batch` messages or `max_wait_s`) is handled, then its
outputs, its dead letters and its input offsets are committed in ONE Kafka transaction: an output is
never visible without its offset moving, and an offset never moves without its output. A crash or a
rebalance mid-batch replays the batch; consumers read with isolation.level=read_committed, so downstream
sees each result exactly once.

Errors follow librdkafka's transactional contract. Each transactional call waits at most
TXN_CALL_TIMEOUT_S (the loop beats between tries), then:
- a retriable error (a timeout, the broker restarting) repeats the same call: commit_transaction
  resumes where it stopped, send_offsets_to_transaction is sent again with the same offsets and group
  metadata;
- an error that requires an abort (the group moved on while the broker was away, a message could not be
  written) aborts the transaction and rewinds the consumer to the batch, which is processed again;
- a fatal error, an error that is neither retriable nor abortable, and a transaction that has not
  finished after the transaction timeout (the broker aborts it then) end the process with
  TransactionFailed: the container's restart policy starts a fresh worker.
Nothing is aborted unless the error says so: aborting a transaction whose commit is still under way
desynchronises the producer. A loop that makes no progress for `stall_timeout_s` whatever the cause
(a call that never returns) is ended by a watchdog thread with exit status STALLED_EXIT_CODE, since
compose does not restart a container that is merely unhealthy. A consumer still outside its group
REJOIN_TIMEOUT_S after losing it is re-created in place (librdkafka can leave one looking for its
coordinator after a broker restart). Ending the process loses and duplicates
nothing: the broker aborts its open transaction (or has committed it, with its offsets), and whoever
gets the partitions next starts from the last committed offsets.
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from chexstack.bus import make_consumer, producer_config, require_broker
from chexstack.messages import MAX_VALUE_BYTES, DeadLetter, now_ms
from chexstack.settings import DEFAULT_TRANSACTION_TIMEOUT_S

log = logging.getLogger(__name__)

# Longest single wait in a transactional call; the loop beats between tries.
TXN_CALL_TIMEOUT_S = 5.0
# Bounds how long a request waits for the broker (librdkafka's default is transaction.timeout.ms):
# send_offsets_to_transaction returns only when its requests do.
SOCKET_TIMEOUT_MS = 10_000
# Both clients: reconnect at most 1 s after the broker is back (librdkafka's default backs off up to
# 10 s), and keep the known broker handles when every broker is away (a single broker restarting):
# librdkafka's re-bootstrap then decommissions them, and a transactional offset commit queued on the
# old handle was seen to wait forever (send_offsets_to_transaction blocked while the broker was back).
CLIENT_CONFIG = {"reconnect.backoff.max.ms": 1_000, "metadata.recovery.strategy": "none"}
# A member whose partitions were revoked or lost is back in a generation of its group (an assign
# callback, maybe with no partitions) within a second, or a session timeout after the broker returns.
# One still outside after this long re-creates its consumer: after a broker restart librdkafka was seen
# (about one run in ten) to leave a consumer looking for its coordinator for good, and the group then
# ran without it.
REJOIN_TIMEOUT_S = 30.0
# Between tries of a call that failed at once (no broker connection yet).
RETRY_PAUSE_S = 0.5
# Exit status when the watchdog ends a stalled worker (EX_TEMPFAIL: start me again).
STALLED_EXIT_CODE = 75
# How long a starting worker waits for the brokers to answer before it gives up with their address: at
# start-up no answer is a wrong address or missing credentials, not an outage to wait out. Once running,
# outages are waited out (librdkafka reconnects) up to the stall and transaction timeouts.
STARTUP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Output:
    topic: str
    key: str | None
    value: bytes
    # A dead letter's reason: logged once the batch is committed, so an image that goes to the DLQ is
    # never silent in the worker's log.
    reason: str | None = None


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


# A dead letter keeps at most this much of the original value: every message the platform writes fits
# (an xray.preprocessed is about 67 KB), and the letter (base64 is 4/3 of it, plus its fields) stays under
# MAX_VALUE_BYTES, so that readers of the DLQ can decode it, and under the broker's 1 MiB limit.
MAX_PAYLOAD_BYTES = MAX_VALUE_BYTES // 2
# A key is an image id (32 hex digits); a longer one is cut so that the dead letter stays small.
MAX_KEY_CHARS = 256
MAX_REASON_CHARS = 2_000


def dead_letter(msg: Message, dlq_topic: str, worker: str, reason: str, error_type: str) -> Output:
    """The dead letter for `msg`. Its payload is cut to MAX_PAYLOAD_BYTES: a whole oversized value would
    make the dead letter itself too large for the broker, and the batch could never commit."""
    key = msg.key()
    value = msg.value() or b""
    letter = DeadLetter(
        source_topic=msg.topic() or "",
        source_partition=msg.partition() or 0,
        source_offset=msg.offset() or 0,
        key=key.decode(errors="replace")[:MAX_KEY_CHARS] if key else None,
        reason=reason[:MAX_REASON_CHARS],
        error_type=error_type,
        worker=worker,
        failed_at_ms=now_ms(),
        payload_b64=base64.b64encode(value[:MAX_PAYLOAD_BYTES]).decode(),
        payload_bytes=len(value),
    )
    return Output(dlq_topic, letter.key, letter.to_bytes(), reason=f"{letter.source_topic}: {letter.reason}")


def unexpected_dead_letter(msg: Message, dlq_topic: str, worker: str, exc: Exception) -> Output:
    """The dead letter of a message whose handling failed in a way no handler expected (a bug, or input
    nobody foresaw): logged with its traceback, and out of the way so the worker goes on. Call it from
    an `except Exception` around one message's handling."""
    log.exception("unexpected error on %s[%s]@%s", msg.topic(), msg.partition(), msg.offset())
    return dead_letter(msg, dlq_topic, worker, f"unexpected error: {exc}", type(exc).__name__)


Handler = Callable[[Sequence[Message]], list[Output]]


class TransactionFailed(RuntimeError):
    """The producer cannot carry on; the process must end so that a fresh one takes over."""


class Watchdog:
    """Ends the process (os._exit) when `beat` has not been called for `timeout_s` seconds.

    A call stuck inside librdkafka or gRPC cannot be interrupted from Python, and an unhealthy container
    is not restarted by compose: exiting is what brings a stuck worker back.
    """

    def __init__(self, name: str, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"the stall timeout must be positive, got {timeout_s}")
        self.name = name
        self.timeout_s = timeout_s
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"{name}-watchdog", daemon=True)

    def beat(self) -> None:
        self._last = time.monotonic()

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout_s / 4)):
            idle = time.monotonic() - self._last
            if idle > self.timeout_s:
                log.critical(
                    "%s: no progress for %.0f s (stall timeout %.0f s): exiting with status %d so that "
                    "the worker is restarted",
                    self.name,
                    idle,
                    self.timeout_s,
                    STALLED_EXIT_CODE,
                )
                for handler in logging.getLogger().handlers:
                    handler.flush()
                sys.stderr.flush()
                os._exit(STALLED_EXIT_CODE)


def _kafka_error(exc: KafkaException) -> KafkaError | None:
    err = exc.args[0] if exc.args else None
    return err if isinstance(err, KafkaError) else None


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
        max_batch: int,
        max_wait_s: float,
        stall_timeout_s: float,
        health_file: Path | None,
        retry_backoff_s: tuple[float, float] = (0.5, 10.0),
        dlq_topic: str | None = None,
        transaction_timeout_s: float = DEFAULT_TRANSACTION_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.transaction_timeout_s = transaction_timeout_s
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
        self.health_file = health_file
        self._last_touch = 0.0
        self.watchdog = Watchdog(name, stall_timeout_s)
        self._bootstrap, self._group = bootstrap, group
        # When the consumer left (or has not yet joined) a generation of its group; None while in one.
        self._outside_since: float | None = None
        self.consumer: Consumer = make_consumer(bootstrap, group, **CLIENT_CONFIG)
        # A fresh transactional.id per process is safe with KIP-447: fencing uses the group metadata.
        self.producer = Producer(
            producer_config(
                bootstrap,
                **{
                    "transactional.id": f"{group}-{uuid.uuid4().hex[:12]}",
                    "transaction.timeout.ms": int(transaction_timeout_s * 1000),
                    "socket.timeout.ms": SOCKET_TIMEOUT_MS,
                    **CLIENT_CONFIG,
                },
            )
        )

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._outside_since = None
        log.info("%s: assigned %s", self.name, [p.partition for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._revoked = True
        self._outside_since = time.monotonic()
        log.info("%s: revoked %s", self.name, [p.partition for p in partitions])

    def _subscribe(self) -> None:
        self._outside_since = time.monotonic()
        self.consumer.subscribe([self.in_topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _rejoin_if_outside(self) -> None:
        """Re-create the consumer when it has been outside its group for REJOIN_TIMEOUT_S (no batch is
        in flight here: its offsets are committed, so the new member starts where the old one ended)."""
        since = self._outside_since
        if since is None or time.monotonic() - since < REJOIN_TIMEOUT_S:
            return
        log.warning(
            "%s: outside consumer group %s for %.0f s: re-creating the consumer",
            self.name,
            self._group,
            time.monotonic() - since,
        )
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("%s: closing the old consumer: %s", self.name, exc)
        self.consumer = make_consumer(self._bootstrap, self._group, **CLIENT_CONFIG)
        self._subscribe()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())

    def run(self) -> WorkerStats:
        """Process batches until asked to stop. Raises bus.ReadError when the brokers do not answer at
        start-up, TransactionFailed when the producer cannot carry on."""
        try:
            require_broker(self.consumer, self._bootstrap, STARTUP_TIMEOUT_S)
        except BaseException:
            self.consumer.close()
            raise
        self.watchdog.start()
        try:
            try:
                try:
                    self.producer.init_transactions(30)
                except KafkaException as exc:
                    raise TransactionFailed(f"init_transactions: {exc}") from exc
                self._subscribe()
                log.info("%s: consuming %s", self.name, self.in_topic)
                while not self.stop_event.is_set():
                    self.beat()
                    self._rejoin_if_outside()
                    msgs = self._poll_batch()
                    if msgs:
                        self._process(msgs)
            except TransactionFailed as exc:
                log.error(
                    "%s: exiting: %s; the broker aborts the open transaction and the batch is processed "
                    "again by whichever worker gets its partitions",
                    self.name,
                    exc,
                )
                raise
            finally:
                # The watchdog still runs: a close that hangs ends the process too.
                self.consumer.close()
                self.producer.flush(10)
        finally:
            self.watchdog.stop()
        return self.stats

    def beat(self, touch_every_s: float = 5.0) -> None:
        """Progress: feeds the watchdog, and touches the health file every few seconds."""
        self.watchdog.beat()
        if self.health_file is None or time.monotonic() - self._last_touch < touch_every_s:
            return
        self._last_touch = time.monotonic()
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
                self.beat()
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
        positions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        # Retried as is: librdkafka asks for the same offsets and group metadata on every try.
        group = self.consumer.consumer_group_metadata()
        deadline = time.monotonic() + self.transaction_timeout_s
        try:
            self.producer.begin_transaction()
            for out in outputs:
                self.producer.produce(out.topic, key=out.key, value=out.value)
                # Keep the local queue small for big batches of inline pixels.
                self.producer.poll(0)
        except KafkaException as exc:
            self._failed("produce", exc, msgs)
            return

        def send_offsets(timeout_s: float) -> None:
            self.producer.send_offsets_to_transaction(positions, group, timeout_s)

        if not (
            self._call("send_offsets_to_transaction", send_offsets, msgs, deadline)
            and self._call("commit_transaction", self.producer.commit_transaction, msgs, deadline)
        ):
            return
        self.stats.batches += 1
        self.stats.consumed += len(msgs)
        self.stats.produced += len(outputs)
        if self.dlq_topic:
            letters = [o for o in outputs if o.topic == self.dlq_topic]
            self.stats.dead_letters += len(letters)
            for letter in letters:
                # One line each, whatever the key or the reason holds (a poison message chooses both).
                log.warning(
                    "%s: dead letter for %r in %s: %s",
                    self.name,
                    letter.key,
                    self.dlq_topic,
                    " ".join((letter.reason or "").split()),
                )

    def _call(
        self, call: str, step: Callable[[float], None], msgs: Sequence[Message], deadline: float
    ) -> bool:
        """Run one transactional call to success (True), or abort and rewind the batch (False)."""
        while True:
            started = time.monotonic()
            try:
                step(TXN_CALL_TIMEOUT_S)
                return True
            except KafkaException as exc:
                err = _kafka_error(exc)
                if err is None or err.fatal() or err.txn_requires_abort() or not err.retriable():
                    self._failed(call, exc, msgs)
                    return False
                if time.monotonic() >= deadline:
                    raise TransactionFailed(
                        f"{call} still failing after {self.transaction_timeout_s:.0f} s, the transaction "
                        f"timeout (last error: {err})"
                    ) from exc
                log.warning("%s: %s: %s; trying again", self.name, call, err)
            self.beat()
            # A call that failed at once (no connection yet) is not tried again in a busy loop.
            time.sleep(max(0.0, RETRY_PAUSE_S - (time.monotonic() - started)))

    def _failed(self, call: str, exc: KafkaException, msgs: Sequence[Message]) -> None:
        """Abort and rewind when the error requires an abort; raise TransactionFailed otherwise."""
        err = _kafka_error(exc)
        if err is None or err.fatal() or not err.txn_requires_abort():
            # librdkafka: treat an error that is neither retriable nor abortable as fatal.
            kind = "fatal error" if err is not None and err.fatal() else "error that allows no abort"
            raise TransactionFailed(f"{call}: {kind}: {exc}") from exc
        log.warning("%s: %s: %s; aborting, the batch will be processed again", self.name, call, err)
        deadline = time.monotonic() + self.transaction_timeout_s
        while True:
            try:
                self.producer.abort_transaction(TXN_CALL_TIMEOUT_S)
                break
            except KafkaException as abort_exc:
                abort_err = _kafka_error(abort_exc)
                if abort_err is None or abort_err.fatal() or not abort_err.retriable():
                    raise TransactionFailed(f"abort_transaction: {abort_exc}") from abort_exc
                if time.monotonic() >= deadline:
                    raise TransactionFailed(
                        f"abort_transaction still failing after {self.transaction_timeout_s:.0f} s "
                        f"(last error: {abort_err})"
                    ) from abort_exc
                log.warning("%s: abort_transaction: %s; trying again", self.name, abort_err)
            self.beat()
            time.sleep(RETRY_PAUSE_S)
        self._rewind(msgs)
