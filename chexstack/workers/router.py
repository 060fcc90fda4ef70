"""Router worker: micro-batches xray.preprocessed, picks an A/B variant per image, calls serving over
gRPC and publishes xray.predictions. Serving outages are retried with backoff; nothing is dropped."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from confluent_kafka import Message

from chexstack.ab import LATEST, ControlFollower, choose_variant, unknown_labels
from chexstack.messages import AbConfig, BadMessage, Latency, Prediction, Preprocessed, decode, now_ms
from chexstack.serving_client import ServingClient, ServingError
from chexstack.topics import Topics
from chexstack.workers.base import BatchWorker, Output, Retry, dead_letter, unexpected_dead_letter

log = logging.getLogger(__name__)
WORKER = "router"


@dataclass
class Router:
    serving: ServingClient
    model_name: str
    topics: Topics
    follower: ControlFollower | None = None
    static_weights: dict[str, int] | None = None
    # Called after each serving call of a batch (one per A/B variant): the worker's beat, so that its
    # stall timeout bounds one serving call, not the sum over the variants.
    progress: Callable[[], None] = lambda: None

    def weights(self) -> dict[str, int]:
        if self.follower is not None:
            return self.follower.weights
        return dict(self.static_weights or {})

    def handle(self, msgs: Sequence[Message]) -> list[Output]:
        """Predictions for a batch; each message that cannot be predicted becomes a dead letter naming why.

        Only a retryable serving error (Retry) leaves the batch unanswered; nothing else escapes, so a
        message can never end the worker and be read again by its successor.
        """
        outputs: list[Output] = []
        groups: dict[str, list[tuple[Message, Preprocessed, np.ndarray]]] = {}
        weights = self.weights()
        for msg in msgs:
            try:
                pre = decode(Preprocessed, msg.value())
                pixels = pre.pixels()
                variant = (
                    choose_variant(weights, pre.patient or pre.image_id, self.model_name)
                    if weights
                    else LATEST
                )
            except BadMessage as exc:
                outputs.append(dead_letter(msg, self.topics.dlq, WORKER, str(exc), type(exc).__name__))
                continue
            except Exception as exc:
                outputs.append(unexpected_dead_letter(msg, self.topics.dlq, WORKER, exc))
                continue
            groups.setdefault(variant, []).append((msg, pre, pixels))
        for variant, items in sorted(groups.items()):
            outputs.extend(self._predict(variant, items))
        return outputs

    def _predict(self, variant: str, items: list[tuple[Message, Preprocessed, np.ndarray]]) -> list[Output]:
        started_ms = now_ms()
        t0 = time.perf_counter()
        try:
            probs, version = self.serving.predict(
                self.model_name,
                np.stack([pixels for _, _, pixels in items]),
                label=None if variant == LATEST else variant,
            )
        except ServingError as exc:
            self.progress()
            if exc.retryable:
                raise Retry(f"serving unavailable for {self.model_name}/{variant}: {exc}") from exc
            reason = f"serving refused {self.model_name}/{variant}: {exc}"
            return [dead_letter(m, self.topics.dlq, WORKER, reason, "ServingError") for m, _, _ in items]
        except Exception as exc:
            self.progress()
            log.exception("unexpected error calling serving for %s/%s", self.model_name, variant)
            reason = f"unexpected error calling serving for {self.model_name}/{variant}: {exc}"
            return [dead_letter(m, self.topics.dlq, WORKER, reason, type(exc).__name__) for m, _, _ in items]
        serving_ms = (time.perf_counter() - t0) * 1000
        self.progress()
        done_ms = now_ms()
        outputs: list[Output] = []
        for i, (msg, pre, _) in enumerate(items):
            try:
                pred = Prediction(
                    image_id=pre.image_id,
                    patient=pre.patient,
                    model_name=self.model_name,
                    model_version=version,
                    variant=variant,
                    probabilities=tuple(round(float(x), 6) for x in np.clip(probs[i], 0.0, 1.0)),
                    latency=Latency(
                        preprocess_ms=pre.preprocess_ms,
                        queue_ms=max(0.0, started_ms - pre.preprocessed_at_ms),
                        serving_ms=round(serving_ms, 3),
                        end_to_end_ms=max(0.0, done_ms - pre.uploaded_at_ms),
                    ),
                    predicted_at_ms=done_ms,
                )
            except Exception as exc:  # e.g. serving answered fewer rows or the wrong number of classes
                reason = f"serving answer for {self.model_name}/{variant} unusable: {exc}"
                outputs.append(dead_letter(msg, self.topics.dlq, WORKER, reason, type(exc).__name__))
                continue
            outputs.append(Output(self.topics.predictions, pre.image_id, pred.to_bytes()))
        return outputs


def serving_knows_labels(client: ServingClient, model_name: str) -> Callable[[AbConfig], str | None]:
    """The router's check of new A/B weights: every variant that gets traffic must be a version label
    serving resolves (else each of its images is a NOT_FOUND dead letter). When serving cannot answer
    now, the weights are followed: its outage is retried image by image anyway."""

    def check(cfg: AbConfig) -> str | None:
        try:
            unknown = unknown_labels(client, model_name, cfg.weights)
        except ServingError as exc:
            log.warning("cannot check the A/B labels with serving (%s): following the weights", exc)
            return None
        if unknown:
            return f"serving at {client.target} knows no label {unknown[0]!r} for {model_name!r}"
        return None

    return check


def make_worker(
    *,
    bootstrap: str,
    router: Router,
    group: str,
    max_batch: int,
    max_wait_s: float,
    stall_timeout_s: float,
    health_file: Path | None,
    transaction_timeout_s: float,
) -> BatchWorker:
    worker = BatchWorker(
        name=WORKER,
        bootstrap=bootstrap,
        group=group,
        in_topic=router.topics.preprocessed,
        handler=router.handle,
        max_batch=max_batch,
        max_wait_s=max_wait_s,
        stall_timeout_s=stall_timeout_s,
        health_file=health_file,
        dlq_topic=router.topics.dlq,
        transaction_timeout_s=transaction_timeout_s,
    )
    router.progress = worker.beat
    return worker
