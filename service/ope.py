"""Off-policy evaluation: what a candidate model's policy would have earned on logged traffic.

Value = accepted margin per treated decision (minor units). Three estimators, as in Open Bandit
Pipeline, each with a 95% confidence interval clustered by customer (one customer's decisions are
not independent: their contact history links them):

- IPS: mean of w·r, w = π_candidate(logged action) / π_logging(logged action);
- SNIPS: Σ w·r / Σ w — a little biased, much steadier when a few weights are large;
- DR: mean of Σ_a π_candidate(a)·q(x, a) + w·(r − q(x, logged action)), with q = p̂(accept)·margin
  from a reward model cross-fitted by customer (each decision's q comes from a model that never
  saw that customer), so DR is unbiased if either q or the propensities are right.

IPS and SNIPS need the logging policy to have taken every action the candidate takes; the gate
reads `unsupported`, the share of the candidate's probability on actions the logging policy
never took. Pure over arrays; the caller reads the log and loads the models.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from service.features import RANKER_FEATURES
from service.lift import ratio
from service.logged import Logged, PolicyScores
from service.settings import PromotionSettings
from service.training import fit_one, model_params

Z95 = NormalDist().inv_cdf(0.975)
#: folds of the cross-fitted reward model
FOLDS = 2
#: the reward model is small: it only needs to rank and roughly calibrate p(accept)
REWARD_MODEL = {"iterations": 150, "depth": 4, "learning_rate": 0.1}


@dataclass(frozen=True)
class Interval:
    """An estimate (minor units per decision) with its 95% confidence interval."""

    value: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def covers(self, x: float) -> bool:
        return self.low <= x <= self.high


def cluster_ratio(num: np.ndarray, den: np.ndarray, clusters: np.ndarray) -> Interval:
    """Σ num / Σ den with a cluster-robust (by customer) 95% interval: service.lift.ratio, the
    one definition of that estimator, on per-customer totals."""
    if len(num) == 0:
        raise ValueError("no decisions to estimate from")
    _, inverse = np.unique(clusters, return_inverse=True)
    estimate = ratio(
        np.bincount(inverse, weights=num).tolist(), np.bincount(inverse, weights=den).tolist()
    )
    if estimate.se is None:  # one customer: no interval
        return Interval(estimate.value, -math.inf, math.inf)
    half = Z95 * estimate.se
    return Interval(estimate.value, estimate.value - half, estimate.value + half)


def cluster_mean(terms: np.ndarray, clusters: np.ndarray) -> Interval:
    """The mean of per-decision terms with a cluster-robust (by customer) 95% interval."""
    return cluster_ratio(terms, np.ones(len(terms)), clusters)


@dataclass(frozen=True)
class PolicyValue:
    """One policy's value on the logs, by each estimator."""

    ips: Interval
    snips: Interval
    dr: Interval
    #: the policy's mean probability on actions the logging policy never took
    unsupported: float
    #: Kish's effective sample size of the importance weights, and the largest weight
    effective_decisions: float
    max_weight: float


@dataclass(frozen=True)
class Comparison:
    """A candidate against the live policy on the same logged decisions."""

    decisions: int
    customers: int
    observed: Interval  # mean accepted margin actually logged (exploration included)
    live: PolicyValue
    candidate: PolicyValue
    #: candidate − live, paired per decision, clustered by customer
    difference_dr: Interval
    difference_ips: Interval
    outcomes_missing: int

    def relative_dr(self) -> Interval:
        """The DR difference as a share of the live policy's DR value."""
        base = self.live.dr.value
        if base <= 0:
            return Interval(math.nan, math.nan, math.nan)
        d = self.difference_dr
        return Interval(d.value / base, d.low / base, d.high / base)

    def document(self, scale: float = 1.0) -> dict[str, Any]:
        """JSON-ready, amounts divided by `scale` (minor units per major unit)."""

        def money(i: Interval) -> dict[str, float]:
            return {k: round(v / scale, 4) for k, v in asdict(i).items()}

        def policy(v: PolicyValue) -> dict[str, Any]:
            return {
                "ips": money(v.ips),
                "snips": money(v.snips),
                "dr": money(v.dr),
                "unsupported": round(v.unsupported, 6),
                "effective_decisions": round(v.effective_decisions, 1),
                "max_weight": round(v.max_weight, 3),
            }

        rel = self.relative_dr()
        return {
            "decisions": self.decisions,
            "customers": self.customers,
            "outcomes_missing": self.outcomes_missing,
            "observed": money(self.observed),
            "live": policy(self.live),
            "candidate": policy(self.candidate),
            "difference_dr": money(self.difference_dr),
            "difference_ips": money(self.difference_ips),
            "relative_dr": {k: round(v, 6) for k, v in asdict(rel).items()},
        }


def _terms(
    logged: Logged, target: PolicyScores, q: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Per decision: importance weight, IPS term, DR term; and the unsupported share."""
    shown = logged.shown
    rows = np.maximum(logged.chosen, 0)
    target_chosen = np.where(shown, target.p[rows], target.p_none)
    w = target_chosen / np.maximum(logged.logging_chosen, 1e-12)
    r = logged.reward
    direct = np.bincount(logged.row_decision, weights=target.p * q, minlength=len(logged))
    q_chosen = np.where(shown, q[rows], 0.0)  # NO_OFFER earns nothing, surely
    dr = direct + w * (r - q_chosen)
    never = np.bincount(
        logged.row_decision, weights=target.p * (logged.logging_p <= 0), minlength=len(logged)
    )
    never += np.where(logged.logging_none <= 0, target.p_none, 0.0)
    return w, w * r, dr, float(never.mean())


def policy_value(logged: Logged, target: PolicyScores, q: np.ndarray) -> PolicyValue:
    w, ips, dr, unsupported = _terms(logged, target, q)
    c = logged.customer
    return PolicyValue(
        cluster_mean(ips, c),
        cluster_ratio(ips, w, c),
        cluster_mean(dr, c),
        unsupported,
        float(w.sum() ** 2 / (w**2).sum()),
        float(w.max()),
    )


def compare(
    logged: Logged, live: PolicyScores, candidate: PolicyScores, q: np.ndarray
) -> Comparison:
    """The candidate's and the live policy's values, and their paired difference."""
    if len(logged) == 0:
        raise ValueError("no logged treated decisions to evaluate on")
    _, ips_live, dr_live, _ = _terms(logged, live, q)
    _, ips_cand, dr_cand, _ = _terms(logged, candidate, q)
    c = logged.customer
    return Comparison(
        len(logged),
        len(set(c.tolist())),
        cluster_mean(logged.reward, c),
        policy_value(logged, live, q),
        policy_value(logged, candidate, q),
        cluster_mean(dr_cand - dr_live, c),
        cluster_mean(ips_cand - ips_live, c),
        int((logged.shown & (logged.accepted < 0)).sum()),
    )


# -- the reward model -------------------------------------------------------------------------


def fold_of(customer: str, folds: int = FOLDS) -> int:
    """A customer's fold: stable, from a hash of the id (not Python's salted hash())."""
    return hashlib.sha256(customer.encode()).digest()[0] % folds


def reward_model(logged: Logged, *, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Cross-fitted q(x, a) = p̂(accept | x, a) · margin(a) for every candidate row.

    Customers are split into `folds`; each fold's rows are scored by a model fitted on the
    shown offers (with a known outcome) of the other folds. A fold whose training part has
    only one label falls back to that part's acceptance rate.
    """
    fold = np.array([fold_of(str(c), folds) for c in logged.customer])
    known = logged.shown & (logged.accepted >= 0)
    params = model_params(**REWARD_MODEL, seed=seed)  # type: ignore[arg-type]
    p_hat = np.zeros(len(logged.row_decision))
    row_fold = fold[logged.row_decision] if len(logged.row_decision) else np.empty(0, int)
    for k in range(folds):
        train = known & (fold != k)
        rows = logged.chosen[train]
        y = logged.accepted[train].astype(int)
        target = row_fold == k
        if not target.any():
            continue
        if len(set(y.tolist())) < 2:
            p_hat[target] = float(y.mean()) if len(y) else 0.0
            continue
        model = fit_one(logged.X_ranker[rows], y, RANKER_FEATURES, params)
        from catboost import Pool

        pool = Pool(logged.X_ranker[target], cat_features=RANKER_FEATURES.cat_indices)
        p_hat[target] = model.predict_proba(pool, thread_count=1)[:, 1]
    return p_hat * logged.margin


# -- the gate ---------------------------------------------------------------------------------


def gate_findings(comparison: Comparison, gate: PromotionSettings) -> list[str]:
    """Why the evidence does not support the candidate; empty when it does."""
    found = []
    if comparison.decisions < gate.min_decisions:
        found.append(
            f"only {comparison.decisions} logged treated decisions (the gate needs "
            f"{gate.min_decisions})"
        )
    share = comparison.candidate.unsupported
    if share > gate.max_unsupported:
        found.append(
            f"{share:.1%} of the candidate's choices were never taken by the logging policy "
            f"(at most {gate.max_unsupported:.0%}): more exploration is needed to judge it"
        )
    rel = comparison.relative_dr()
    if math.isnan(rel.low):
        found.append("the live policy's estimated value is not positive: nothing to compare to")
    elif rel.low < -gate.max_regression:
        found.append(
            f"the candidate may be worse than live: DR difference {rel.value:+.1%} "
            f"(95% CI {rel.low:+.1%} to {rel.high:+.1%}), allowed down to "
            f"{-gate.max_regression:+.0%}"
        )
    return found
