"""Preprocess worker: xray.uploaded -> xray.preprocessed (224x224 uint8 CheXNet input)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from confluent_kafka import Message
from pydantic import ValidationError

from chexstack.blobstore import BlobStore
from chexstack.imageio import InvalidImage
from chexstack.messages import BadMessage, Preprocessed, Uploaded, decode, now_ms
from chexstack.settings import Limits
from chexstack.topics import Topics
from chexstack.transform import preprocess_bytes
from chexstack.workers.base import BatchWorker, Output, dead_letter, unexpected_dead_letter

log = logging.getLogger(__name__)
WORKER = "preprocess"


def handle_uploaded(
    msgs: Sequence[Message], *, store: BlobStore, topics: Topics, limits: Limits
) -> list[Output]:
    """Turn each upload into a preprocessed message, or a dead letter naming why it could not be."""
    outputs: list[Output] = []
    for msg in msgs:
        try:
            up = decode(Uploaded, msg.value())
            start = time.perf_counter()
            pixels = preprocess_bytes(store.get(up.blob_uri), limits)
            elapsed_ms = (time.perf_counter() - start) * 1000
            out = Preprocessed(
                image_id=up.image_id,
                sha256=up.sha256,
                patient=up.patient,
                pixels_b64=Preprocessed.encode_pixels(pixels),
                uploaded_at_ms=up.uploaded_at_ms,
                preprocessed_at_ms=now_ms(),
                preprocess_ms=round(elapsed_ms, 3),
            )
        except (BadMessage, InvalidImage) as exc:
            outputs.append(dead_letter(msg, topics.dlq, WORKER, str(exc), type(exc).__name__))
            continue
        except ValidationError as exc:  # decode() wraps its own: this is the output failing its schema
            reason = f"cannot build {topics.preprocessed}: {exc.errors()[0]['msg']}"
            outputs.append(dead_letter(msg, topics.dlq, WORKER, reason, type(exc).__name__))
            continue
        except (OSError, LookupError, ValueError) as exc:  # missing or corrupt blob
            outputs.append(
                dead_letter(msg, topics.dlq, WORKER, f"cannot read the blob: {exc}", type(exc).__name__)
            )
            continue
        except Exception as exc:  # any other per-message failure must not crash-loop the worker
            outputs.append(unexpected_dead_letter(msg, topics.dlq, WORKER, exc))
            continue
        outputs.append(Output(topics.preprocessed, up.image_id, out.to_bytes()))
    return outputs


def make_worker(
    *,
    bootstrap: str,
    store: BlobStore,
    topics: Topics,
    limits: Limits,
    group: str,
    max_batch: int,
    max_wait_s: float,
    stall_timeout_s: float,
    health_file: Path | None,
    transaction_timeout_s: float,
) -> BatchWorker:
    return BatchWorker(
        name=WORKER,
        bootstrap=bootstrap,
        group=group,
        in_topic=topics.uploaded,
        handler=lambda msgs: handle_uploaded(msgs, store=store, topics=topics, limits=limits),
        max_batch=max_batch,
        max_wait_s=max_wait_s,
        stall_timeout_s=stall_timeout_s,
        health_file=health_file,
        dlq_topic=topics.dlq,
        transaction_timeout_s=transaction_timeout_s,
    )
