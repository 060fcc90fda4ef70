"""Exact AUROC against hand-computed cases (ties, perfect, inverted, undefined classes)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chexstack.labels import LABELS
from chexstack.training.metrics import auroc, average_ranks, mean_auroc, per_class_auroc


def test_average_ranks_share_ties() -> None:
    np.testing.assert_array_equal(average_ranks(np.array([0.3, 0.1, 0.3, 0.2])), [3.5, 1.0, 3.5, 2.0])
    np.testing.assert_array_equal(average_ranks(np.array([5.0, 5.0, 5.0])), [2.0, 2.0, 2.0])


def test_perfect_and_inverted_ranking() -> None:
    y = np.array([0, 0, 1, 1])
    assert auroc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auroc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0


def test_hand_computed_case_with_ties() -> None:
    # Positives 0.8, 0.4; negatives 0.4, 0.2, 0.1. Pairs (pos > neg): 0.8 beats all three = 3,
    # 0.4 ties 0.4 (1/2) and beats 0.2, 0.1 = 2.5; total 5.5 of 2*3 = 6 pairs.
    y = np.array([1, 1, 0, 0, 0])
    s = np.array([0.8, 0.4, 0.4, 0.2, 0.1])
    assert auroc(y, s) == pytest.approx(5.5 / 6)


def test_all_scores_equal_is_one_half() -> None:
    assert auroc(np.array([1, 0, 1, 0, 0]), np.full(5, 0.3)) == 0.5


def test_matches_pairwise_definition_on_random_data() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200), 2)  # rounding makes many ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auroc(y, s) == pytest.approx(pairs / (len(pos) * len(neg)), abs=1e-12)


def test_undefined_class_is_nan_and_left_out_of_the_mean() -> None:
    y = np.zeros((4, len(LABELS)), np.uint8)
    y[:, 0] = [0, 0, 1, 1]  # Atelectasis: defined, perfect
    y[:, 1] = [0, 1, 0, 1]  # Cardiomegaly: defined, inverted
    y[:, 2] = 1  # Effusion: all positive -> undefined
    s = np.zeros((4, len(LABELS)), np.float32)
    s[:, 0] = [0.1, 0.2, 0.7, 0.9]
    s[:, 1] = [0.9, 0.1, 0.8, 0.2]
    per_class = per_class_auroc(y, s)
    assert per_class["Atelectasis"] == 1.0 and per_class["Cardiomegaly"] == 0.0
    assert math.isnan(per_class["Effusion"]) and math.isnan(per_class["Hernia"])
    assert mean_auroc(per_class) == 0.5
    assert math.isnan(mean_auroc({"a": math.nan}))


@pytest.mark.parametrize(
    ("y", "s", "match"),
    [
        (np.array([0, 1, 2]), np.array([0.1, 0.2, 0.3]), "0 or 1"),
        (np.array([0, 1]), np.array([0.1, 0.2, 0.3]), "differ in length"),
        (np.array([0, 1]), np.array([0.1, np.nan]), "NaN"),
    ],
)
def test_bad_input_is_a_clear_error(y: np.ndarray, s: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        auroc(y, s)


def test_per_class_shape_is_checked() -> None:
    with pytest.raises(ValueError, match=r"\[N,14\]"):
        per_class_auroc(np.zeros((3, 13)), np.zeros((3, 13)))
