"""xray.dlq: reading dead letters, choosing some, and publishing their originals again (a replay).

A dead letter keeps the original message (its first 128 KiB), the topic it came from and why it failed.
Once the cause is fixed (serving has the model, a worker's bug is mended), a replay publishes the
original again to its source topic, with its key, and the workers process it as if it had just come.

Each replay publishes an image at most once: of an image's dead letters only the newest is replayed (it
names the step the image last failed at: replaying an older one too would run that step twice and
give a second prediction), and an image predicted after its dead letter (replayed before, say) is left
alone. A letter whose original was cut to fit the DLQ, or was empty, cannot be replayed, and says so.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaException

from chexstack.bus import PublishError, TopicReader, make_producer, produce_sync
from chexstack.messages import BadMessage, DeadLetter, decode
from chexstack.predictions import read_predictions
from chexstack.topics import Topics


@dataclass(frozen=True)
class Letter:
    """A dead letter and where it is in xray.dlq."""

    partition: int
    offset: int
    letter: DeadLetter

    @property
    def where(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def payload(self) -> bytes:
        return base64.b64decode(self.letter.payload_b64)

    def not_replayable(self, inputs: set[str]) -> str | None:
        """Why this letter cannot be replayed, or None. `inputs`: the workers' input topics, the only
        ones a replay writes to (a letter naming another would let whoever wrote it publish anywhere)."""
        if self.letter.source_topic not in inputs:
            names = ", ".join(sorted(inputs))
            return f"its source {self.letter.source_topic!r} is not a worker's input ({names})"
        kept, size = len(self.payload), self.letter.payload_bytes
        if size is not None and kept < size:
            return f"only the first {kept} of its {size} bytes were kept: the original cannot be rebuilt"
        if kept == 0:
            return "its original was empty (a tombstone): there is nothing to process"
        return None


@dataclass(frozen=True)
class ReadResult:
    letters: list[Letter]
    undecodable: int
    complete: bool


def read_letters(bootstrap: str, dlq_topic: str, *, timeout_s: float = 30.0) -> ReadResult:
    """Every dead letter in the topic, oldest first per partition, read to its end as it is now."""
    letters: list[Letter] = []
    undecodable = 0
    with TopicReader(bootstrap, dlq_topic, purpose="dlq", timeout_s=min(timeout_s, 10.0)) as reader:
        reader.start()
        for msg in reader.messages(timeout_s=timeout_s):
            try:
                letter = decode(DeadLetter, msg.value())
            except BadMessage:
                undecodable += 1
                continue
            letters.append(Letter(msg.partition() or 0, msg.offset() or 0, letter))
        return ReadResult(letters, undecodable, complete=reader.at_end)


def select(
    letters: Iterable[Letter], *, image_ids: Sequence[str] = (), reason: str | None = None
) -> list[Letter]:
    """The letters of these image ids (none given: any) whose reason contains `reason` (any case)."""
    wanted = set(image_ids)
    needle = reason.casefold() if reason else None
    return [
        lt
        for lt in letters
        if (not wanted or lt.letter.key in wanted)
        and (needle is None or needle in lt.letter.reason.casefold())
    ]


def newest_per_image(letters: Iterable[Letter]) -> list[Letter]:
    """One letter per image id: the newest (where the image failed last); keyless letters all stay."""
    newest: dict[str, Letter] = {}
    keyless: list[Letter] = []
    for lt in letters:
        key = lt.letter.key
        if key is None:
            keyless.append(lt)
            continue
        best = newest.get(key)
        if best is None or (lt.letter.failed_at_ms, lt.offset) > (best.letter.failed_at_ms, best.offset):
            newest[key] = lt
    return sorted([*newest.values(), *keyless], key=lambda lt: (lt.letter.failed_at_ms, lt.where))


def predicted_since(
    bootstrap: str, predictions_topic: str, letters: Sequence[Letter], *, timeout_s: float
) -> set[str]:
    """The image ids of `letters` with a prediction made after their dead letter."""
    failed_at = {lt.letter.key: lt.letter.failed_at_ms for lt in letters if lt.letter.key}
    if not failed_at:
        return set()
    return {
        pred.image_id
        for pred in read_predictions(bootstrap, predictions_topic, timeout_s=timeout_s)
        if pred.image_id in failed_at and pred.predicted_at_ms > failed_at[pred.image_id]
    }


def replay(bootstrap: str, letters: Sequence[Letter], *, timeout_s: float = 30.0) -> None:
    """Publish each letter's original to its source topic, with its key; all acknowledged, or PublishError
    naming the ones that were not. The producer is idempotent: its retries never publish one twice."""
    if not letters:
        return
    producer = make_producer(bootstrap)
    failed = []
    for lt in letters:
        try:
            produce_sync(producer, lt.letter.source_topic, lt.letter.key, lt.payload, timeout_s=timeout_s)
        except (PublishError, KafkaException, BufferError) as exc:
            failed.append(f"{lt.letter.key or lt.where} -> {lt.letter.source_topic}: {exc}")
    if failed:
        raise PublishError(f"{len(failed)} of {len(letters)} not replayed: " + "; ".join(failed))


def worker_inputs(topics: Topics) -> set[str]:
    """The topics a replay may publish to: the workers' inputs."""
    return {topics.uploaded, topics.preprocessed}


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay does with the chosen letters: publish, leave (predicted since), or refuse (why)."""

    replay: list[Letter]
    done: list[Letter]
    skipped: list[tuple[Letter, str]]


def plan_replay(letters: Sequence[Letter], inputs: set[str], predicted: set[str]) -> ReplayPlan:
    """Of the chosen letters (one per image: `newest_per_image`), those to publish, those whose image was
    predicted after its letter (nothing to do), and those that cannot be replayed, with why."""
    plan = ReplayPlan([], [], [])
    for lt in letters:
        why = lt.not_replayable(inputs)
        if why is not None:
            plan.skipped.append((lt, why))
        elif lt.letter.key in predicted:
            plan.done.append(lt)
        else:
            plan.replay.append(lt)
    return plan
