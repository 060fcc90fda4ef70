"""Reading xray.predictions: by image id, to the end of the topic, following it, or counting a window."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from chexstack.bus import TopicReader
from chexstack.messages import BadMessage, DeadLetter, Prediction, decode
from chexstack.topics import Topics

METADATA_TIMEOUT_S = 5.0
# Longest wait for one metadata or offsets request of a read; a shorter `timeout_s` of the read bounds it
# too, so an unreachable broker fails within the caller's time.
REQUEST_TIMEOUT_S = 10.0


def _request_timeout(timeout_s: float | None) -> float:
    return REQUEST_TIMEOUT_S if timeout_s is None else max(0.1, min(REQUEST_TIMEOUT_S, timeout_s))


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


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
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with TopicReader(
        bootstrap, topic, purpose="predictions", timeout_s=_request_timeout(timeout_s)
    ) as reader:
        reader.start()
        # Waiting for image ids reads on past the end: their predictions may not be written yet.
        for msg in reader.messages(follow=follow or bool(wanted), timeout_s=_left(deadline)):
            try:
                pred = decode(Prediction, msg.value())
            except BadMessage:
                continue
            if wanted and pred.image_id not in wanted:
                continue
            seen.add(pred.image_id)
            yield pred
            if wanted and wanted <= seen:
                return


def await_outcomes(
    bootstrap: str, topics: Topics, image_ids: Iterable[str], *, timeout_s: float | None = None
) -> Iterator[Prediction | DeadLetter]:
    """Each image's outcome, as it is known or as it comes: its prediction, or else its dead letter.

    xray.predictions and xray.dlq are read together from their beginnings. An image with a prediction
    is done (a dead letter of an earlier try, since replayed, does not count); one with only a dead
    letter once both topics are read to their end, or whose dead letter comes later, is done too: it
    will not be predicted unless the cause is fixed and it is replayed. `timeout_s` bounds the wait;
    images with neither by then are simply not yielded.
    """
    wanted = set(image_ids)
    done: set[str] = set()
    letters: dict[str, DeadLetter] = {}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    names = [topics.predictions, topics.dlq]
    with TopicReader(
        bootstrap, names, purpose="predictions", timeout_s=_request_timeout(timeout_s)
    ) as reader:
        reader.start()
        while wanted - done:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            msg = reader.poll(0.2 if left is None else min(0.2, left))
            if msg is not None:
                try:
                    if msg.topic() == topics.predictions:
                        pred = decode(Prediction, msg.value())
                        if pred.image_id in wanted - done:
                            done.add(pred.image_id)
                            letters.pop(pred.image_id, None)
                            yield pred
                    else:
                        letter = decode(DeadLetter, msg.value())
                        if letter.key in wanted - done:
                            letters[letter.key] = letter
                except BadMessage:
                    continue
            if reader.at_end:  # caught up: a dead letter without a prediction is the outcome
                for image_id, letter in sorted(letters.items()):
                    done.add(image_id)
                    yield letter
                letters.clear()


def follow_outcomes(
    bootstrap: str, topics: Topics, *, timeout_s: float | None = None
) -> Iterator[Prediction | DeadLetter]:
    """Predictions and dead letters as they come, each topic from its beginning (`predictions --follow`):
    an image that fails shows up with its reason instead of never. `timeout_s` bounds the whole read."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    names = [topics.predictions, topics.dlq]
    with TopicReader(
        bootstrap, names, purpose="predictions", timeout_s=_request_timeout(timeout_s)
    ) as reader:
        reader.start()
        for msg in reader.messages(follow=True, timeout_s=_left(deadline)):
            try:
                if msg.topic() == topics.predictions:
                    yield decode(Prediction, msg.value())
                else:
                    yield decode(DeadLetter, msg.value())
            except BadMessage:
                continue


@dataclass(frozen=True)
class PredictionCounts:
    """Predictions in xray.predictions with a timestamp in [since_ms, until_ms), per model version and
    variant. `complete` is False when the read stopped at its time limit before the end."""

    topic: str
    since_ms: int
    until_ms: int
    counts: dict[tuple[str, int, str], int] = field(default_factory=dict)
    undecodable: int = 0
    complete: bool = True

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def count_predictions(
    bootstrap: str,
    topic: str,
    *,
    window_s: float,
    timeout_s: float,
    now_ms: int | None = None,
    **kafka: Any,
) -> PredictionCounts:
    """Count the predictions of the last `window_s` seconds, per (model, version, variant).

    Each partition is read from the first offset at or after now - window (`offsets_for_times`) up to
    its end as it was when called, so the read is bounded; messages whose own timestamp is older than
    the window are skipped. `timeout_s` bounds the whole call. `kafka` are extra consumer settings
    (e.g. a logger). Raises bus.ReadError when the broker or the topic is not there.
    """
    until_ms = int(time.time() * 1000) if now_ms is None else now_ms
    since_ms = until_ms - int(window_s * 1000)
    deadline = time.monotonic() + timeout_s
    step = max(1.0, min(METADATA_TIMEOUT_S, timeout_s / 3))  # per metadata or offsets request
    counts: dict[tuple[str, int, str], int] = {}
    undecodable = 0
    with TopicReader(bootstrap, topic, purpose="overview", timeout_s=step, **kafka) as reader:
        reader.start(reader.offsets_at(since_ms))
        for msg in reader.messages(timeout_s=max(0.0, deadline - time.monotonic())):
            ts_type, ts = msg.timestamp()
            if ts_type != 0 and ts < since_ms:  # 0: TIMESTAMP_NOT_AVAILABLE
                continue
            try:
                pred = decode(Prediction, msg.value())
            except BadMessage:
                undecodable += 1
                continue
            key = (pred.model_name, pred.model_version, pred.variant)
            counts[key] = counts.get(key, 0) + 1
        return PredictionCounts(topic, since_ms, until_ms, counts, undecodable, complete=reader.at_end)
