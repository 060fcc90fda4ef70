"""The evaluation report: per-class AUROC next to the CheXNet paper's, as JSON and Markdown."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Final

import numpy as np

from chexstack.labels import LABELS
from chexstack.training.metrics import mean_auroc, per_class_auroc

PAPER: Final = "Rajpurkar et al. 2017, CheXNet (arXiv:1711.05225), Table 2"
# CheXNet's test-set AUROC per class on ChestX-ray14, in chexstack.labels.LABELS order.
CHEXNET_AUROC: Final[dict[str, float]] = {
    "Atelectasis": 0.8094,
    "Cardiomegaly": 0.9248,
    "Effusion": 0.8638,
    "Infiltration": 0.7345,
    "Mass": 0.8676,
    "Nodule": 0.7802,
    "Pneumonia": 0.7680,
    "Pneumothorax": 0.8887,
    "Consolidation": 0.7901,
    "Edema": 0.8878,
    "Emphysema": 0.9371,
    "Fibrosis": 0.8047,
    "Pleural_Thickening": 0.8062,
    "Hernia": 0.9164,
}


def _num(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def build(labels: np.ndarray, scores: np.ndarray, *, split: str, context: dict[str, Any]) -> dict[str, Any]:
    """The report as a JSON-ready dict (NaN AUROC, a class without positives or negatives, is null)."""
    aurocs = per_class_auroc(labels, scores)
    positives = np.asarray(labels).sum(axis=0).astype(int)
    classes = [
        {
            "label": label,
            "auroc": _num(aurocs[label]),
            "chexnet": CHEXNET_AUROC[label],
            "positives": int(positives[k]),
            "negatives": int(len(labels) - positives[k]),
        }
        for k, label in enumerate(LABELS)
    ]
    return {
        "split": split,
        "images": len(labels),
        "mean_auroc": _num(mean_auroc(aurocs)),
        "classes_evaluated": sum(not math.isnan(v) for v in aurocs.values()),
        "chexnet_mean_auroc": round(float(np.mean(list(CHEXNET_AUROC.values()))), 4),
        "paper": PAPER,
        "per_class": classes,
        **context,
    }


def markdown(report: dict[str, Any]) -> str:
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    lines = [
        f"# Evaluation: {report.get('model_name', 'chexnet')}"
        + (f" version {report['model_version']}" if report.get("model_version") else ""),
        "",
        f"Split `{report['split']}` ({report['images']} images); reference: {report['paper']}.",
        "n/a: the split has no positive (or no negative) image of that class.",
        "",
        "| Finding | AUROC | CheXNet | Positives |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in report["per_class"]:
        name = row["label"].replace("_", " ")
        lines.append(f"| {name} | {fmt(row['auroc'])} | {row['chexnet']:.4f} | {row['positives']} |")
    lines.append(f"| **Mean** | **{fmt(report['mean_auroc'])}** | **{report['chexnet_mean_auroc']:.4f}** | |")
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """report.json and report.md in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path
