"""chexstack.bus.TopicReader, the one way CheXStack reads a topic beside its services, on the real broker."""

from __future__ import annotations

import re
import uuid

import pytest
from confluent_kafka import OFFSET_INVALID, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from chexstack.bus import ReadError, TopicMissing, TopicReader, make_producer, producer_config
from chexstack.messages import now_ms
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def produce(producer: Producer, topic: str, values: list[bytes], timestamp_ms: int = 0) -> None:
    """Each value on a fresh key (spread over the partitions), acknowledged by the broker."""
    errors: list[object] = []
    for v in values:
        producer.produce(
            topic,
            value=v,
            key=uuid.uuid4().hex,
            timestamp=timestamp_ms,  # 0: the producer's clock
            on_delivery=lambda err, _msg: errors.append(err) if err is not None else None,
        )
    assert producer.flush(30) == 0 and errors == []


def values(reader: TopicReader, *, timeout_s: float) -> list[bytes]:
    """The values of a read to the end, sorted (the order across partitions is not defined)."""
    return sorted(m.value() or b"" for m in reader.messages(timeout_s=timeout_s))


def test_reads_to_the_end_fixed_at_start_then_follows_from_there(kafka: str, topics: dict[str, str]) -> None:
    topic = topics["xray.predictions"]
    producer = make_producer(kafka)
    before = [b"a%d" % i for i in range(9)]  # keys spread them over the 3 partitions
    produce(producer, topic, before)
    with TopicReader(kafka, topic, purpose="test") as reader:
        assert [tp.partition for tp in reader.partitions] == [0, 1, 2]
        reader.start()
        assert not reader.at_end
        produce(producer, topic, [b"late"])  # after start(): not part of this read
        assert values(reader, timeout_s=60) == before
        assert reader.at_end
        group = reader.group

        reader.start(reader.end_offsets())
        assert reader.at_end  # nothing between the end and the end
        produce(producer, topic, [b"b1", b"b2"])
        got = []
        for msg in reader.messages(follow=True, timeout_s=60):
            got.append(msg.value())
            if len(got) == 2:
                break
        assert sorted(got) == [b"b1", b"b2"]

    # A reader commits nothing: its throwaway group has no offsets on the broker.
    admin = AdminClient({"bootstrap.servers": kafka})
    asked = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(3)])
    (future,) = admin.list_consumer_group_offsets([asked]).values()
    offsets = future.result(30).topic_partitions
    assert [tp.partition for tp in offsets] == [0, 1, 2] and {tp.offset for tp in offsets} == {OFFSET_INVALID}


def test_only_committed_messages_and_the_read_ends_after_transaction_markers(
    kafka: str, topics: dict[str, str]
) -> None:
    """Transactions leave markers at offsets after their last message: the read still reaches its end."""
    topic = topics["xray.predictions"]
    producer = Producer(producer_config(kafka, **{"transactional.id": f"reader-{uuid.uuid4().hex[:8]}"}))
    producer.init_transactions(30)
    for commit, tag in ((True, b"c1"), (False, b"x"), (True, b"c2")):
        producer.begin_transaction()
        produce(producer, topic, [tag + b"-%d" % i for i in range(3)])
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
    with TopicReader(kafka, topic) as reader:
        reader.start()
        got = values(reader, timeout_s=120)
        assert reader.at_end  # reached the end, not the time limit
        ends = {tp.partition: tp.offset for tp in reader.end_offsets()}
    assert got == [b"c1-0", b"c1-1", b"c1-2", b"c2-0", b"c2-1", b"c2-2"]
    assert sum(ends.values()) > len(got)  # aborted messages and markers take offsets too


def test_start_positions_from_a_time_and_a_bounded_read(kafka: str, topics: dict[str, str]) -> None:
    topic = topics["xray.predictions"]
    producer = make_producer(kafka)
    now = now_ms()
    produce(producer, topic, [b"old-1", b"old-2", b"old-3"], timestamp_ms=now - 7_200_000)
    produce(producer, topic, [b"new-1", b"new-2", b"new-3"], timestamp_ms=now - 60_000)
    with TopicReader(kafka, topic) as reader:
        reader.start(reader.offsets_at(now - 3_600_000))
        assert values(reader, timeout_s=60) == [b"new-1", b"new-2", b"new-3"] and reader.at_end

        later = reader.offsets_at(now)  # later than every message: -1 on every partition
        assert {tp.offset for tp in later} == {-1}
        reader.start(later)
        assert reader.at_end and values(reader, timeout_s=60) == []

        reader.start()
        assert values(reader, timeout_s=0) == [] and not reader.at_end  # out of time: said so


def test_a_missing_topic_or_an_unreachable_broker_is_named(kafka: str, topics: dict[str, str]) -> None:
    missing = re.escape(f"topic no-such.topic does not exist on {kafka}")
    with pytest.raises(TopicMissing, match=missing):
        TopicReader(kafka, "no-such.topic")
    with pytest.raises(TopicMissing, match=missing):
        TopicReader(kafka, [topics["xray.predictions"], "no-such.topic"])
    nobody = f"127.0.0.1:{free_port()}"
    with pytest.raises(ReadError, match=re.escape(f"no answer from Kafka at {nobody}")):
        TopicReader(nobody, topics["xray.predictions"], timeout_s=2)
    with TopicReader(kafka, topics["xray.dlq"]) as other:
        elsewhere = other.end_offsets()
    with (
        TopicReader(kafka, topics["xray.predictions"]) as reader,
        pytest.raises(ValueError, match="not a partition"),
    ):
        reader.start(elsewhere)
