"""The notebooks' settings, read from the same CHEXSTACK_* variables the services use.

The Jupyter service sets them in its compose file (Kafka, serving, the ingest service, hub URL,
TensorBoard URL) and hands the tokens over as compose secrets (CHEXSTACK_HUB_TOKEN_FILE,
CHEXSTACK_INGEST_TOKEN_FILE), so a notebook needs no configuration of its own. With
CHEXSTACK_INGEST_URL set, uploads go through the ingest service, which holds the pseudonym key; without
it (a notebook outside the platform) they are made in the kernel, as `chexstack upload` makes them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

# The services' --max-bytes / --max-pixels defaults: a file the notebook accepts is one `chexstack upload`
# and the preprocess workers accept too.
from chexstack.settings import (
    DEFAULT_KAFKA,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MODEL_NAME,
    DEFAULT_SERVING,
    Limits,
    default_store,
    secret,
)
from chexstack.topics import Topics

DEFAULT_HUB_URL: Final = "http://127.0.0.1:8600"
DEFAULT_TENSORBOARD_URL: Final = "http://127.0.0.1:6006"


def _positive_int(env: dict[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name} must be a positive integer, got {text!r}")
    return int(text)


@dataclass(frozen=True)
class NotebookSettings:
    kafka: str = DEFAULT_KAFKA
    serving: str = DEFAULT_SERVING
    store: str = ""
    model_name: str = DEFAULT_MODEL_NAME
    topic_prefix: str = ""
    hub_url: str = DEFAULT_HUB_URL
    # Never printed: the hub token stays in the environment (HubClient reads CHEXSTACK_HUB_TOKEN).
    hub_token: str | None = None
    tensorboard_url: str = DEFAULT_TENSORBOARD_URL
    # The ingest service uploads go through ("": uploads in the kernel, with the store's key); its token
    # is never printed either.
    ingest_url: str = ""
    ingest_token: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def limits(self) -> Limits:
        """The upload limits (CHEXSTACK_MAX_BYTES, CHEXSTACK_MAX_PIXELS)."""
        return Limits(max_bytes=self.max_bytes, max_pixels=self.max_pixels)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> NotebookSettings:
        e = dict(os.environ if env is None else env)
        return cls(
            kafka=e.get("CHEXSTACK_KAFKA") or DEFAULT_KAFKA,
            serving=e.get("CHEXSTACK_SERVING") or DEFAULT_SERVING,
            store=e.get("CHEXSTACK_STORE") or default_store(),
            model_name=e.get("CHEXSTACK_MODEL_NAME") or DEFAULT_MODEL_NAME,
            topic_prefix=e.get("CHEXSTACK_TOPIC_PREFIX", ""),
            hub_url=(e.get("CHEXSTACK_HUB_URL") or DEFAULT_HUB_URL).rstrip("/"),
            hub_token=secret("CHEXSTACK_HUB_TOKEN", e),
            tensorboard_url=(e.get("CHEXSTACK_TENSORBOARD_URL") or DEFAULT_TENSORBOARD_URL).rstrip("/"),
            ingest_url=(e.get("CHEXSTACK_INGEST_URL") or "").rstrip("/"),
            ingest_token=secret("CHEXSTACK_INGEST_TOKEN", e),
            max_bytes=_positive_int(e, "CHEXSTACK_MAX_BYTES", DEFAULT_MAX_BYTES),
            max_pixels=_positive_int(e, "CHEXSTACK_MAX_PIXELS", DEFAULT_MAX_PIXELS),
        )

    def __repr__(self) -> str:  # the tokens must not reach a notebook's output
        token = "set" if self.hub_token else "unset"
        ingest_token = "set" if self.ingest_token else "unset"
        return (
            f"NotebookSettings(kafka={self.kafka!r}, serving={self.serving!r}, store={self.store!r}, "
            f"model_name={self.model_name!r}, topic_prefix={self.topic_prefix!r}, hub_url={self.hub_url!r}, "
            f"hub_token={token}, tensorboard_url={self.tensorboard_url!r}, ingest_url={self.ingest_url!r}, "
            f"ingest_token={ingest_token}, max_bytes={self.max_bytes}, max_pixels={self.max_pixels})"
        )
