"""Logged decisions as learning reads them: contexts, the logging policy's probabilities, rewards.

One shape (`Logged`) for every source of logged traffic — the audit log, the simulator's bootstrap
history (the old process), and simulated re-logging in tests and benchmarks — so off-policy
evaluation (service.ope) and retraining (service.training) never care where rows came from.

Only treated decisions are here: a holdout decision's would-be action was never shown, so it says
nothing about what an offer earns (the holdout is the lift report's control group). Every treated
decision counts, including those where nothing could be offered: each policy evaluated on the
same catalog takes NO_OFFER there with probability 1, and "value per decision" keeps them in the
denominator. Built only through service.features, like serving.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.arbitration import NO_OFFER, Arbitration, Scored, arbitrate, incremental_value
from service.catalog import Catalog
from service.decide import logged_actions
from service.features import ORGANIC_FEATURES, RANKER_FEATURES, build_matrix
from service.ranker import Models


@dataclass(frozen=True)
class Context:
    """What decide() saw about one decision (customer_view, ticket, contact summary)."""

    customer: Mapping[str, Any]
    ticket: Mapping[str, Any]
    contact: Mapping[str, Any]


@dataclass(frozen=True, eq=False)
class Logged:
    """Logged treated decisions; candidate rows are the eligible (offer, variant) pairs.

    Per decision (n): id, time, customer (the cluster for confidence intervals), the logging
    policy's probability of NO_OFFER, the logged action (`chosen`: a candidate row, or -1 for no
    offer), and the outcome (`accepted`: 1, 0, or -1 when the offer has no outcome yet or was
    never presented). Per candidate row (m): its decision, offer and variant, the logging
    probability, margin and full-price margin (minor units), lever, and the two model inputs.
    """

    catalog: Catalog
    decision_id: np.ndarray
    at: np.ndarray  # datetime64[us], UTC
    customer: np.ndarray
    contexts: tuple[Context, ...]
    logging_none: np.ndarray
    chosen: np.ndarray
    accepted: np.ndarray
    row_decision: np.ndarray
    offer_id: np.ndarray
    variant_id: np.ndarray
    logging_p: np.ndarray
    margin: np.ndarray
    full_margin: np.ndarray
    lever: np.ndarray
    X_ranker: np.ndarray
    X_organic: np.ndarray

    def __post_init__(self) -> None:
        n, m = len(self.decision_id), len(self.row_decision)
        for name in ("at", "customer", "logging_none", "chosen", "accepted"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have {n} values")
        if len(self.contexts) != n:
            raise ValueError(f"contexts must have {n} values")
        for name in ("offer_id", "variant_id", "logging_p", "margin", "full_margin", "lever"):
            if len(getattr(self, name)) != m:
                raise ValueError(f"{name} must have {m} values")
        if self.X_ranker.shape != (m, len(RANKER_FEATURES.names)):
            raise ValueError("X_ranker must have one RANKER_FEATURES row per candidate")
        if self.X_organic.shape != (m, len(ORGANIC_FEATURES.names)):
            raise ValueError("X_organic must have one ORGANIC_FEATURES row per candidate")
        if m and (self.row_decision.min() < 0 or self.row_decision.max() >= n):
            raise ValueError("row_decision must index decisions")
        if ((self.chosen < -1) | (self.chosen >= m)).any():
            raise ValueError("chosen must be a candidate row or -1")
        shown = self.chosen >= 0
        if (self.row_decision[self.chosen[shown]] != np.flatnonzero(shown)).any():
            raise ValueError("each chosen row must belong to its own decision")

    def __len__(self) -> int:
        return len(self.decision_id)

    @property
    def shown(self) -> np.ndarray:
        return self.chosen >= 0

    @property
    def reward(self) -> np.ndarray:
        """Accepted margin of each decision (minor units): 0 unless an offer was accepted."""
        r = np.zeros(len(self))
        won = self.accepted == 1
        r[won] = self.margin[self.chosen[won]]
        return r

    @property
    def logging_chosen(self) -> np.ndarray:
        """The logging policy's probability of the action it took, per decision."""
        return np.where(self.shown, self.logging_p[np.maximum(self.chosen, 0)], self.logging_none)

    @classmethod
    def concat(cls, parts: Sequence[Logged]) -> Logged:
        """The decisions of every part, in order (same catalog)."""
        first = parts[0]
        if any(p.catalog.version != first.catalog.version for p in parts):
            raise ValueError("logged decisions of different catalogs cannot be combined")
        offsets = np.cumsum([0, *(len(p) for p in parts)])
        row_offsets = np.cumsum([0, *(len(p.row_decision) for p in parts)])

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])

        return cls(
            first.catalog,
            cat("decision_id"),
            cat("at"),
            cat("customer"),
            tuple(c for p in parts for c in p.contexts),
            cat("logging_none"),
            np.concatenate(
                [
                    np.where(p.chosen >= 0, p.chosen + row_offsets[k], -1)
                    for k, p in enumerate(parts)
                ]
            ),
            cat("accepted"),
            np.concatenate([p.row_decision + offsets[k] for k, p in enumerate(parts)]),
            cat("offer_id"),
            cat("variant_id"),
            cat("logging_p"),
            cat("margin"),
            cat("full_margin"),
            cat("lever"),
            cat("X_ranker"),
            cat("X_organic"),
        )

    def select(self, mask: np.ndarray) -> Logged:
        """The decisions where `mask` is true, with their candidate rows."""
        keep = np.flatnonzero(mask)
        rows = np.flatnonzero(np.isin(self.row_decision, keep))
        new_index = np.full(len(self), -1)
        new_index[keep] = np.arange(len(keep))
        new_row = np.full(len(self.row_decision) + 1, -1)
        new_row[rows] = np.arange(len(rows))
        chosen = self.chosen[keep]
        return Logged(
            self.catalog,
            self.decision_id[keep],
            self.at[keep],
            self.customer[keep],
            tuple(self.contexts[i] for i in keep),
            self.logging_none[keep],
            np.where(chosen >= 0, new_row[chosen], -1),
            self.accepted[keep],
            new_index[self.row_decision[rows]],
            self.offer_id[rows],
            self.variant_id[rows],
            self.logging_p[rows],
            self.margin[rows],
            self.full_margin[rows],
            self.lever[rows],
            self.X_ranker[rows],
            self.X_organic[rows],
        )


@dataclass
class _Builder:
    """Accumulates decisions, then freezes them into one Logged."""

    catalog: Catalog

    def __post_init__(self) -> None:
        self.d: dict[str, list[Any]] = {
            k: [] for k in ("id", "at", "customer", "ctx", "none", "chosen", "accepted")
        }
        self.r: dict[str, list[Any]] = {
            k: [] for k in ("dec", "offer", "variant", "p", "margin", "full", "lever")
        }
        self.x_ranker: list[np.ndarray] = []
        self.x_organic: list[np.ndarray] = []
        self._full = {o.id: self.catalog.terms(o, o.full_price) for o in self.catalog.offers}

    def add(
        self,
        decision_id: str,
        at: datetime,
        customer_id: str,
        context: Context,
        candidates: Sequence[tuple[str, str, float]],
        p_none: float,
        chosen: tuple[str, str] | None,
        accepted: int,
    ) -> None:
        """One decision: its candidates as (offer id, variant id, logging probability)."""
        index = len(self.d["id"])
        first_row = len(self.r["dec"])
        picked = -1
        terms = []
        for k, (offer_id, variant_id, p) in enumerate(candidates):
            offer = self.catalog.offer(offer_id)
            if offer is None:
                raise ValueError(f"offer {offer_id!r} is not in catalog {self.catalog.version}")
            variant = next((v for v in offer.variants if v.id == variant_id), None)
            if variant is None:
                raise ValueError(f"variant {offer_id}/{variant_id} is not in the catalog")
            if chosen == (offer_id, variant_id):
                picked = first_row + k
            terms.append((offer, variant))
            for key, value in (
                ("dec", index),
                ("offer", offer_id),
                ("variant", variant_id),
                ("p", p),
                ("margin", variant.margin_minor),
                ("full", offer.full_price.margin_minor),
                ("lever", offer.lever),
            ):
                self.r[key].append(value)
        if chosen is not None and picked < 0:
            raise ValueError(f"decision {decision_id}: the logged action is not a candidate")
        if terms:
            c = context
            self.x_ranker.append(
                build_matrix(
                    RANKER_FEATURES,
                    c.customer,
                    c.ticket,
                    c.contact,
                    [self.catalog.terms(o, v) for o, v in terms],
                )
            )
            self.x_organic.append(
                build_matrix(
                    ORGANIC_FEATURES,
                    c.customer,
                    c.ticket,
                    c.contact,
                    [self._full[o.id] for o, _ in terms],
                )
            )
        d = self.d
        d["id"].append(decision_id)
        d["at"].append(at.astimezone(UTC).replace(tzinfo=None))
        d["customer"].append(customer_id)
        d["ctx"].append(context)
        d["none"].append(p_none)
        d["chosen"].append(picked)
        d["accepted"].append(accepted)

    def build(self) -> Logged:
        def matrix(parts: list[np.ndarray], width: int) -> np.ndarray:
            return np.concatenate(parts) if parts else np.empty((0, width), dtype=object)

        d, r = self.d, self.r
        return Logged(
            self.catalog,
            np.array(d["id"], dtype=object),
            np.array(d["at"], dtype="datetime64[us]"),
            np.array(d["customer"], dtype=object),
            tuple(d["ctx"]),
            np.array(d["none"], dtype=float),
            np.array(d["chosen"], dtype=np.int64),
            np.array(d["accepted"], dtype=np.int8),
            np.array(r["dec"], dtype=np.int64),
            np.array(r["offer"], dtype=object),
            np.array(r["variant"], dtype=object),
            np.array(r["p"], dtype=float),
            np.array(r["margin"], dtype=float),
            np.array(r["full"], dtype=float),
            np.array(r["lever"], dtype=float),
            matrix(self.x_ranker, len(RANKER_FEATURES.names)),
            matrix(self.x_organic, len(ORGANIC_FEATURES.names)),
        )


# -- sources ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditWindow:
    """Which decisions of an audit log were read, and why others were not."""

    since: datetime | None
    until: datetime | None
    read: int
    holdout: int
    other_catalog: int
    without_outcome: int
    first: datetime | None
    last: datetime | None

    def document(self) -> dict[str, Any]:
        """The window as JSON data: on a model card, and in an evaluation."""
        return {
            "since": _iso(self.since),
            "until": _iso(self.until),
            "first_decision": _iso(self.first),
            "last_decision": _iso(self.last),
            "treated_decisions": self.read,
            "holdout_skipped": self.holdout,
            "other_catalog_skipped": self.other_catalog,
            "offers_without_outcome_skipped": self.without_outcome,
        }


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def from_audit(
    path: Path,
    catalog: Catalog,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[Logged, AuditWindow]:
    """Treated decisions made with `catalog`, with `since <= time < until`, from an audit log.

    The contexts are the inputs logged at decision time (nothing from later leaks in); the
    logging probabilities are the ones logged with each decision. An offer whose outcome is not
    logged (yet), or that was never presented, counts as not accepted and is counted in the
    window's `without_outcome`. Raises AuditLocked while the service holds the file.
    """
    from audit.views import open_source

    con = open_source(path)
    try:
        rows = _decision_records(con, since, until)
        outcomes = dict(con.execute("SELECT decision_id, outcome FROM outcomes").fetchall())
    finally:
        con.close()
    builder = _Builder(catalog)
    holdout = other = missing = 0
    for subject, raw in rows:
        b = json.loads(raw)["body"]
        if b["group"] != "treated":
            holdout += 1
            continue
        if b["catalog_version"] != catalog.version:
            other += 1
            continue
        inputs = b["inputs"]
        customer = inputs["customer"]
        if customer is None:  # unknown customer: no candidates, but a decision all the same
            customer = {}
        actions = logged_actions(b, catalog)  # those logged by reference too
        probs = {a["action"]: a["probability"] for a in actions}
        candidates = [
            (*a["action"].split("/", 1), a["probability"])
            for a in actions
            if a["action"] != NO_OFFER
        ]
        chosen = None
        accepted = 0
        if b["kind"] == "offer":
            chosen = (b["card"]["offer_id"], b["card"]["variant_id"])
            outcome = outcomes.get(b["decision_id"])
            if outcome in ("accepted", "declined"):
                accepted = int(outcome == "accepted")
            else:
                missing += 1
                accepted = -1
        at = _utc(inputs["now"])
        builder.add(
            b["decision_id"],
            at,
            subject or b["decision_id"],  # no pseudonym: unknown customer, its own cluster
            Context(customer, inputs["ticket"], b["contact"]),
            candidates,
            probs.get(NO_OFFER, 1.0),
            chosen,
            accepted,
        )
    logged = builder.build()
    times = logged.at
    window = AuditWindow(
        since,
        until,
        len(logged),
        holdout,
        other,
        missing,
        _moment(times.min()) if len(times) else None,
        _moment(times.max()) if len(times) else None,
    )
    return logged, window


def _decision_records(
    con: Any, since: datetime | None, until: datetime | None
) -> list[tuple[str | None, str]]:
    """(subject, record) of the decisions with since <= time < until, in log order; a
    decision past its retention (cut) has nothing left to learn from."""
    where, params = ["kind = 'decision'", "record <> ''"], []
    for op, bound in ((">=", since), ("<", until)):
        if bound is not None:
            if bound.tzinfo is None:
                raise ValueError("since and until must be timezone-aware")
            where.append(f"recorded_at {op} ?")
            params.append(bound.astimezone(UTC).replace(tzinfo=None))
    sql = f"SELECT subject, record FROM audit_records WHERE {' AND '.join(where)} ORDER BY seq"
    return [(subject, record) for subject, record in con.execute(sql, params).fetchall()]


def from_history(history: Any, catalog: Catalog) -> Logged:
    """The simulator's bootstrap history (the old process: uniform among eligible actions)."""
    from service.simulator import SHOW_PROBABILITY

    builder = _Builder(catalog)
    for r in history.to_pylist():
        eligible = r["eligible"]
        per_offer: dict[str, int] = {}
        for e in eligible:
            per_offer[e["offer_id"]] = per_offer.get(e["offer_id"], 0) + 1
        candidates = [
            (
                e["offer_id"],
                e["variant_id"],
                SHOW_PROBABILITY / len(per_offer) / per_offer[e["offer_id"]],
            )
            for e in eligible
        ]
        chosen = None if r["offer_id"] is None else (r["offer_id"], r["variant_id"])
        builder.add(
            r["decision_id"],
            r["decided_at"],
            r["customer_id"],
            Context(*(json.loads(r[k]) for k in ("customer", "ticket", "contact"))),
            candidates,
            (1.0 - SHOW_PROBABILITY) if eligible else 1.0,
            chosen,
            -1 if chosen is None else int(r["accepted"]),
        )
    return builder.build()


def _utc(text: str) -> datetime:
    from audit.records import decode_time

    return decode_time(text)


def _moment(t: np.datetime64) -> datetime:
    value: datetime = t.astype("datetime64[us]").item()
    return value.replace(tzinfo=UTC)


# -- the policy a model would run --------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PolicyScores:
    """A model's policy on logged decisions: per candidate row its scores, value and the
    probability the policy takes it; per decision the probability of NO_OFFER."""

    p_accept: np.ndarray
    p_anyway: np.ndarray
    value: np.ndarray
    p: np.ndarray
    p_none: np.ndarray


def policy_of(models: Models, logged: Logged, *, epsilon: float | None = None) -> PolicyScores:
    """What `models` would do on each logged decision under the logged catalog's floor and
    exploration rate (or `epsilon`): the same value function and arbitration as decide()."""
    catalog = logged.catalog
    eps = catalog.policy.exploration_rate if epsilon is None else epsilon
    p_accept = models.p_accept(logged.X_ranker)
    p_anyway = models.p_anyway(logged.X_organic)
    value = np.array(
        [
            incremental_value(float(pa), m, float(pn), fm, lv)
            for pa, m, pn, fm, lv in zip(
                p_accept, logged.margin, p_anyway, logged.full_margin, logged.lever, strict=True
            )
        ]
    )
    p, p_none = _arbitration_probabilities(logged, value, p_accept, p_anyway, eps)
    return PolicyScores(p_accept, p_anyway, value, p, p_none)


def _arbitration_probabilities(
    logged: Logged,
    value: np.ndarray,
    p_accept: np.ndarray,
    p_anyway: np.ndarray,
    epsilon: float,
) -> tuple[np.ndarray, np.ndarray]:
    # service.arbitration.arbitrate is the one definition of the policy; its probabilities do
    # not depend on the seed. ~20 µs a decision.
    floor = logged.catalog.value_floor_minor
    p = np.zeros(len(value))
    p_none = np.ones(len(logged))
    for d, rows in _rows_by_decision(logged):
        scored = [
            Scored(
                logged.offer_id[i],
                logged.variant_id[i],
                float(p_accept[i]),
                float(p_anyway[i]),
                float(value[i]),
            )
            for i in rows
        ]
        arb: Arbitration = arbitrate(scored, floor=floor, epsilon=epsilon, seed=0)
        probs = arb.probabilities
        for k, i in enumerate(rows):
            p[i] = probs[k][1]
        p_none[d] = probs[-1][1]
    return p, p_none


def _rows_by_decision(logged: Logged) -> Iterable[tuple[int, np.ndarray]]:
    order = np.argsort(logged.row_decision, kind="stable")
    decisions = logged.row_decision[order]
    if not len(order):
        return
    starts = np.flatnonzero(np.r_[True, decisions[1:] != decisions[:-1]])
    ends = [*starts[1:].tolist(), len(order)]
    for s, e in zip(starts, ends, strict=True):
        yield int(decisions[s]), order[s:e]


# -- organic purchases, for the organic-purchase model -----------------------------------------

#: a purchase within this many days after a decision counts as that decision's "bought anyway"
ORGANIC_DAYS = 30


@dataclass(frozen=True)
class OrganicLabels:
    """One decision's organic-purchase labels: for each offer it did not show, whether the
    customer bought that offer's product unprompted within ORGANIC_DAYS."""

    decision_id: str
    at: datetime
    context: Context
    bought: tuple[tuple[str, bool], ...]  # (offer id, bought)


def organic_from_audit(
    path: Path,
    catalog: Catalog,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[OrganicLabels], int]:
    """Labels from billing's conversions, for decisions of either group made with `catalog`.

    A conversion is prompted — and is no organic label — when the same customer accepted an
    offer of that product at most ORGANIC_DAYS before it. Decisions whose window is not over by
    the log's newest decision, outcome or conversion are left out (their labels are not known
    yet); returns the labels and
    how many decisions were left out that way.
    """
    from datetime import timedelta

    from audit.views import open_source

    window = timedelta(days=ORGANIC_DAYS)
    con = open_source(path)
    try:
        # The data's horizon: the newest decision, outcome or conversion (a deployment record
        # written later says nothing about purchases).
        (end,) = con.execute(
            "SELECT max(recorded_at) FROM audit_records "
            "WHERE kind IN ('decision', 'outcome', 'conversion')"
        ).fetchall()[0]
        rows = _decision_records(con, since, until)
        conversions = con.execute(
            "SELECT subject, product, occurred_at FROM conversions WHERE subject IS NOT NULL"
        ).fetchall()
        accepted = con.execute(
            "SELECT d.subject, d.product, d.recorded_at FROM decisions AS d "
            "JOIN outcomes AS o ON o.decision_id = d.decision_id WHERE o.outcome = 'accepted'"
        ).fetchall()
    finally:
        con.close()
    if end is None:
        return [], 0
    log_end = end.replace(tzinfo=UTC)
    taken: dict[tuple[str, str], list[datetime]] = {}
    for subject, product, at in accepted:
        taken.setdefault((subject, product), []).append(at.replace(tzinfo=UTC))
    bought: dict[str, list[tuple[datetime, str]]] = {}
    for subject, product, at in conversions:
        when = at.replace(tzinfo=UTC)
        prompted = any(t <= when <= t + window for t in taken.get((subject, product), ()))
        if not prompted:
            bought.setdefault(subject, []).append((when, product))
    labels: list[OrganicLabels] = []
    open_window = 0
    for subject, raw in rows:
        b = json.loads(raw)["body"]
        customer = b["inputs"]["customer"]
        if b["catalog_version"] != catalog.version or customer is None or subject is None:
            continue
        at = _utc(b["inputs"]["now"])
        if at + window > log_end:
            open_window += 1
            continue
        shown = b["card"]["offer_id"] if b["kind"] == "offer" else None
        purchases = [p for t, p in bought.get(subject, ()) if at < t <= at + window]
        labels.append(
            OrganicLabels(
                b["decision_id"],
                at,
                Context(customer, b["inputs"]["ticket"], b["contact"]),
                tuple((o.id, o.product in purchases) for o in catalog.offers if o.id != shown),
            )
        )
    return labels, open_window


# -- logging afresh, for simulation --------------------------------------------------------------


def relog(
    base: Logged, policy: PolicyScores, accept_p: np.ndarray, rng: np.random.Generator
) -> Logged:
    """`base`'s decisions as if `policy` had logged them: an action drawn from its
    probabilities and, for an offer, acceptance drawn with `accept_p` (per candidate row).

    Used with the simulator's truth to test estimators against known values; the contexts
    (including contact summaries) stay those of `base`.
    """
    if len(accept_p) != len(base.row_decision):
        raise ValueError("accept_p must have one probability per candidate row")
    n = len(base)
    chosen = np.full(n, -1, dtype=np.int64)
    u = rng.random(n)
    for d, rows in _rows_by_decision(base):
        cumulative = np.cumsum(policy.p[rows])
        k = int(np.searchsorted(cumulative, u[d], side="right"))
        if k < len(rows):
            chosen[d] = rows[k]
    accepted = np.full(n, -1, dtype=np.int8)
    shown = chosen >= 0
    accepted[shown] = rng.random(int(shown.sum())) < accept_p[chosen[shown]]
    return Logged(
        base.catalog,
        base.decision_id,
        base.at,
        base.customer,
        base.contexts,
        policy.p_none,
        chosen,
        accepted,
        base.row_decision,
        base.offer_id,
        base.variant_id,
        policy.p,
        base.margin,
        base.full_margin,
        base.lever,
        base.X_ranker,
        base.X_organic,
    )
