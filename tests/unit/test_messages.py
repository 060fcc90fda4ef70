import base64
import json
from pathlib import Path

import numpy as np
import pytest

from chexstack.labels import LABELS
from chexstack.messages import (
    SCHEMAS,
    AbConfig,
    BadMessage,
    Latency,
    Prediction,
    Preprocessed,
    Uploaded,
    decode,
    export_json_schemas,
)

IMG = "0123456789abcdef0123456789abcdef"
SHA = IMG * 2


def uploaded(**kw: object) -> Uploaded:
    base: dict[str, object] = dict(
        image_id=IMG,
        sha256=SHA,
        blob_uri=f"blob://sha256/{SHA}",
        patient="p-0123456789abcdef",
        format="png",
        size_bytes=10,
        width=5,
        height=6,
        uploaded_at_ms=1,
    )
    base.update(kw)
    return Uploaded.model_validate(base)


def test_uploaded_round_trips_as_plain_json_with_schema_tag() -> None:
    raw = uploaded().to_bytes()
    obj = json.loads(raw)  # readable by any client: plain UTF-8 JSON
    assert obj["schema"] == "xray.uploaded/v1"
    assert obj["image_id"] == IMG
    assert decode(Uploaded, raw) == uploaded()


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (None, "tombstone"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"{not json", "not UTF-8 JSON"),
        (b'{"schema": "xray.uploaded/v1"}', "image_id"),
        (b'{"schema": "xray.uploaded/v2"}', "schema"),
    ],
)
def test_decode_names_what_is_wrong(value: bytes | None, needle: str) -> None:
    with pytest.raises(BadMessage, match=needle):
        decode(Uploaded, value)


def test_uploaded_rejects_raw_patient_identifier() -> None:
    with pytest.raises(ValueError, match="patient"):
        uploaded(patient="DOE^JANE")


def test_preprocessed_pixels_round_trip_and_size_check() -> None:
    px = np.arange(224 * 224, dtype=np.uint32).reshape(224, 224).astype(np.uint8)
    msg = Preprocessed(
        image_id=IMG,
        sha256=SHA,
        pixels_b64=Preprocessed.encode_pixels(px),
        uploaded_at_ms=1,
        preprocessed_at_ms=2,
        preprocess_ms=0.5,
    )
    again = decode(Preprocessed, msg.to_bytes())
    assert np.array_equal(again.pixels(), px)
    with pytest.raises(ValueError, match="224x224"):
        Preprocessed.encode_pixels(np.zeros((10, 10), np.uint8))
    bad = json.loads(msg.to_bytes())
    bad["pixels_b64"] = base64.b64encode(b"x" * 100).decode()
    with pytest.raises(BadMessage, match="pixels"):
        decode(Preprocessed, json.dumps(bad).encode())


def test_prediction_uses_canonical_label_order() -> None:
    lat = Latency(preprocess_ms=1, queue_ms=1, serving_ms=1, end_to_end_ms=3)
    pred = Prediction(
        image_id=IMG,
        model_name="chexnet",
        model_version=1,
        variant="latest",
        probabilities=tuple(i / 20 for i in range(14)),
        latency=lat,
        predicted_at_ms=1,
    )
    assert pred.labels[0] == "Atelectasis" and pred.labels[-1] == "Hernia"
    assert list(pred.by_label()) == list(LABELS)
    assert pred.by_label()["Effusion"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="canonical"):
        Prediction(
            image_id=IMG,
            model_name="m",
            model_version=1,
            variant="v",
            labels=tuple(reversed(LABELS)),
            probabilities=(0.1,) * 14,
            latency=lat,
            predicted_at_ms=1,
        )
    with pytest.raises(ValueError):
        Prediction(
            image_id=IMG,
            model_name="m",
            model_version=1,
            variant="v",
            probabilities=(0.1,) * 13,
            latency=lat,
            predicted_at_ms=1,
        )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Prediction(
            image_id=IMG,
            model_name="m",
            model_version=1,
            variant="v",
            probabilities=(1.5,) * 14,
            latency=lat,
            predicted_at_ms=1,
        )


def test_ab_config_validates_weights() -> None:
    assert AbConfig(model_name="chexnet", weights={"stable": 90, "canary": 10}).weights["canary"] == 10
    with pytest.raises(ValueError, match=">= 0"):
        AbConfig(model_name="chexnet", weights={"stable": -1})
    with pytest.raises(ValueError, match="> 0"):
        AbConfig(model_name="chexnet", weights={"stable": 0})


def test_exported_json_schemas_match_committed_docs(tmp_path: Path) -> None:
    written = export_json_schemas(tmp_path)
    assert {p.name for p in written} == {f"{t}.schema.json" for t in SCHEMAS}
    schema = json.loads((tmp_path / "xray.predictions.schema.json").read_text())
    assert "probabilities" in schema["properties"]
    docs = Path(__file__).resolve().parents[2] / "docs" / "schemas"
    for p in written:
        assert (docs / p.name).read_text() == p.read_text(), f"docs/schemas/{p.name} is stale"
