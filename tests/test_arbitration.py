"""Arbitration: the propensity formula, a stable holdout, and deterministic exploration."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from service.arbitration import NO_OFFER, Scored, arbitrate, holdout_bucket, incremental_value

values = st.lists(st.floats(-500, 5000, allow_nan=False), min_size=0, max_size=8)


def scored(vals: list[float]) -> list[Scored]:
    return [Scored(f"o{i}", "full", 0.2, 0.05, v) for i, v in enumerate(vals)]


@given(values, st.floats(0, 0.5), st.floats(0, 100), st.integers(0, 2**60))
def test_probabilities_follow_the_documented_formula(vals, eps, floor, seed) -> None:
    a = arbitrate(scored(vals), floor=floor, epsilon=eps, seed=seed)
    probs = dict(a.probabilities)
    assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-12)
    worth = [i for i, v in enumerate(vals) if v >= floor]
    if not worth:
        assert a.chosen == NO_OFFER and a.propensity == 1.0 and not a.explored
        return
    n = len(worth) + 1
    for i, v in enumerate(vals):
        if v < floor:
            assert probs[f"o{i}/full"] == 0.0  # below the floor: never taken, not even exploring
    for action in [f"o{i}/full" for i in worth] + [NO_OFFER]:
        expected = (1 - eps) * (action == a.greedy) + eps / n
        assert math.isclose(probs[action], expected, abs_tol=1e-12)
    best = max(worth, key=lambda i: vals[i])
    assert a.greedy == f"o{best}/full"
    assert a.chosen == NO_OFFER or vals[int(a.chosen[1:].split("/")[0])] >= floor
    assert a.propensity == probs[a.chosen]
    assert a.explored == (a.chosen != a.greedy)


def test_same_seed_same_pick_and_exploration_rate_is_as_configured() -> None:
    s = scored([100.0, 50.0, 10.0])
    picks = [arbitrate(s, floor=0, epsilon=0.2, seed=seed) for seed in range(4000)]
    assert picks[17] == arbitrate(s, floor=0, epsilon=0.2, seed=17)
    off_greedy = sum(p.explored for p in picks) / len(picks)
    assert abs(off_greedy - 0.2 * 3 / 4) < 0.03  # ε · (|A| − 1)/|A|


def test_holdout_bucket_is_stable_keyed_and_raising_the_share_only_adds_customers() -> None:
    key = b"k" * 32
    ids = [f"acct-{i:06d}" for i in range(5000)]
    buckets = {c: holdout_bucket(key, c) for c in ids}
    assert buckets == {c: holdout_bucket(key, c) for c in ids}
    assert buckets != {c: holdout_bucket(b"x" * 32, c) for c in ids}
    small = {c for c, b in buckets.items() if b < 0.05}
    large = {c for c, b in buckets.items() if b < 0.10}
    assert small < large
    assert abs(len(large) / len(ids) - 0.10) < 0.015


def test_incremental_value_pays_nothing_for_a_purchase_that_would_happen_anyway() -> None:
    assert incremental_value(0.3, 1000, 0.3, 1000, 1.0) == 0.0
    full = incremental_value(0.30, 1000, 0.25, 1000, 1.0)
    discounted = incremental_value(0.34, 800, 0.25, 1000, 1.0)
    assert full > discounted  # a small lift does not pay for the discount
    assert incremental_value(0.30, 1000, 0.0, 1000, 2.0) == 2 * 300.0
