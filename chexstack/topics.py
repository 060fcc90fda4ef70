"""Topic names and their creation with configurable partitions and retention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

UPLOADED: Final = "xray.uploaded"
PREPROCESSED: Final = "xray.preprocessed"
PREDICTIONS: Final = "xray.predictions"
DLQ: Final = "xray.dlq"
CONTROL: Final = "chexstack.control"
ALL: Final = (UPLOADED, PREPROCESSED, PREDICTIONS, DLQ, CONTROL)


@dataclass(frozen=True)
class Topics:
    """Topic names with an optional prefix (`--topic-prefix`): isolates tenants and test runs."""

    prefix: str = ""

    @property
    def uploaded(self) -> str:
        return self.prefix + UPLOADED

    @property
    def preprocessed(self) -> str:
        return self.prefix + PREPROCESSED

    @property
    def predictions(self) -> str:
        return self.prefix + PREDICTIONS

    @property
    def dlq(self) -> str:
        return self.prefix + DLQ

    @property
    def control(self) -> str:
        return self.prefix + CONTROL


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def specs(partitions: int, retention_ms: int) -> list[TopicSpec]:
    """The topics with `partitions` and `retention_ms` (flags of `chexstack kafka topics`)."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    if retention_ms < -1 or retention_ms == 0:
        raise ValueError(f"retention_ms must be -1 (forever) or > 0, got {retention_ms}")
    data = {"retention.ms": str(retention_ms), "cleanup.policy": "delete"}
    return [
        TopicSpec(UPLOADED, partitions, data),
        # Inline pixels (~67 KB base64) stay far below the 1 MB default message size.
        TopicSpec(PREPROCESSED, partitions, data),
        TopicSpec(PREDICTIONS, partitions, data),
        # Dead letters are kept for as long as the data they point at, at least.
        TopicSpec(DLQ, partitions, data),
        # Compacted: the latest A/B config per model is all a router needs at start-up.
        TopicSpec(CONTROL, 1, {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}),
    ]


def ensure_topics(
    bootstrap: str,
    partitions: int,
    retention_ms: int,
    *,
    prefix: str,
    timeout_s: float = 30.0,
    security: dict[str, str] | None = None,
) -> list[str]:
    """Create missing topics; returns the names created. Existing topics are left as they are.

    `security`: SASL settings (chexstack.kafka_auth.sasl_config); default: the caller's own.
    """
    from chexstack.bus import LibrdkafkaLogger, ReadError, client_config, no_answer

    admin = AdminClient(
        client_config(bootstrap)
        if security is None
        else {"bootstrap.servers": bootstrap, "logger": LibrdkafkaLogger(), **security}
    )
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise ReadError(no_answer(bootstrap, exc)) from exc
    new = [
        NewTopic(prefix + s.name, num_partitions=s.partitions, replication_factor=1, config=s.config)
        for s in specs(partitions, retention_ms)
        if prefix + s.name not in existing
    ]
    if not new:
        return []
    created = []
    for name, fut in admin.create_topics(new, operation_timeout=timeout_s).items():
        try:
            fut.result()
            created.append(name)
        except Exception as exc:  # a concurrent creator is fine; anything else is not
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return created
