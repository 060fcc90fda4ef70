"""Result cards as HTML: pure functions of a prediction and its pixels, so they are unit-tested.

No plotting library: the bar chart is CSS, the thumbnail and the class activation map overlay are
PNGs made with Pillow and inlined as data URIs. Every value that comes from data is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image

from chexstack.labels import LABELS
from chexstack.messages import Prediction

THUMBNAIL_PX: Final = 192
STYLE: Final = """
<style>
.chexstack-card, .chexstack-rejected {border:1px solid #d0d7de; border-radius:6px; padding:8px 10px;
  margin:6px 0; font-family:system-ui, sans-serif; font-size:12px; max-width:760px}
.chexstack-rejected {border-color:#cf222e; background:#fff5f5}
.chexstack-card .cx-row {display:flex; gap:12px; align-items:flex-start; flex-wrap:wrap}
.chexstack-card figure {margin:0; text-align:center}
.chexstack-card figcaption {color:#57606a}
.chexstack-card .cx-bars {flex:1; min-width:260px}
.chexstack-card .cx-bar {display:flex; align-items:center; gap:6px; line-height:15px}
.chexstack-card .cx-bar .cx-name {width:130px; text-align:right}
.chexstack-card .cx-bar .cx-track {flex:1; background:#eaeef2; height:10px; position:relative}
.chexstack-card .cx-bar .cx-fill {background:#8c959f; height:10px}
.chexstack-card .cx-bar.cx-over .cx-fill {background:#cf222e}
.chexstack-card .cx-bar.cx-over .cx-name {font-weight:bold}
.chexstack-card .cx-threshold {position:absolute; top:-2px; bottom:-2px; border-left:1px dashed #24292f}
.chexstack-card .cx-meta {color:#57606a; margin-top:4px}
.chexstack-statuses td {padding:1px 8px; font-family:system-ui, sans-serif; font-size:12px}
.chexstack-status[data-status=predicted] .cx-state {color:#1a7f37}
.chexstack-status[data-status=rejected] .cx-state, .chexstack-status[data-status=timeout] .cx-state
  {color:#cf222e}
</style>
"""


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
    rows = []
    mark = f'<div class="cx-threshold" style="left:{threshold * 100:.1f}%"></div>'
    for label, p in zip(labels, probabilities, strict=True):
        cls = "cx-bar cx-over" if p >= threshold else "cx-bar"
        rows.append(
            f'<div class="{cls}" data-label="{html.escape(label)}">'
            f'<span class="cx-name">{html.escape(label)}</span>'
            f'<span class="cx-track"><div class="cx-fill" style="width:{p * 100:.1f}%"></div>{mark}</span>'
            f"<span>{p:.3f}</span></div>"
        )
    return f'<div class="cx-bars">{"".join(rows)}</div>'


def card_html(
    name: str,
    prediction: Prediction,
    pixels: np.ndarray,
    threshold: float,
    explanation: Explanation | None = None,
) -> str:
    """One image's card: thumbnail, CAM overlay, the 14 bars, findings over the threshold, model facts."""
    found = findings(prediction, threshold)
    found_text = (
        ", ".join(f"{html.escape(label)} ({p:.2f})" for label, p in found)
        if found
        else f"no finding at or over {threshold:.2f}"
    )
    figures = [
        f'<figure><img src="{png_data_uri(thumbnail(pixels))}" alt="preprocessed"/>'
        "<figcaption>preprocessed 224x224</figcaption></figure>"
    ]
    if explanation is not None and explanation.cam is not None and explanation.label is not None:
        figures.append(
            f'<figure class="cx-cam"><img src="{png_data_uri(cam_overlay(pixels, explanation.cam))}" '
            f'alt="class activation map"/><figcaption>CAM: {html.escape(explanation.label)}</figcaption>'
            "</figure>"
        )
    cam_note = ""
    if explanation is not None and explanation.unavailable:
        cam_note = f" · no class activation map: {html.escape(explanation.unavailable)}"
    lat = prediction.latency
    meta = (
        f"model {html.escape(prediction.model_name)} v{prediction.model_version} · "
        f"variant {html.escape(prediction.variant)} · end-to-end {lat.end_to_end_ms:.0f} ms "
        f"(preprocess {lat.preprocess_ms:.0f} ms, queue {lat.queue_ms:.0f} ms, "
        f"serving {lat.serving_ms:.0f} ms)"
        f"{cam_note}"
    )
    return (
        f'<div class="chexstack-card" data-image-id="{html.escape(prediction.image_id)}">'
        f"<b>{html.escape(name)}</b> <code>{html.escape(prediction.image_id)}</code>"
        f'<div class="cx-findings">Findings: {found_text}</div>'
        f'<div class="cx-row">{"".join(figures)}{bar_chart_html(prediction.probabilities, threshold)}</div>'
        f'<div class="cx-meta">{meta}</div></div>'
    )


def rejected_html(name: str, reason: str) -> str:
    return (
        f'<div class="chexstack-rejected" data-name="{html.escape(name)}">'
        f"<b>{html.escape(name)}</b> rejected: {html.escape(reason)}</div>"
    )


@dataclass(frozen=True)
class StatusRow:
    name: str
    status: str  # uploading, uploaded, preprocessed, predicted, rejected, timeout
    detail: str = ""


def status_table_html(rows: Sequence[StatusRow]) -> str:
    if not rows:
        return '<table class="chexstack-statuses"></table>'
    body = "".join(
        f'<tr class="chexstack-status" data-name="{html.escape(r.name)}" '
        f'data-status="{html.escape(r.status)}">'
        f'<td>{html.escape(r.name)}</td><td class="cx-state">{html.escape(r.status)}</td>'
        f"<td>{html.escape(r.detail)}</td></tr>"
        for r in rows
    )
    return f'<table class="chexstack-statuses">{body}</table>'
