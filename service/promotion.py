"""Promotion: judge a candidate model on logged traffic, then make it active or roll back.

`evaluate` is the gate's evidence: the candidate's and the live model's policies valued on the
same logged treated decisions (service.ope), and the candidate's model latency measured on those
decisions' candidates. `promote` refuses what the gate does not support unless told to, and
records why in the registry (which the running service copies into its deployment record);
the service picks the new pair up through its reload poll, without a restart.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service import ope
from service.logged import AuditWindow, Logged, from_audit, from_history, policy_of
from service.ranker import Models
from service.registry import Active, Registry
from service.settings import PromotionSettings


@dataclass(frozen=True)
class Latency:
    """Model work for one decision, in ms, over `decisions` logged decisions."""

    decisions: int
    score_p50: float
    score_p99: float
    explain_p50: float
    explain_p99: float


def model_work_ms(
    models: Models, logged: Logged, *, sample: int = 300, repeats: int = 3
) -> tuple[list[float], list[float], list[int]]:
    """(scoring ms, SHAP ms, candidates) per logged decision with candidates, on up to `sample`
    of them (a seeded choice): both CatBoost batches as decide() makes them (the ranker on every
    offer × variant, the organic model on one row per offer) and exact SHAP of one candidate.

    Each decision is timed `repeats` times and its fastest run kept: on a shared machine a
    single run measures the neighbours as much as the model (one p99 of single runs came out
    at 289 ms while a benchmark ran beside it), and a model's cost does not vary between runs
    of the same input. scripts/bench.py measures its floors with this too.
    """
    with_rows = np.unique(logged.row_decision)
    if len(with_rows) == 0:
        raise ValueError("no logged decision had candidates to score")
    rng = np.random.default_rng(0)
    picked = np.sort(rng.choice(with_rows, min(sample, len(with_rows)), replace=False))
    score, shap, candidates = [], [], []
    for d in picked:
        rows = np.flatnonzero(logged.row_decision == d)
        _, first = np.unique(logged.offer_id[rows], return_index=True)
        ranker, organic = logged.X_ranker[rows], logged.X_organic[rows[np.sort(first)]]
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            models.p_accept(ranker)
            models.p_anyway(organic)
            t1 = time.perf_counter()
            models.explain(ranker[0])
            runs.append((t1 - t0, time.perf_counter() - t1))
        score.append(min(r[0] for r in runs) * 1000)
        shap.append(min(r[1] for r in runs) * 1000)
        candidates.append(len(rows))
    return score, shap, candidates


def measure_latency(models: Models, logged: Logged, *, sample: int = 300) -> Latency:
    """The gate's summary of model_work_ms: p50 and p99 of scoring and of exact SHAP."""
    score, explain, _ = model_work_ms(models, logged, sample=sample)
    return Latency(
        len(score),
        statistics.median(score),
        _p99(score),
        statistics.median(explain),
        _p99(explain),
    )


def latency_findings(candidate: Latency, live: Latency, gate: PromotionSettings) -> list[str]:
    """Over the budget and slower than the live model measured in the same run: a loaded
    machine slows both alike, and then the candidate is not what breaks the budget."""
    found = []
    for what, cand, now, budget in (
        ("scoring", candidate.score_p99, live.score_p99, gate.score_p99_ms),
        ("exact SHAP", candidate.explain_p99, live.explain_p99, gate.explain_p99_ms),
    ):
        if cand > budget and cand > SLOWER * now:
            found.append(
                f"{what} takes {cand:.2f} ms at p99: over the {budget:g} ms budget and "
                f"{cand / now:.1f}× the live model's {now:.2f} ms measured beside it"
            )
    return found


#: how much slower than the live model a candidate over budget may be before it is refused
SLOWER = 1.25


def _p99(xs: list[float]) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@dataclass(frozen=True)
class Evaluation:
    live: str
    candidate: str
    catalog: str
    window: AuditWindow
    history_decisions: int
    comparison: ope.Comparison
    latency: Latency
    live_latency: Latency
    findings: tuple[str, ...]

    @property
    def supported(self) -> bool:
        return not self.findings

    def document(self, scale: float) -> dict[str, Any]:
        return {
            "live_model": self.live,
            "candidate_model": self.candidate,
            "catalog": self.catalog,
            "window": {**self.window.document(), "history_decisions": self.history_decisions},
            "value_per_decision": self.comparison.document(scale),
            "latency_ms": {
                "candidate": _latency(self.latency),
                "live": _latency(self.live_latency),
            },
            "supported": self.supported,
            "findings": list(self.findings),
        }


def _latency(x: Latency) -> dict[str, float]:
    return {
        "decisions": x.decisions,
        "score_p50": round(x.score_p50, 3),
        "score_p99": round(x.score_p99, 3),
        "explain_p50": round(x.explain_p50, 3),
        "explain_p99": round(x.explain_p99, 3),
    }


def evaluate(
    registry: Registry,
    audit: Path,
    candidate: str,
    gate: PromotionSettings,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    history: Path | None = None,
    seed: int = 0,
) -> Evaluation:
    """The gate's evidence for `candidate` against the active model, on the audit log at
    `audit` (a DuckDB file or an export) made with the active catalog, and optionally the
    bootstrap history (the old process's logs) too."""
    active = registry.active()
    catalog = registry.load_catalog(active.catalog)
    live_models = registry.load_models(active.model)
    cand_models = registry.load_models(candidate)
    logged, window = from_audit(audit, catalog, since=since, until=until)
    history_n = 0
    if history is not None:
        from service.simulator import load_history

        past = from_history(load_history(history), catalog)
        history_n = len(past)
        logged = Logged.concat([past, logged])
    if len(logged) == 0:
        raise ValueError("no logged treated decisions made with the active catalog in this window")
    q = ope.reward_model(logged, seed=seed)
    comparison = ope.compare(
        logged, policy_of(live_models, logged), policy_of(cand_models, logged), q
    )
    live_latency = measure_latency(live_models, logged)
    latency = measure_latency(cand_models, logged)
    findings = ope.gate_findings(comparison, gate) + latency_findings(latency, live_latency, gate)
    return Evaluation(
        active.model,
        candidate,
        catalog.version,
        window,
        history_n,
        comparison,
        latency,
        live_latency,
        tuple(findings),
    )


def promote(
    registry: Registry,
    evaluation: Evaluation,
    *,
    scale: float,
    force: str | None = None,
    by: str = "",
) -> Active:
    """Activate the evaluated candidate; refuses (ValueError) unless the gate supports it or
    `force` gives the reason to override it. The registry keeps the evidence and the override."""
    if registry.active().model != evaluation.live:
        raise ValueError(
            f"the active model changed since the evaluation (now {registry.active().model}): "
            "evaluate again"
        )
    if not evaluation.supported and not force:
        raise ValueError(
            "the gate does not support this candidate: " + "; ".join(evaluation.findings)
        )
    doc = evaluation.document(scale)
    note = {
        "action": "promote",
        "at": datetime.now(UTC).isoformat(),
        "by": by,
        "from_model": evaluation.live,
        "supported": evaluation.supported,
        "findings": list(evaluation.findings),
        # an override is recorded only when it was needed
        "override": None if evaluation.supported else force,
        "dr_difference": doc["value_per_decision"]["difference_dr"],
        "decisions": doc["value_per_decision"]["decisions"],
    }
    return registry.activate(model=evaluation.candidate, note=note)


def rollback(registry: Registry, *, reason: str = "", by: str = "") -> Active:
    """Return to the pair that was active before the current one."""
    current = registry.active()
    before = registry.previous()
    note = {
        "action": "rollback",
        "at": datetime.now(UTC).isoformat(),
        "by": by,
        "from_model": current.model,
        "from_catalog": current.catalog,
        "reason": reason or None,
    }
    return registry.activate(model=before.model, catalog=before.catalog, note=note)
