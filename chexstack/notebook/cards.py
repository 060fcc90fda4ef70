"""Result cards as HTML: pure functions of a prediction and its pixels, so they are unit-tested.

No plotting library: the bar chart is CSS, the thumbnail and the class activation map overlay are
PNGs made with Pillow and inlined as data URIs. The HTML comes from the Jinja2 templates in
templates/cards with autoescape on, so every value that comes from data is escaped.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image

from chexstack.labels import LABELS
from chexstack.messages import Prediction
from chexstack.notebook.templating import render

THUMBNAIL_PX: Final = 192
STYLE: Final = render("cards/style.html.j2")


@dataclass(frozen=True)
class Explanation:
    """The class activation map of one finding ([h, w] in [0, 1]), or why there is none."""

    label: str | None = None
    cam: np.ndarray | None = None
    unavailable: str | None = None


def png_data_uri(rgb_or_grey: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb_or_grey)).save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def thumbnail(pixels: np.ndarray, size: int = THUMBNAIL_PX) -> np.ndarray:
    """The preprocessed uint8 grey pixels scaled for display."""
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"expected 2-D uint8 pixels, got {pixels.dtype} {pixels.shape}")
    img = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """A jet-like colour map (blue -> cyan -> yellow -> red) of values in [0, 1] as uint8 RGB."""
    v = np.clip(values.astype(np.float32), 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return np.rint(np.stack([r, g, b], axis=-1) * 255.0).astype(np.uint8)


def cam_overlay(
    pixels: np.ndarray, cam: np.ndarray, size: int = THUMBNAIL_PX, alpha: float = 0.45
) -> np.ndarray:
    """The CAM ([h, w] in [0, 1]) upsampled over the radiograph: uint8 RGB [size, size, 3]."""
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"expected a 2-D class activation map, got shape {cam.shape}")
    grey = thumbnail(pixels, size).astype(np.float32)
    heat = np.asarray(
        Image.fromarray(np.clip(cam, 0.0, 1.0).astype(np.float32)).resize(
            (size, size), Image.Resampling.BILINEAR
        )
    )
    base = np.repeat(grey[..., None], 3, axis=-1)
    blended = (1.0 - alpha) * base + alpha * heat_colours(heat).astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def findings(prediction: Prediction, threshold: float) -> list[tuple[str, float]]:
    """Labels at or over the threshold, most probable first."""
    over = [(label, p) for label, p in prediction.by_label().items() if p >= threshold]
    return sorted(over, key=lambda item: (-item[1], item[0]))


def bar_chart_html(probabilities: Sequence[float], threshold: float, labels: Sequence[str] = LABELS) -> str:
    bars = list(zip(labels, probabilities, strict=True))
    return render("cards/bars.html.j2", bars=bars, threshold=threshold)


def card_html(
    name: str,
    prediction: Prediction,
    pixels: np.ndarray,
    threshold: float,
    explanation: Explanation | None = None,
) -> str:
    """One image's card: thumbnail, CAM overlay, the 14 bars, findings over the threshold, model facts."""
    cam_uri = cam_label = None
    if explanation is not None and explanation.cam is not None and explanation.label is not None:
        cam_uri, cam_label = png_data_uri(cam_overlay(pixels, explanation.cam)), explanation.label
    return render(
        "cards/card.html.j2",
        name=name,
        p=prediction,
        lat=prediction.latency,
        found=findings(prediction, threshold),
        threshold=threshold,
        thumbnail=png_data_uri(thumbnail(pixels)),
        cam=cam_uri,
        cam_label=cam_label,
        cam_unavailable=explanation.unavailable if explanation is not None else None,
        bars=list(zip(LABELS, prediction.probabilities, strict=True)),
    )


def rejected_html(name: str, reason: str) -> str:
    return render("cards/rejected.html.j2", name=name, reason=reason)


@dataclass(frozen=True)
class StatusRow:
    name: str
    status: str  # uploading, uploaded, preprocessed, predicted, rejected, timeout
    detail: str = ""


def status_table_html(rows: Sequence[StatusRow]) -> str:
    return render("cards/statuses.html.j2", rows=rows)
