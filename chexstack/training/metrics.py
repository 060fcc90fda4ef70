"""Exact AUROC with numpy: the Mann-Whitney U statistic over tie-averaged ranks.

Equal scores count half (the area under the ROC curve's straight segment through tied points), so the
result equals sklearn.metrics.roc_auc_score without needing scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from chexstack.labels import LABELS


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of `scores`; tied values all get the mean of the ranks they span."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    # Start index of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]  # exclusive
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty_like(values)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auroc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """AUROC of one binary label; NaN when the labels are all positive or all negative."""
    truth = np.asarray(y_true).ravel()
    if truth.shape != np.asarray(scores).ravel().shape:
        raise ValueError(f"labels {truth.shape} and scores {np.asarray(scores).shape} differ in length")
    if not np.isin(truth, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    positive = truth == 1
    n_pos = int(positive.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    ranks = average_ranks(np.asarray(scores))
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def per_class_auroc(
    y_true: np.ndarray, scores: np.ndarray, labels: Sequence[str] = LABELS
) -> dict[str, float]:
    """{label: AUROC} for [N, K] labels and scores; NaN for a class without both positives and negatives."""
    truth, pred = np.asarray(y_true), np.asarray(scores)
    if truth.ndim != 2 or truth.shape != pred.shape or truth.shape[1] != len(labels):
        raise ValueError(
            f"expected labels and scores of shape [N,{len(labels)}], got {truth.shape} and {pred.shape}"
        )
    return {label: auroc(truth[:, k], pred[:, k]) for k, label in enumerate(labels)}


def mean_auroc(per_class: dict[str, float]) -> float:
    """Mean over the classes that have a defined AUROC; NaN when none has."""
    defined = [v for v in per_class.values() if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan
