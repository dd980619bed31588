"""Off-policy evaluation against the simulator's truth, and the promotion gate it feeds.

The logged traffic is the session world's bootstrap contexts (9,000 resolved tickets) logged
afresh by the live model's policy — its own ε-exploration, acceptance drawn from the truth —
once per seed, so each estimate can be checked against the candidate's true value on the same
contexts: Σ_a π(a|x) · p_accept(x, a) · margin(a).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from service import ope
from service.catalog import Catalog
from service.logged import Logged, PolicyScores, from_audit, from_history, policy_of, relog
from service.ranker import Models
from service.registry import Registry
from service.settings import PromotionSettings, Settings
from service.simulator import World, load_history, true_probabilities, true_value
from service.training import TrainingRows, fit, training_rows_from_history

SEEDS = range(20)


@dataclass(frozen=True)
class Setup:
    base: Logged
    accept: np.ndarray
    live: PolicyScores
    good: PolicyScores  # a bigger model of the same data
    bad: PolicyScores  # a ranker fitted on labels a fifth of which were flipped
    true_live: float
    true_good: float
    true_bad: float


def _models(name: str, ranker_rows: TrainingRows, organic_rows: TrainingRows, **kw: int) -> Models:
    t = fit(ranker_rows, organic_rows, **kw)
    return Models(name, t.ranker, t.organic, t.card)


@pytest.fixture(scope="module")
def setup(trained_dir: Path, catalog: Catalog, models: Models, world: World) -> Setup:
    history = load_history(trained_dir / "profiles")
    base = from_history(history, catalog)
    accept, _ = true_probabilities(world.truth, base)
    rr, orr = training_rows_from_history(history, catalog)
    good = _models("good", rr, orr, iterations=200, depth=5, seed=1)
    rng = np.random.default_rng(0)
    flipped = rr.y.copy()
    flip = rng.random(len(flipped)) < 0.2
    flipped[flip] = 1 - flipped[flip]
    noisy = TrainingRows(
        rr.featureset,
        rr.X,
        flipped,
        rr.decided_at,
        rr.decision_id,
        rr.offer_id,
        rr.catalog_version,
        rr.propensity,
    )
    bad = _models("bad", noisy, orr, iterations=80, seed=0)
    live_p, good_p, bad_p = (policy_of(m, base) for m in (models, good, bad))
    return Setup(
        base,
        accept,
        live_p,
        good_p,
        bad_p,
        true_value(live_p, base, accept),
        true_value(good_p, base, accept),
        true_value(bad_p, base, accept),
    )


def test_cluster_intervals_are_the_classic_ones_for_singletons_and_widen_with_clusters() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(10, 3, 400)
    singletons = ope.cluster_mean(x, np.arange(400))
    se = x.std(ddof=1) / np.sqrt(400)
    assert singletons.value == pytest.approx(x.mean())
    assert singletons.half_width == pytest.approx(ope.Z95 * se, rel=1e-9)
    # The same values, but each customer's four decisions share a common part.
    shared = np.repeat(rng.normal(0, 3, 100), 4) + rng.normal(10, 1, 400)
    clustered = ope.cluster_mean(shared, np.repeat(np.arange(100), 4))
    naive = ope.cluster_mean(shared, np.arange(400))
    assert clustered.half_width > 1.5 * naive.half_width
    num, den = rng.random(50), rng.random(50) + 0.5
    ratio = ope.cluster_ratio(num, den, np.arange(50))
    assert ratio.value == pytest.approx(num.sum() / den.sum())
    assert ratio.low < ratio.value < ratio.high


def test_the_policy_of_a_model_is_the_one_the_service_logged(traffic_log: Settings) -> None:
    """On a real audit log, the live model's policy recomputed offline gives every logged
    probability exactly: the OPE's π_logging and the service's arbitration are one thing."""
    registry = Registry(traffic_log.registry_dir)
    active = registry.active()
    catalog = registry.load_catalog(active.catalog)
    logged, window = from_audit(traffic_log.audit_path, catalog)
    assert window.read == len(logged) > 1500
    assert window.holdout > 0  # skipped, never evaluated as if shown
    again = policy_of(registry.load_models(active.model), logged)
    assert np.allclose(again.p, logged.logging_p, rtol=0, atol=1e-12)
    assert np.allclose(again.p_none, logged.logging_none, rtol=0, atol=1e-12)
    shown = logged.shown
    assert shown.sum() > 500 and (logged.accepted[shown] >= 0).all()


def test_intervals_cover_the_true_value_over_twenty_seeds(setup: Setup) -> None:
    covered = {"ips": 0, "snips": 0, "dr": 0}
    half: dict[str, list[float]] = {k: [] for k in covered}
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        logged = relog(setup.base, setup.live, setup.accept, rng)
        q = ope.reward_model(logged, seed=seed)
        value = ope.policy_value(logged, setup.good, q)
        for name in covered:
            interval: ope.Interval = getattr(value, name)
            covered[name] += interval.covers(setup.true_good)
            half[name].append(interval.half_width / setup.true_good)
    widths = {k: round(statistics.median(v), 3) for k, v in half.items()}
    print(f"coverage of 20 seeds {covered}; median half-width / true value {widths}")
    # The gate reads DR: its 95% intervals must cover the truth in at least 90% of seeds, at
    # the half-width stated in docs/retraining.md: ~30% of the value on 9,000 decisions at the
    # example catalog's 5% exploration (measured: 19 of 20 seeds covered, median 0.304).
    assert covered["dr"] >= 18
    assert widths["dr"] < 0.35
    # IPS and SNIPS are reported beside it. Rare large rewards (an enterprise upgrade is worth
    # 18,000 a year) logged with ~1% propensity make their intervals too narrow: measured 11
    # of 20 covered. The docs say so; this guards against it getting worse.
    assert covered["ips"] >= 8 and covered["snips"] >= 8


def test_the_gate_catches_a_candidate_ten_percent_worse_or_more(setup: Setup) -> None:
    assert setup.true_bad <= 0.9 * setup.true_live  # the premise: truly ≥ 10% worse
    gate = PromotionSettings()
    refused = 0
    for seed in SEEDS:
        rng = np.random.default_rng(100 + seed)
        logged = relog(setup.base, setup.live, setup.accept, rng)
        q = ope.reward_model(logged, seed=seed)
        found = ope.gate_findings(ope.compare(logged, setup.live, setup.bad, q), gate)
        refused += any("may be worse than live" in f for f in found)
    assert refused == len(SEEDS)


def test_the_live_model_judged_against_itself_differs_by_nothing(setup: Setup) -> None:
    logged = relog(setup.base, setup.live, setup.accept, np.random.default_rng(7))
    q = ope.reward_model(logged)
    c = ope.compare(logged, setup.live, setup.live, q)
    assert c.difference_dr.value == 0 and c.difference_dr.half_width == 0
    # On-policy, every importance weight is 1: IPS is the observed mean exactly.
    assert c.live.ips.value == pytest.approx(c.observed.value, rel=1e-12)
    assert c.live.unsupported == 0
    assert ope.gate_findings(c, PromotionSettings(min_decisions=1)) == []
    assert ope.gate_findings(c, PromotionSettings(min_decisions=10**6))[0].startswith("only")


def test_unsupported_choices_are_measured(setup: Setup) -> None:
    """Without exploration the logging policy takes one action per decision: a candidate that
    chooses differently has no support there, and the gate says so."""
    greedy_only = policy_of_eps0(setup)
    logged = relog(setup.base, greedy_only, setup.accept, np.random.default_rng(3))
    value = ope.policy_value(logged, setup.good, ope.reward_model(logged))
    assert value.unsupported > 0.10
    c = ope.compare(logged, greedy_only, setup.good, ope.reward_model(logged))
    assert any("never taken" in f for f in ope.gate_findings(c, PromotionSettings()))


def policy_of_eps0(setup: Setup) -> PolicyScores:
    """The live policy with exploration switched off (the candidate rows' greedy choice)."""
    p = np.zeros_like(setup.live.p)
    p_none = np.ones_like(setup.live.p_none)
    order = np.argsort(setup.base.row_decision, kind="stable")
    best: dict[int, int] = {}
    for i in order:
        d = int(setup.base.row_decision[i])
        if setup.live.p[i] > 0.5:
            best[d] = int(i)
    for d, i in best.items():
        p[i], p_none[d] = 1.0, 0.0
    return PolicyScores(setup.live.p_accept, setup.live.p_anyway, setup.live.value, p, p_none)
