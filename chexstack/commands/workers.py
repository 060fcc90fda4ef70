"""`chexstack preprocess` and `chexstack route`: the streaming workers (scale by running more)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from chexstack.settings import (
    DEFAULT_KAFKA,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MODEL_NAME,
    DEFAULT_SERVING,
    DEFAULT_TOPIC_PREFIX,
    DEFAULT_TRANSACTION_TIMEOUT_S,
    GroupOpt,
    KafkaOpt,
    MaxBytesOpt,
    MaxPixelsOpt,
    ModelNameOpt,
    ServingOpt,
    StoreOpt,
    TopicPrefixOpt,
    option,
)

if TYPE_CHECKING:
    from chexstack.workers.base import BatchWorker, WorkerStats

log = logging.getLogger(__name__)

HealthFileOpt = Annotated[
    Path | None,
    option(
        "--health-file",
        "Touch this file every few seconds while the worker loop runs (container healthchecks).",
    ),
]


StallTimeoutOpt = Annotated[
    float,
    option(
        "--stall-timeout-s",
        "Exit (status 75, for the restart policy) when the worker loop makes no progress this long.",
        min=1.0,
    ),
]
DEFAULT_STALL_TIMEOUT_S = 120.0
TransactionTimeoutOpt = Annotated[
    float,
    option(
        "--transaction-timeout-s",
        "How long the broker keeps a worker's transaction open (a killed worker holds readers back "
        "this long); a transactional call failing this long ends the worker.",
        min=10.0,  # not below librdkafka's socket timeout the workers use (10 s)
    ),
]


def preprocess(
    kafka: KafkaOpt = DEFAULT_KAFKA,
    store: StoreOpt = None,
    topic_prefix: TopicPrefixOpt = DEFAULT_TOPIC_PREFIX,
    group: GroupOpt = None,
    max_bytes: MaxBytesOpt = DEFAULT_MAX_BYTES,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    max_batch: Annotated[int, option("--preprocess-max-batch", "Messages per transaction.", min=1)] = 16,
    health_file: HealthFileOpt = None,
    stall_timeout_s: StallTimeoutOpt = DEFAULT_STALL_TIMEOUT_S,
    transaction_timeout_s: TransactionTimeoutOpt = DEFAULT_TRANSACTION_TIMEOUT_S,
) -> None:
    """Consume xray.uploaded, write xray.preprocessed (224x224 uint8); bad input goes to xray.dlq."""
    from chexstack.blobstore import open_store
    from chexstack.settings import Limits
    from chexstack.topics import Topics
    from chexstack.workers.preprocess import make_worker

    worker = make_worker(
        bootstrap=kafka,
        store=open_store(store),
        topics=Topics(topic_prefix),
        limits=Limits(max_bytes=max_bytes, max_pixels=max_pixels),
        group=group or f"{topic_prefix}chexstack-preprocess",
        max_batch=max_batch,
        max_wait_s=0.05,  # not a setting: uploads arrive one at a time
        stall_timeout_s=stall_timeout_s,
        health_file=health_file,
        transaction_timeout_s=transaction_timeout_s,
    )
    worker.install_signal_handlers()
    stats = _run(worker)
    log.info("preprocess stopped: %s", stats)


def route(
    kafka: KafkaOpt = DEFAULT_KAFKA,
    serving: ServingOpt = DEFAULT_SERVING,
    model_name: ModelNameOpt = DEFAULT_MODEL_NAME,
    topic_prefix: TopicPrefixOpt = DEFAULT_TOPIC_PREFIX,
    group: GroupOpt = None,
    weights: Annotated[
        str,
        option(
            "--ab-weights",
            "Default A/B weights, e.g. stable=90,canary=10 (variant = TF Serving version label) "
            "until chexstack.control says otherwise. Empty: every image goes to the latest version.",
        ),
    ] = "",
    max_batch: Annotated[
        int, option("--router-max-batch", "Largest micro-batch sent to serving.", min=1)
    ] = 32,
    max_wait_ms: Annotated[
        int, option("--router-max-wait-ms", "Longest wait to fill a micro-batch.", min=0)
    ] = 20,
    serving_timeout_s: Annotated[
        float, option("--serving-timeout-s", "Deadline of one serving call.", min=0.1)
    ] = 30.0,
    health_file: HealthFileOpt = None,
    stall_timeout_s: StallTimeoutOpt = DEFAULT_STALL_TIMEOUT_S,
    transaction_timeout_s: TransactionTimeoutOpt = DEFAULT_TRANSACTION_TIMEOUT_S,
) -> None:
    """Consume xray.preprocessed, call TF Serving (gRPC), write xray.predictions."""
    from chexstack.ab import ControlFollower, parse_weights
    from chexstack.serving_client import ServingClient
    from chexstack.topics import Topics
    from chexstack.workers.router import Router, make_worker, serving_knows_labels

    try:
        default = parse_weights(weights)
    except ValueError as exc:
        typer.echo(f"error: --ab-weights: {exc}", err=True)
        raise typer.Exit(2) from exc
    topics = Topics(topic_prefix)
    client = ServingClient(serving, timeout_s=serving_timeout_s)
    follower = ControlFollower(
        kafka, topics.control, model_name, default=default, check=serving_knows_labels(client, model_name)
    )
    follower.start()
    router = Router(serving=client, model_name=model_name, topics=topics, follower=follower)
    worker = make_worker(
        bootstrap=kafka,
        router=router,
        group=group or f"{topic_prefix}chexstack-router",
        max_batch=max_batch,
        max_wait_s=max_wait_ms / 1000,
        stall_timeout_s=stall_timeout_s,
        health_file=health_file,
        transaction_timeout_s=transaction_timeout_s,
    )
    worker.install_signal_handlers()
    try:
        stats = _run(worker)
        log.info("router stopped: %s", stats)
    finally:
        follower.close()
        client.close()


def _run(worker: BatchWorker) -> WorkerStats:
    """The worker's loop; a producer that cannot carry on ends it with status 1 and the reason it logged
    (no traceback), for the restart policy. A broker that does not answer at start-up is bus.ReadError,
    one line from the CLI."""
    from chexstack.workers.base import TransactionFailed

    try:
        return worker.run()
    except TransactionFailed as exc:
        raise typer.Exit(1) from exc


def register(app: typer.Typer) -> None:
    app.command("preprocess")(preprocess)
    app.command("route")(route)
