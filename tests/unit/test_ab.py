from collections import Counter

import pytest

from chexstack.ab import LATEST, choose_variant, parse_weights


def test_parse_weights_forms() -> None:
    assert parse_weights("stable=90,canary=10") == {"stable": 90, "canary": 10}
    assert parse_weights(["stable=1", "canary=3"]) == {"stable": 1, "canary": 3}
    assert parse_weights("") == {}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("stable", "bad weight 'stable': expected NAME=INTEGER"),
        ("stable=x", "bad weight 'stable=x': expected NAME=INTEGER"),
        ("=3", "bad weight '=3': expected NAME=INTEGER"),
        ("stable=-1", "bad weight 'stable=-1': a weight is 0 or more"),
        ("stable=1,stable=2", "bad weight 'stable=2': stable is given twice"),
        ("stable=0", "bad weights stable=0: every weight is 0"),
        ("stable=0, canary=0", "bad weights stable=0, canary=0: every weight is 0"),
    ],
)
def test_parse_weights_rejects_bad_input_with_reason(bad: str, reason: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_weights(bad)
    assert str(exc.value).startswith(reason) and "\n" not in str(exc.value)


def test_parse_weights_allows_a_zero_beside_a_positive_weight() -> None:
    assert parse_weights("stable=100,canary=0") == {"stable": 100, "canary": 0}


def test_choose_variant_follows_weights_and_is_sticky() -> None:
    weights = {"stable": 90, "canary": 10}
    counts = Counter(choose_variant(weights, f"p-{i:016x}", "chexnet") for i in range(5000))
    assert set(counts) == {"stable", "canary"}
    assert 0.07 < counts["canary"] / 5000 < 0.13
    # The same patient always gets the same variant.
    assert {choose_variant(weights, "p-00000000000000aa", "chexnet") for _ in range(20)} == {
        choose_variant(weights, "p-00000000000000aa", "chexnet")
    }


def test_zero_weight_variant_never_chosen_and_empty_means_latest() -> None:
    assert {choose_variant({"stable": 0, "canary": 5}, str(i), "m") for i in range(200)} == {"canary"}
    assert choose_variant({}, "x", "m") == LATEST
