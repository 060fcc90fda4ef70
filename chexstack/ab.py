"""A/B weights: choosing a variant per image, and the compacted `chexstack.control` topic."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from confluent_kafka import Message

from chexstack.bus import ReadError, TopicMissing, TopicReader, make_producer, produce_sync, require_broker
from chexstack.messages import AbConfig, BadMessage, decode

if TYPE_CHECKING:
    from chexstack.serving_client import ServingClient

log = logging.getLogger(__name__)

LATEST = "latest"  # the variant name used when no weights are configured
# The platform's version labels: what a refusal lists as there or not when serving lacks a label
# (TF Serving has no call that lists a model's labels).
PLATFORM_LABELS = ("stable", "canary")


class UnknownLabel(ValueError):
    """Weights give traffic to a variant serving does not resolve: every image of it would be a dead
    letter. str(exc) names the labels serving has."""


def unknown_labels(client: ServingClient, model_name: str, weights: dict[str, int]) -> list[str]:
    """The variants that get traffic and that serving resolves to no version, in name order.

    Raises ServingError when serving cannot answer."""
    return [v for v, w in sorted(weights.items()) if w > 0 and client.label_version(model_name, v) is None]


def check_labels(client: ServingClient, model_name: str, weights: dict[str, int]) -> None:
    """Raise UnknownLabel unless serving resolves every variant that gets traffic (ServingError when it
    cannot answer): what `chexstack ab set` and the hub ask before they publish weights."""
    unknown = unknown_labels(client, model_name, weights)
    if not unknown:
        return
    candidates = sorted(set(PLATFORM_LABELS) | set(weights))
    has = {label: v for label in candidates if (v := client.label_version(model_name, label)) is not None}
    its = (
        "its labels: " + ", ".join(f"{k} -> version {v}" for k, v in has.items())
        if has
        else f"it has none of {', '.join(candidates)}: a `chexstack serve --model-base-path` has no labels,"
        " serve a models.config with version_labels (--model-config-file)"
    )
    raise UnknownLabel(
        f"serving at {client.target} knows no label {', '.join(map(repr, unknown))} for {model_name!r} "
        f"({its}); the weights were not changed, else every image of that variant would be a dead letter"
    )


def parse_weights(text: str | list[str]) -> dict[str, int]:
    """`stable=90,canary=10` (or a list of `name=weight`) -> {"stable": 90, "canary": 10}.

    Raises ValueError naming the bad weight and why: not NAME=INTEGER, negative, a name given twice, or
    every weight 0 (no variant would get an image; no weights at all means the latest version)."""
    items = text if isinstance(text, list) else [t for t in text.split(",")]
    weights: dict[str, int] = {}
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, sep, value = (part.strip() for part in item.partition("="))
        number = value.removeprefix("-")
        if not sep or not name or not number.isdigit():
            raise ValueError(f"bad weight {item!r}: expected NAME=INTEGER, e.g. stable=90")
        if value.startswith("-"):
            raise ValueError(f"bad weight {item!r}: a weight is 0 or more (a share of the images)")
        if name in weights:
            raise ValueError(f"bad weight {item!r}: {name} is given twice")
        weights[name] = int(number)
    if weights and not any(weights.values()):
        raise ValueError(
            f"bad weights {', '.join(f'{k}={v}' for k, v in weights.items())}: every weight is 0, so no "
            "variant would get an image; give one a weight above 0 (or none at all for the latest version)"
        )
    AbConfig(model_name="x", weights=weights)  # the control message's own rules, which the above match
    return weights


def choose_variant(weights: dict[str, int], sticky_key: str, model_name: str) -> str:
    """Deterministic weighted choice: the same patient (or image) always lands on the same variant."""
    total = sum(weights.values())
    if total <= 0:
        return LATEST
    digest = hashlib.sha256(f"{model_name}\0{sticky_key}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % total
    for name in sorted(weights):
        if bucket < weights[name]:
            return name
        bucket -= weights[name]
    raise AssertionError("unreachable: bucket < total")


def publish_weights(
    bootstrap: str, control_topic: str, model_name: str, weights: dict[str, int], timeout_s: float = 30.0
) -> AbConfig:
    """Publish the weights; ReadError when the brokers do not answer (within a third of `timeout_s`),
    PublishError when the message is not acknowledged within `timeout_s`."""
    cfg = AbConfig(model_name=model_name, weights=weights)
    # Not acknowledged in time: it fails, rather than staying queued after the command has given up.
    producer = make_producer(bootstrap, **{"message.timeout.ms": max(1, int(timeout_s * 800))})
    require_broker(producer, bootstrap, timeout_s / 3)
    produce_sync(producer, control_topic, AbConfig.key_for(model_name), cfg.to_bytes(), timeout_s=timeout_s)
    return cfg


def read_weights(
    bootstrap: str, control_topic: str, model_name: str, timeout_s: float = 10.0
) -> AbConfig | None:
    """The latest A/B config for a model, reading the control topic to its end."""
    follower = ControlFollower(bootstrap, control_topic, model_name, default={})
    try:
        follower.catch_up(timeout_s)
        return follower.config
    finally:
        follower.close()


class ControlFollower:
    """Follows the control topic in a background thread; `weights` is always the newest config."""

    def __init__(
        self,
        bootstrap: str,
        control_topic: str,
        model_name: str,
        default: dict[str, int],
        check: Callable[[AbConfig], str | None] | None = None,
    ) -> None:
        """`check(config)` says why a config must not be followed (None: follow it); the router's refuses
        weights naming a label serving does not know, which would send every image to the DLQ."""
        self.model_name = model_name
        self._check = check
        self.topic = control_topic
        self._default = dict(default)
        self.config: AbConfig | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # A reader, not a group member: every router reads the whole compacted topic itself.
        try:
            self._reader = TopicReader(bootstrap, control_topic, purpose="control")
        except TopicMissing as exc:
            raise TopicMissing(f"control {exc} (run `chexstack kafka topics`)") from exc
        try:
            self._reader.start()
        except BaseException:
            self._reader.close()
            raise

    @property
    def weights(self) -> dict[str, int]:
        with self._lock:
            return dict(self.config.weights) if self.config else dict(self._default)

    def _poll_once(self, timeout: float) -> None:
        msg = self._reader.poll(timeout)
        if msg is None:
            return
        try:
            self._apply(msg)
        except Exception as exc:  # chexstack.control is compacted: a record that broke us would stay
            log.warning(
                "control topic: ignoring the record at offset %s: unexpected %s: %s",
                msg.offset(),
                type(exc).__name__,
                exc,
            )

    def _apply(self, msg: Message) -> None:
        if (msg.key() or b"").decode(errors="replace") != AbConfig.key_for(self.model_name):
            return
        if msg.value() is None:  # tombstone: back to the default
            with self._lock:
                self.config = None
            return
        try:
            cfg = decode(AbConfig, msg.value())
            if cfg.model_name != self.model_name:
                raise BadMessage(f"model_name {cfg.model_name!r} under the key of {self.model_name!r}")
        except BadMessage as exc:
            log.warning(
                "control topic: ignoring a bad A/B config at offset %s, keeping %s: %s",
                msg.offset(),
                self.weights or LATEST,
                exc,
            )
            return
        why = self._check(cfg) if self._check is not None else None
        if why is not None:
            log.warning(
                "control topic: refusing the A/B weights %s at offset %s, keeping %s: %s",
                cfg.weights,
                msg.offset(),
                self.weights or LATEST,
                why,
            )
            return
        with self._lock:
            changed = self.config is None or self.config.weights != cfg.weights
            self.config = cfg
        if changed:
            log.info("A/B weights for %s: %s", self.model_name, cfg.weights or LATEST)

    def catch_up(self, timeout_s: float) -> None:
        """Read the topic up to its end as it was when the follower started, for at most `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not self._reader.at_end and time.monotonic() < deadline:
            self._poll_once(0.2)

    def start(self) -> None:
        self.catch_up(10)
        self._thread = threading.Thread(target=self._run, name="control-follower", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._poll_once(0.5)
        except ReadError as exc:  # a fatal consumer error: the weights stay as they are
            log.error("control topic: stopped following %s: %s", self.topic, exc)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._reader.close()
