"""Follow uploaded images through the pipeline: preprocessed, predicted, or dead-lettered.

`positions()` is taken before a batch is uploaded, so every message caused by the batch lies after
it; `follow()` then reads the three topics from there (messages are keyed by image_id) and calls back
once per event. It never commits offsets: it is a reader beside the workers, not one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from confluent_kafka import TopicPartition

from chexstack.bus import ReadError, TopicReader
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

    def _reader(self) -> TopicReader:
        try:
            return TopicReader(self.bootstrap, self._names, purpose="notebook", timeout_s=self.timeout_s)
        except ReadError as exc:
            raise TrackerError(str(exc)) from exc

    def positions(self) -> list[TopicPartition]:
        """The current end of every partition of the three topics."""
        with self._reader() as reader:
            try:
                return reader.end_offsets()
            except ReadError as exc:
                raise TrackerError(str(exc)) from exc

    def follow(
        self,
        image_ids: Iterable[str],
        start: list[TopicPartition],
        on_event: Callable[[Event], None],
        *,
        timeout_s: float,
    ) -> set[str]:
        """Report events for `image_ids` until each is predicted or rejected, or the time is up.

        Returns the image ids still unfinished (empty when everything finished).
        """
        pending = set(image_ids)
        if not pending:
            return set()
        with self._reader() as reader:
            try:
                reader.start(start)
                for msg in reader.messages(follow=True, timeout_s=timeout_s):
                    key = msg.key()
                    image_id = key.decode(errors="replace") if key else ""
                    if image_id not in pending:
                        continue
                    event = self._event(msg.topic() or "", image_id, msg.value())
                    if event is None:
                        continue
                    if event.kind != "preprocessed":
                        pending.discard(image_id)
                    on_event(event)
                    if not pending:
                        break
            except ReadError as exc:
                raise TrackerError(str(exc)) from exc
        return pending

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
