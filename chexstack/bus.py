"""Kafka clients with the settings every CheXStack service shares (confluent-kafka / librdkafka)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from chexstack.kafka_auth import READER_GROUP_PREFIX, client_security

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class PublishError(RuntimeError):
    """A message was not acknowledged by the broker."""


_librdkafka_log = logging.getLogger("chexstack.librdkafka")


class LibrdkafkaLogger:
    """Where a client's librdkafka log lines go (its `logger` setting) instead of stderr: Python logging, at
    DEBUG whatever librdkafka's level. Its lines are about connections it retries by itself ("Connect to
    ipv4#127.0.0.1:1 failed"); what the user must act on reaches the caller as an error. Shown with
    `chexstack --verbose` or CHEXSTACK_LOG_LEVEL=DEBUG."""

    def log(self, level: int, msg: str, *args: object) -> None:
        _librdkafka_log.debug(msg, *args)


def client_config(bootstrap: str) -> dict[str, Any]:
    """Where the brokers are and how to authenticate (chexstack.kafka_auth): every client starts here."""
    return {"bootstrap.servers": bootstrap, "logger": LibrdkafkaLogger(), **client_security()}


def producer_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        **client_config(bootstrap),
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
        **client_config(bootstrap),
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
    producer: Producer, topic: str, key: str | bytes | None, value: bytes | None, timeout_s: float = 30.0
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


# ------------------------------------------------------------------------------------------- readers


_NO_LEADER_YET = frozenset(
    {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART}
)


_DENIED = KafkaError.TOPIC_AUTHORIZATION_FAILED


def no_answer(bootstrap: str, exc: BaseException) -> str:
    """Why a metadata request failed, with the likely fix when this client has no Kafka user."""
    return f"no answer from Kafka at {bootstrap}: {reason(exc)}{auth_hint()}"


def auth_hint() -> str:
    """What to set when this client has no Kafka user: an authenticating broker drops a client that
    skips SASL, and librdkafka then reports a transport failure, not an authentication one."""
    if client_security():
        return ""
    return (
        " (if the broker requires authentication, set CHEXSTACK_KAFKA_USER and CHEXSTACK_KAFKA_PASSWORD_FILE)"
    )


def reason(exc: BaseException) -> str:
    """librdkafka's own words for a KafkaException ("Failed to get metadata: Local: Broker transport
    failure"), not its repr."""
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return err.str() if isinstance(err, KafkaError) else str(exc)


def require_broker(client: Producer | Consumer, bootstrap: str, timeout_s: float) -> None:
    """Raise ReadError (no_answer) unless the brokers answer a metadata request within `timeout_s`: a
    command's first step, so that an unreachable broker is one line at once, not a wait and a traceback
    later."""
    try:
        client.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ReadError(no_answer(bootstrap, exc)) from exc


class ReadError(RuntimeError):
    """A topic cannot be read: the broker does not answer, the topic is missing, or a fatal error."""


class TopicMissing(ReadError):
    pass


class TopicReader:
    """Reads topics beside the services, to their end or following them.

    A reader is never one of the services' consumers: a throwaway consumer group with the partitions
    assigned (no group membership, no rebalance), committed messages only (read_committed, as the
    services see them), and no offsets ever committed or stored. Every wait is bounded: metadata and
    offset requests by `timeout_s`, reading by the caller's `timeout_s`.

        with TopicReader(bootstrap, topic, purpose="predictions") as reader:
            reader.start()                      # every partition from its beginning
            for msg in reader.messages(timeout_s=60):
                ...
            reader.at_end                       # False when the time ran out first

    "The end" is each partition's high watermark when `start()` is called; transaction markers sit at
    offsets after the last message, so a partition also counts as read to its end when librdkafka
    reports it (enable.partition.eof).
    """

    def __init__(
        self,
        bootstrap: str,
        topics: str | Sequence[str],
        *,
        purpose: str = "reader",
        timeout_s: float = 10.0,
        **extra: Any,
    ) -> None:
        self.bootstrap = bootstrap
        self.names = [topics] if isinstance(topics, str) else list(topics)
        self.timeout_s = timeout_s
        # A group name every user's ACLs allow (chexstack.kafka_auth.READER_GROUP_PREFIX).
        self.group = f"{READER_GROUP_PREFIX}{purpose}-{uuid.uuid4().hex[:12]}"
        reader_cfg: dict[str, Any] = {"enable.partition.eof": True, "enable.auto.offset.store": False}
        self._consumer = make_consumer(bootstrap, self.group, **{**reader_cfg, **extra})
        self._ends: dict[tuple[str, int], int] = {}
        self._pending: set[tuple[str, int]] = set()
        try:
            self.partitions = self._metadata()
        except BaseException:
            self._consumer.close()
            raise

    def _metadata(self) -> list[TopicPartition]:
        try:
            if len(self.names) == 1:
                meta = self._consumer.list_topics(self.names[0], timeout=self.timeout_s)
            else:
                meta = self._consumer.list_topics(timeout=self.timeout_s)
        except KafkaException as exc:
            raise ReadError(no_answer(self.bootstrap, exc)) from exc
        out = []
        for name in self.names:
            info = meta.topics.get(name)
            if info is not None and info.error is not None and info.error.code() == _DENIED:
                user = client_security().get("sasl.username") or "an anonymous client"
                raise ReadError(f"Kafka user {user} may not read topic {name} on {self.bootstrap} (no ACL)")
            if info is None or info.error is not None or not info.partitions:
                reason = f" ({info.error})" if info is not None and info.error is not None else ""
                raise TopicMissing(f"topic {name} does not exist on {self.bootstrap}{reason}")
            out += [TopicPartition(name, p) for p in sorted(info.partitions)]
        return out

    def _ask(self, request: Callable[[float], _T], deadline: float) -> _T:
        """One offsets request (given the seconds left), retried until `deadline` while a partition has
        no leader yet, as a topic created a moment ago may not."""
        while True:
            try:
                return request(max(0.1, deadline - time.monotonic()))
            except KafkaException as exc:
                if exc.args[0].code() not in _NO_LEADER_YET or time.monotonic() >= deadline:
                    names = ", ".join(self.names)
                    raise ReadError(
                        f"cannot read the offsets of {names} from {self.bootstrap}: {exc}"
                    ) from exc
            time.sleep(0.2)

    def _watermarks(self) -> dict[tuple[str, int], tuple[int, int]]:
        deadline = time.monotonic() + self.timeout_s
        marks: dict[tuple[str, int], tuple[int, int]] = {}
        for tp in self.partitions:

            def request(left: float, tp: TopicPartition = tp) -> tuple[int, int]:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=left)
                return int(low), int(high)

            marks[tp.topic, tp.partition] = self._ask(request, deadline)
        return marks

    def end_offsets(self) -> list[TopicPartition]:
        """Every partition at its end now (the high watermark): what a later read starts from."""
        marks = self._watermarks()
        return [
            TopicPartition(tp.topic, tp.partition, marks[tp.topic, tp.partition][1]) for tp in self.partitions
        ]

    def offsets_at(self, timestamp_ms: int) -> list[TopicPartition]:
        """Per partition, the first offset whose timestamp is at or after `timestamp_ms` (-1: none)."""
        wanted = [TopicPartition(tp.topic, tp.partition, timestamp_ms) for tp in self.partitions]
        found = self._ask(
            lambda left: self._consumer.offsets_for_times(wanted, timeout=left),
            time.monotonic() + self.timeout_s,
        )
        return list(found)

    def start(self, positions: Sequence[TopicPartition] | None = None) -> None:
        """Read from `positions` (default: every partition from its beginning); the end is fixed now.

        A negative position other than OFFSET_BEGINNING (e.g. offsets_at's -1, "no message that
        recent") starts its partition at its end.
        """
        if positions is None:
            positions = [TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in self.partitions]
        marks = self._watermarks()
        self._ends, self._pending = {}, set()
        assign = []
        for tp in positions:
            key = (tp.topic, tp.partition)
            if key not in marks:
                raise ValueError(f"{tp.topic} [{tp.partition}] is not a partition of {', '.join(self.names)}")
            low, high = marks[key]
            if tp.offset == OFFSET_BEGINNING:
                first = low
            elif tp.offset >= 0:
                first = tp.offset
            else:
                first = high
                tp = TopicPartition(tp.topic, tp.partition, high)
            self._ends[key] = high
            if first < high:
                self._pending.add(key)
            assign.append(tp)
        self._consumer.assign(assign)

    @property
    def at_end(self) -> bool:
        """Every partition has been read up to the end fixed by `start()`."""
        return not self._pending

    def poll(self, timeout_s: float) -> Message | None:
        """The next message, or None (nothing within `timeout_s`, or an event that is not a message).

        librdkafka reports broker hiccups (transport errors, all brokers down) as events and recovers
        by itself, so only a fatal error raises.
        """
        msg = self._consumer.poll(timeout_s)
        if msg is None:
            return None
        key = _partition(msg)
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                self._pending.discard(key)
            elif err.fatal():
                raise ReadError(f"reading {msg.topic()} from {self.bootstrap}: {err}")
            else:
                log.info("reading %s from %s: %s (retrying)", msg.topic(), self.bootstrap, err)
            return None
        if (msg.offset() or 0) + 1 >= self._ends.get(key, 0):
            self._pending.discard(key)
        return msg

    def messages(self, *, follow: bool = False, timeout_s: float | None = None) -> Iterator[Message]:
        """Messages until every partition is at its end (or, with `follow`, until the caller stops);
        `timeout_s` bounds the whole read either way. Without `follow`, messages written after
        `start()` are not part of the read."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while follow or self._pending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            msg = self.poll(0.2 if left is None else min(0.2, left))
            if msg is None:
                continue
            if not follow and (msg.offset() or 0) >= self._ends.get(_partition(msg), 0):
                continue  # after the end this read was asked for
            yield msg

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _partition(msg: Message) -> tuple[str, int]:
    return msg.topic() or "", msg.partition() or 0
