from collections import Counter

import pytest

from chexstack.ab import LATEST, choose_variant, parse_weights


def test_parse_weights_forms() -> None:
    assert parse_weights("stable=90,canary=10") == {"stable": 90, "canary": 10}
    assert parse_weights(["stable=1", "canary=3"]) == {"stable": 1, "canary": 3}
    assert parse_weights("") == {}


@pytest.mark.parametrize("bad", ["stable", "stable=x", "=3", "stable=-1", "stable=0"])
def test_parse_weights_rejects_bad_input_with_reason(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_weights(bad)


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
