"""Result cards and notebook settings: pure functions, checked on their HTML and pixels."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from chexstack.labels import LABELS
from chexstack.messages import Latency, Prediction
from chexstack.notebook import cards
from chexstack.notebook.env import NotebookSettings
from chexstack.settings import Limits


def prediction(probs: list[float], variant: str = "stable") -> Prediction:
    return Prediction(
        image_id="a" * 32,
        model_name="chexnet",
        model_version=3,
        variant=variant,
        probabilities=tuple(probs),
        latency=Latency(preprocess_ms=12, queue_ms=3, serving_ms=40, end_to_end_ms=81),
        predicted_at_ms=1,
    )


PROBS = [0.1] * 14
PROBS[LABELS.index("Cardiomegaly")] = 0.9
PROBS[LABELS.index("Effusion")] = 0.6
PIXELS = (np.arange(224 * 224) % 256).astype(np.uint8).reshape(224, 224)


def decode_uri(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_findings_are_over_the_threshold_most_probable_first() -> None:
    assert cards.findings(prediction(PROBS), 0.5) == [("Cardiomegaly", 0.9), ("Effusion", 0.6)]
    assert cards.findings(prediction(PROBS), 0.95) == []
    assert len(cards.findings(prediction(PROBS), 0.0)) == 14


def test_bar_chart_has_every_label_and_marks_those_over_the_threshold() -> None:
    out = cards.bar_chart_html(PROBS, 0.5)
    assert len(re.findall(r'class="cx-bar[ "]', out)) == 14
    over = re.findall(r'class="cx-bar cx-over" data-label="([^"]+)"', out)
    assert over == ["Cardiomegaly", "Effusion"]
    assert 'style="width:90.0%"' in out and "left:50.0%" in out


def test_card_shows_model_variant_latency_findings_and_cam() -> None:
    cam = np.zeros((7, 7), np.float32)
    cam[2, 3] = 1.0
    html = cards.card_html(
        "chest.png", prediction(PROBS), PIXELS, 0.5, cards.Explanation(label="Cardiomegaly", cam=cam)
    )
    assert html.startswith('<div class="chexstack-card" data-image-id="' + "a" * 32)
    assert "model chexnet v3" in html and "variant stable" in html and "end-to-end 81 ms" in html
    assert "Findings: Cardiomegaly (0.90), Effusion (0.60)" in html
    assert "CAM: Cardiomegaly" in html
    uris = re.findall(r'src="(data:image/png;base64,[^"]+)"', html)
    assert len(uris) == 2
    assert decode_uri(uris[0]).shape == (cards.THUMBNAIL_PX, cards.THUMBNAIL_PX)
    assert decode_uri(uris[1]).shape == (cards.THUMBNAIL_PX, cards.THUMBNAIL_PX, 3)


def test_card_without_cam_says_why_and_without_findings_says_so() -> None:
    html = cards.card_html(
        "x.png", prediction([0.2] * 14), PIXELS, 0.5, cards.Explanation(unavailable="no explain signature")
    )
    assert "no class activation map: no explain signature" in html
    assert "no finding at or over 0.50" in html
    assert "cx-cam" not in html


def test_names_and_reasons_are_escaped() -> None:
    evil = '<img src=x onerror="alert(1)">.png'
    for html in (
        cards.card_html(evil, prediction(PROBS), PIXELS, 0.5),
        cards.rejected_html(evil, "<b>bad</b>"),
        cards.status_table_html([cards.StatusRow(evil, "rejected", "<script>")]),
    ):
        assert "<img src=x" not in html and "<script>" not in html and "<b>bad</b>" not in html
        assert "&lt;img src=x" in html


def test_status_table_rows_carry_name_and_status() -> None:
    html = cards.status_table_html(
        [
            cards.StatusRow("a.png", "predicted", "chexnet v3"),
            cards.StatusRow("b.txt", "rejected", "not an image"),
        ]
    )
    assert re.findall(r'data-name="([^"]+)" data-status="([^"]+)"', html) == [
        ("a.png", "predicted"),
        ("b.txt", "rejected"),
    ]


def test_heat_colours_run_blue_to_red_and_overlay_blends() -> None:
    lo, hi = cards.heat_colours(np.array([0.0, 1.0]))
    assert lo[2] > lo[0] and hi[0] > hi[2]
    cam = np.zeros((7, 7), np.float32)
    cam[0, 0] = 1.0
    out = cards.cam_overlay(np.zeros((224, 224), np.uint8), cam)
    assert out.shape == (cards.THUMBNAIL_PX, cards.THUMBNAIL_PX, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] > out[-1, -1, 0]  # red where the map is hot, blue-ish elsewhere
    with pytest.raises(ValueError, match="2-D class activation map"):
        cards.cam_overlay(PIXELS, np.zeros((7, 7, 14)))
    with pytest.raises(ValueError, match="uint8"):
        cards.thumbnail(PIXELS.astype(np.float32))


def test_settings_come_from_the_service_variables_and_hide_the_token() -> None:
    s = NotebookSettings.from_env(
        {
            "CHEXSTACK_KAFKA": "kafka:9092",
            "CHEXSTACK_SERVING": "serving:8500",
            "CHEXSTACK_STORE": "/var/lib/chexstack/blobs",
            "CHEXSTACK_TOPIC_PREFIX": "t1.",
            "CHEXSTACK_HUB_URL": "http://hub:8600/",
            "CHEXSTACK_HUB_TOKEN": "s3cr3t-token",
            "CHEXSTACK_TENSORBOARD_URL": "http://127.0.0.1:6006/",
        }
    )
    assert (s.kafka, s.serving, s.hub_url, s.tensorboard_url) == (
        "kafka:9092",
        "serving:8500",
        "http://hub:8600",
        "http://127.0.0.1:6006",
    )
    assert s.topics.predictions == "t1.xray.predictions"
    assert s.hub_token == "s3cr3t-token"
    assert "s3cr3t" not in repr(s) and "hub_token=set" in repr(s)
    assert NotebookSettings.from_env({}).kafka == "127.0.0.1:9092"


def test_upload_limits_come_from_the_service_variables() -> None:
    assert NotebookSettings.from_env({}).limits == Limits(max_bytes=64 * 1024 * 1024, max_pixels=60_000_000)
    given = NotebookSettings.from_env({"CHEXSTACK_MAX_BYTES": "1000", "CHEXSTACK_MAX_PIXELS": " 500 "})
    assert given.limits == Limits(max_bytes=1000, max_pixels=500)
    for name, value in (("CHEXSTACK_MAX_BYTES", "64M"), ("CHEXSTACK_MAX_PIXELS", "0")):
        with pytest.raises(ValueError, match=f"{name} must be a positive integer, got '{value}'"):
            NotebookSettings.from_env({name: value})
