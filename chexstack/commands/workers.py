"""`chexstack preprocess` and `chexstack route`: the streaming workers (scale by running more)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from chexstack.settings import (
    GroupOpt,
    KafkaOpt,
    MaxBytesOpt,
    MaxPixelsOpt,
    ModelNameOpt,
    ServingOpt,
    StoreOpt,
    TopicPrefixOpt,
    env_name,
)

log = logging.getLogger(__name__)


def _opt(default: object, flag: str, help_: str, **kw: object) -> object:
    return typer.Option(default, flag, envvar=env_name(flag), show_envvar=True, help=help_, **kw)  # type: ignore[call-overload, arg-type]


def _health_opt() -> object:
    return _opt(
        None,
        "--health-file",
        "Touch this file every few seconds while the worker loop runs (container healthchecks).",
    )


def _stall_opt() -> object:
    return _opt(
        120.0,
        "--stall-timeout-s",
        "Exit (status 75, for the restart policy) when the worker loop makes no progress this long.",
        min=1.0,
    )


def preprocess(
    kafka: str = KafkaOpt,  # type: ignore[assignment]
    store: str | None = StoreOpt,  # type: ignore[assignment]
    topic_prefix: str = TopicPrefixOpt,  # type: ignore[assignment]
    group: str | None = GroupOpt,  # type: ignore[assignment]
    max_bytes: int = MaxBytesOpt,  # type: ignore[assignment]
    max_pixels: int = MaxPixelsOpt,  # type: ignore[assignment]
    max_batch: int = _opt(16, "--preprocess-max-batch", "Messages per transaction.", min=1),  # type: ignore[assignment]
    health_file: Path | None = _health_opt(),  # type: ignore[assignment]
    stall_timeout_s: float = _stall_opt(),  # type: ignore[assignment]
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
    )
    worker.install_signal_handlers()
    stats = worker.run()
    log.info("preprocess stopped: %s", stats)


def route(
    kafka: str = KafkaOpt,  # type: ignore[assignment]
    serving: str = ServingOpt,  # type: ignore[assignment]
    model_name: str = ModelNameOpt,  # type: ignore[assignment]
    topic_prefix: str = TopicPrefixOpt,  # type: ignore[assignment]
    group: str | None = GroupOpt,  # type: ignore[assignment]
    weights: str = _opt(
        "",
        "--ab-weights",
        "Default A/B weights, e.g. stable=90,canary=10 (variant = TF Serving version label) "
        "until chexstack.control says otherwise. Empty: every image goes to the latest version.",
    ),  # type: ignore[assignment]
    max_batch: int = _opt(32, "--router-max-batch", "Largest micro-batch sent to serving.", min=1),  # type: ignore[assignment]
    max_wait_ms: int = _opt(20, "--router-max-wait-ms", "Longest wait to fill a micro-batch.", min=0),  # type: ignore[assignment]
    serving_timeout_s: float = _opt(30.0, "--serving-timeout-s", "Deadline of one serving call.", min=0.1),  # type: ignore[assignment]
    health_file: Path | None = _health_opt(),  # type: ignore[assignment]
    stall_timeout_s: float = _stall_opt(),  # type: ignore[assignment]
) -> None:
    """Consume xray.preprocessed, call TF Serving (gRPC), write xray.predictions."""
    from chexstack.ab import ControlFollower, parse_weights
    from chexstack.serving_client import ServingClient
    from chexstack.topics import Topics
    from chexstack.workers.router import Router, make_worker

    try:
        default = parse_weights(weights)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ab-weights") from exc
    topics = Topics(topic_prefix)
    follower = ControlFollower(kafka, topics.control, model_name, default=default)
    follower.start()
    client = ServingClient(serving, timeout_s=serving_timeout_s)
    router = Router(serving=client, model_name=model_name, topics=topics, follower=follower)
    worker = make_worker(
        bootstrap=kafka,
        router=router,
        group=group or f"{topic_prefix}chexstack-router",
        max_batch=max_batch,
        max_wait_s=max_wait_ms / 1000,
        stall_timeout_s=stall_timeout_s,
        health_file=health_file,
    )
    worker.install_signal_handlers()
    try:
        stats = worker.run()
        log.info("router stopped: %s", stats)
    finally:
        follower.close()
        client.close()


def register(app: typer.Typer) -> None:
    app.command("preprocess")(preprocess)
    app.command("route")(route)
