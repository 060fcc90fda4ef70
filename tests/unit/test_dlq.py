"""chexstack.dlq's choices, on dead letters made here: what a replay publishes, leaves and refuses.
Reading and publishing are tested on the real broker in tests/integration/test_dlq.py."""

from __future__ import annotations

import base64

from chexstack.dlq import Letter, newest_per_image, plan_replay, select, worker_inputs
from chexstack.messages import DeadLetter
from chexstack.topics import Topics

T = Topics("p.")


def letter(key: str | None, at: int, *, source: str = T.preprocessed, reason: str = "serving refused x",
           payload: bytes = b"{}", size: int | None = None, offset: int = 0) -> Letter:  # fmt: skip
    return Letter(
        0,
        offset,
        DeadLetter(
            source_topic=source,
            source_partition=0,
            source_offset=at,
            key=key,
            reason=reason,
            error_type="ServingError",
            worker="router",
            failed_at_ms=at,
            payload_b64=base64.b64encode(payload).decode(),
            payload_bytes=len(payload) if size is None else size,
        ),
    )


def test_select_by_image_and_reason() -> None:
    a, b = letter("a", 1, reason="Serving refused chexnet/stable"), letter("b", 2, reason="not UTF-8 JSON")
    assert select([a, b]) == [a, b]
    assert select([a, b], image_ids=["b"]) == [b]
    assert select([a, b], reason="serving REFUSED") == [a]
    assert select([a, b], image_ids=["a"], reason="json") == []


def test_only_the_newest_letter_of_an_image_is_replayed() -> None:
    # Failed in preprocess, replayed, then failed in the router: replaying both would predict twice.
    early = letter("a", 10, source=T.uploaded, offset=1)
    late = letter("a", 20, source=T.preprocessed, offset=5)
    other = letter("b", 15, offset=3)
    keyless = [letter(None, 5, offset=7), letter(None, 6, offset=8)]
    assert newest_per_image([late, early, other, *keyless]) == [*keyless, other, late]


def test_the_plan_refuses_cut_empty_and_foreign_originals_and_leaves_predicted_images() -> None:
    good, predicted = letter("a", 1), letter("b", 2)
    cut = letter("c", 3, payload=b"x" * 10, size=100)
    empty = letter("d", 4, payload=b"")
    foreign = letter("e", 5, source=T.predictions)  # a forged letter must not publish predictions
    plan = plan_replay([good, predicted, cut, empty, foreign], worker_inputs(T), predicted={"b"})
    assert plan.replay == [good] and plan.done == [predicted]
    why = {lt.letter.key: reason for lt, reason in plan.skipped}
    assert why["c"] == "only the first 10 of its 100 bytes were kept: the original cannot be rebuilt"
    assert why["d"].startswith("its original was empty")
    assert (
        why["e"]
        == "its source 'p.xray.predictions' is not a worker's input (p.xray.preprocessed, p.xray.uploaded)"
    )
