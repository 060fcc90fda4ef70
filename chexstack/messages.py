"""Versioned message contracts for every Kafka topic.

Messages are UTF-8 JSON objects (readable with kcat or any client), keyed by image_id. Each carries
`schema` ("<topic>/v<N>"); a consumer rejects a schema it does not know to the DLQ. The JSON Schemas
are exported to docs/schemas/ by `chexstack schemas export`.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chexstack.labels import LABELS
from chexstack.settings import IMAGE_SIZE

ImageId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$", description="First 32 hex digits of the sha256.")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ImageFormat = Literal["png", "jpeg", "dicom"]


def now_ms() -> int:
    return int(time.time() * 1000)


def format_ms(ms: int) -> str:
    """A message's epoch-milliseconds time as `YYYY-MM-DD HH:MM:SS UTC`."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class Uploaded(_Message):
    """xray.uploaded: a reference to a stored original; never pixels, never a patient identifier."""

    schema_: Literal["xray.uploaded/v1"] = Field("xray.uploaded/v1", alias="schema")
    image_id: ImageId
    sha256: Sha256
    blob_uri: str = Field(description="Where the (de-identified) original is stored.")
    patient: str | None = Field(None, pattern=r"^p-[0-9a-f]{16}$", description="Keyed-hash pseudonym.")
    format: ImageFormat
    size_bytes: int = Field(ge=1)
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    uploaded_at_ms: int


class Preprocessed(_Message):
    """xray.preprocessed: 224x224 uint8 grey pixels inline (base64, row-major) plus metadata."""

    schema_: Literal["xray.preprocessed/v1"] = Field("xray.preprocessed/v1", alias="schema")
    image_id: ImageId
    sha256: Sha256
    patient: str | None = Field(None, pattern=r"^p-[0-9a-f]{16}$")
    height: Literal[224] = IMAGE_SIZE
    width: Literal[224] = IMAGE_SIZE
    pixels_b64: str
    uploaded_at_ms: int
    preprocessed_at_ms: int
    preprocess_ms: float = Field(ge=0)

    @field_validator("pixels_b64")
    @classmethod
    def _pixels_size(cls, v: str) -> str:
        if len(base64.b64decode(v, validate=True)) != IMAGE_SIZE * IMAGE_SIZE:
            raise ValueError(f"pixels must be {IMAGE_SIZE}x{IMAGE_SIZE} uint8")
        return v

    @staticmethod
    def encode_pixels(pixels: np.ndarray) -> str:
        if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE) or pixels.dtype != np.uint8:
            raise ValueError(f"expected uint8 {IMAGE_SIZE}x{IMAGE_SIZE}, got {pixels.dtype} {pixels.shape}")
        return base64.b64encode(np.ascontiguousarray(pixels).tobytes()).decode()

    def pixels(self) -> np.ndarray:
        raw = base64.b64decode(self.pixels_b64)
        return np.frombuffer(raw, dtype=np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)


class Latency(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    preprocess_ms: float = Field(ge=0)
    queue_ms: float = Field(ge=0, description="From preprocessed to the router's serving call.")
    serving_ms: float = Field(ge=0, description="The batch's serving round trip.")
    end_to_end_ms: float = Field(ge=0, description="From upload to the prediction being produced.")


class Prediction(_Message):
    """xray.predictions: 14 probabilities in canonical label order from one model version."""

    schema_: Literal["xray.predictions/v1"] = Field("xray.predictions/v1", alias="schema")
    image_id: ImageId
    patient: str | None = Field(None, pattern=r"^p-[0-9a-f]{16}$")
    model_name: str
    model_version: int = Field(ge=1)
    variant: str = Field(description="A/B variant ('stable', 'canary', ...) or 'latest'.")
    labels: tuple[str, ...] = LABELS
    probabilities: tuple[float, ...] = Field(min_length=len(LABELS), max_length=len(LABELS))
    latency: Latency
    predicted_at_ms: int

    @field_validator("labels")
    @classmethod
    def _canonical(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if tuple(v) != LABELS:
            raise ValueError("labels must be the canonical ChestX-ray14 order")
        return v

    @field_validator("probabilities")
    @classmethod
    def _unit(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 <= p <= 1.0 for p in v):
            raise ValueError("probabilities must lie in [0, 1]")
        return v

    def by_label(self) -> dict[str, float]:
        return dict(zip(self.labels, self.probabilities, strict=True))


class DeadLetter(_Message):
    """xray.dlq: a message that could not be processed, why, and where it came from."""

    schema_: Literal["xray.dlq/v1"] = Field("xray.dlq/v1", alias="schema")
    source_topic: str
    source_partition: int
    source_offset: int
    key: str | None
    reason: str
    error_type: str
    worker: str
    failed_at_ms: int
    payload_b64: str = Field(
        description="The original message value (already de-identified), at most its first 128 KiB."
    )
    payload_bytes: int | None = Field(None, ge=0, description="Size of the original value.")


class AbConfig(_Message):
    """chexstack.control, key `ab/<model_name>`: A/B weights; a variant name is a TF Serving version label.

    Empty weights mean: every image goes to the model's latest version.
    """

    schema_: Literal["chexstack.control.ab/v1"] = Field("chexstack.control.ab/v1", alias="schema")
    model_name: str
    weights: dict[str, int] = Field(default_factory=dict)
    updated_at_ms: int = Field(default_factory=now_ms)

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, int]) -> dict[str, int]:
        if any(w < 0 for w in v.values()):
            raise ValueError("weights must be >= 0")
        if v and sum(v.values()) == 0:
            raise ValueError("at least one weight must be > 0")
        return v

    @staticmethod
    def key_for(model_name: str) -> str:
        return f"ab/{model_name}"


M = TypeVar("M", bound=_Message)
SCHEMAS: Final[dict[str, type[_Message]]] = {
    "xray.uploaded": Uploaded,
    "xray.preprocessed": Preprocessed,
    "xray.predictions": Prediction,
    "xray.dlq": DeadLetter,
    "chexstack.control": AbConfig,
}


class BadMessage(ValueError):
    """A message value that is not valid JSON for the expected schema; the reason names what is wrong."""


# The largest value any consumer parses: four times an xray.preprocessed message (its 224x224 pixels are
# about 67 KB of base64), the largest the platform writes. Checked before parsing, so a huge value costs
# no parse time or memory, and a dead letter carrying it stays under the broker's 1 MiB message limit.
MAX_VALUE_BYTES: Final = 256 * 1024


def decode(model: type[M], value: bytes | None) -> M:
    """Parse and validate one message value; every way it can be wrong raises BadMessage with why.

    Beyond bad UTF-8 and bad JSON, json.loads raises ValueError for an integer of more than 4,300
    digits and RecursionError for deep nesting: left uncaught, either ends the worker before it commits,
    and the restarted worker reads the same message again, forever.
    """
    if value is None:
        raise BadMessage("empty message value (tombstone)")
    if len(value) > MAX_VALUE_BYTES:
        raise BadMessage(f"message value of {len(value)} bytes is over the {MAX_VALUE_BYTES} byte limit")
    try:
        obj: Any = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadMessage(f"not UTF-8 JSON: {exc}") from exc
    except RecursionError as exc:
        raise BadMessage("JSON nested too deeply to parse") from exc
    except ValueError as exc:  # e.g. an integer over sys.get_int_max_str_digits() digits
        raise BadMessage(f"JSON value out of range: {exc}") from exc
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise BadMessage(
            f"invalid {model.__name__} ({exc.error_count()} errors): {where}: {first['msg']}"
        ) from exc
    except RecursionError as exc:
        raise BadMessage(f"invalid {model.__name__}: nested too deeply to validate") from exc


def export_json_schemas(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for topic, model in SCHEMAS.items():
        path = out_dir / f"{topic}.schema.json"
        schema = model.model_json_schema(by_alias=True)
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
