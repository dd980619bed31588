"""The lift report: did the offers make money that would not have come anyway?

Compares treated with holdout customers per 1,000 resolved tickets (intention to treat), with
each billing conversion attributed to the customer's last decision within 30 days and
confidence intervals clustered by customer. Reading the log is one function at the edge
(``read_log``); everything after it is pure functions over plain dataclasses. Nothing here
may write to the log or the registry.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import NormalDist
from typing import Any

import duckdb

from service.catalog import Catalog

#: a conversion belongs to the customer's last decision at most this long before it
ATTRIBUTION_WINDOW = timedelta(days=30)
#: figures are per this many resolved tickets
PER_TICKETS = 1000
TREATED, HOLDOUT = "treated", "holdout"
GROUPS = (TREATED, HOLDOUT)
#: fewer holdout customers than this and the intervals rest on too few clusters to trust
FEW_CUSTOMERS = 30
_Z95 = NormalDist().inv_cdf(0.975)


class LiftError(Exception):
    """The log holds nothing the report can compare (no decisions, or no holdout, in the window)."""


# -- what the log holds, as plain values -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ticket:
    """One decision record, i.e. one resolved ticket: the report's unit.

    ``at`` is the decision time in naive UTC (as DuckDB's TIMESTAMP holds it); the card's
    fields are None for a no-offer; ``outcome`` is the agent's answer, if any.
    """

    decision_id: str
    subject: str
    at: datetime
    group: str
    catalog_version: str
    offer_id: str | None = None
    variant_id: str | None = None
    product: str | None = None
    price_minor: int | None = None
    list_price_minor: int | None = None
    discount_bps: int | None = None
    outcome: str | None = None

    @property
    def offered(self) -> bool:
        return self.offer_id is not None


@dataclass(frozen=True, slots=True)
class Conversion:
    """A purchase billing reported (no decision link): who, what, how much, when (naive UTC)."""

    subject: str | None
    product: str
    amount_minor: int
    currency: str
    at: datetime


@dataclass(frozen=True, slots=True)
class LogData:
    """What the report reads from a log: tickets in log order, conversions, and the time of
    the log's last decision, outcome or conversion (the report's "now")."""

    tickets: tuple[Ticket, ...]
    conversions: tuple[Conversion, ...]
    last_record_at: datetime | None


# -- statistics ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with its standard error (None: fewer than two customers to tell)."""

    value: float
    se: float | None

    @property
    def low(self) -> float | None:
        return None if self.se is None else self.value - _Z95 * self.se

    @property
    def high(self) -> float | None:
        return None if self.se is None else self.value + _Z95 * self.se

    def document(self) -> dict[str, float | None]:
        return {"value": self.value, "se": self.se, "ci95_low": self.low, "ci95_high": self.high}


def ratio(y: Sequence[float], n: Sequence[float], *, per: float = 1.0) -> Estimate:
    """The ratio estimator Σy/Σn over clusters, times ``per``, with its delta-method
    cluster-robust standard error.

    ``y[c]`` and ``n[c]`` are cluster c's totals (e.g. a customer's margin and tickets). The
    variance is G/(G−1) · Σ_c (y_c − R·n_c)² / (Σ_c n_c)², G the number of clusters: the
    sandwich variance of a mean when observations within a cluster may be correlated.
    """
    if len(y) != len(n):
        raise ValueError(f"ratio: y and n differ in length ({len(y)} and {len(n)})")
    total = math.fsum(n)
    if total <= 0:
        raise ValueError("ratio: n must sum to more than 0")
    r = math.fsum(y) / total
    g = len(y)
    if g < 2:
        return Estimate(r * per, None)
    squares = math.fsum((yc - r * nc) ** 2 for yc, nc in zip(y, n, strict=True))
    return Estimate(r * per, per * math.sqrt(g / (g - 1) * squares) / total)


def difference(a: Estimate, b: Estimate) -> Estimate:
    """a − b for estimates from disjoint sets of clusters: the variances add."""
    se = None if a.se is None or b.se is None else math.hypot(a.se, b.se)
    return Estimate(a.value - b.value, se)


def relative(a: Estimate, b: Estimate) -> Estimate | None:
    """a/b − 1 (None when b is 0), with a delta-method standard error for independent a, b."""
    if b.value == 0:
        return None
    if a.se is None or b.se is None:
        return Estimate(a.value / b.value - 1, None)
    var = a.se**2 / b.value**2 + a.value**2 * b.se**2 / b.value**4
    return Estimate(a.value / b.value - 1, math.sqrt(var))


def cluster_totals(keys: Sequence[str], values: Sequence[float]) -> tuple[list[float], list[float]]:
    """Per distinct key: the sum of its values and its count, in order of first appearance."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for key, value in zip(keys, values, strict=True):
        sums[key] = sums.get(key, 0.0) + value
        counts[key] = counts.get(key, 0.0) + 1.0
    return list(sums.values()), list(counts.values())


def decisions_needed(
    effect: float,
    unit_variance_treated: float,
    unit_variance_holdout: float,
    holdout_share: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float | None:
    """Total decisions (both groups) needed to detect ``effect`` two-sided at level ``alpha``
    with ``power``, when a fraction ``holdout_share`` of decisions is held out.

    A unit variance is an estimate's variance times the tickets behind it (per-ticket, with
    clustering folded in); the difference's variance at N decisions is then
    v_t/((1−h)N) + v_h/(hN). None when there is no effect or no variance to scale.
    """
    if not 0 < holdout_share < 1:
        raise ValueError(f"holdout_share: must be in (0, 1), got {holdout_share!r}")
    if unit_variance_treated < 0 or unit_variance_holdout < 0:
        raise ValueError("unit variances must not be negative")
    spread = unit_variance_treated / (1 - holdout_share) + unit_variance_holdout / holdout_share
    if effect == 0 or spread == 0:
        return None
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z**2 * spread / effect**2


# -- attribution and margins --------------------------------------------------------------------


def attribute(
    tickets: Sequence[Ticket],
    conversions: Sequence[Conversion],
    window: timedelta = ATTRIBUTION_WINDOW,
) -> list[int | None]:
    """For each conversion, the index in ``tickets`` of the same customer's latest decision at
    or before it and no more than ``window`` earlier (last touch); None if there is none.

    Of decisions made at the same instant, the later one in ``tickets`` (log order) wins.
    """
    by_subject: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
    for i, t in enumerate(tickets):
        by_subject[t.subject].append((t.at, i))
    for touches in by_subject.values():
        touches.sort()
    found: list[int | None] = []
    for c in conversions:
        touches = by_subject.get(c.subject, []) if c.subject is not None else []
        if not touches:
            found.append(None)
            continue
        pos = bisect_right(touches, (c.at, len(tickets)))
        if pos == 0 or c.at - touches[pos - 1][0] > window:
            found.append(None)
        else:
            found.append(touches[pos - 1][1])
    return found


def unit_costs(catalog: Catalog) -> dict[str, int]:
    """What one unit of each product costs us: its full-price variant's price less its margin
    (the first offer of a product in the catalog speaks for it)."""
    costs: dict[str, int] = {}
    for offer in catalog.offers:
        full = offer.full_price
        costs.setdefault(offer.product, full.price_minor - full.margin_minor)
    return costs


def margin_of(amount_minor: int, product: str, costs: Mapping[str, int]) -> int | None:
    """A conversion's margin: its amount less the product's unit cost; None if unknown."""
    cost = costs.get(product)
    return None if cost is None else amount_minor - cost


# -- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupSummary:
    """Totals of one group in the window: tickets, customers, offers and what they brought."""

    group: str
    tickets: int
    customers: int
    offers: int
    conversions: int
    revenue_minor: int
    margin_minor: int

    def document(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "tickets": self.tickets,
            "customers": self.customers,
            "offers": self.offers,
            "conversions": self.conversions,
            "revenue_minor": self.revenue_minor,
            "margin_minor": self.margin_minor,
        }


@dataclass(frozen=True, slots=True)
class Metric:
    """One figure per 1,000 tickets in both groups, their difference and the relative lift."""

    name: str
    treated: Estimate
    holdout: Estimate
    difference: Estimate
    relative: Estimate | None

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "treated": self.treated.document(),
            "holdout": self.holdout.document(),
            "difference": self.difference.document(),
            "relative_lift": None if self.relative is None else self.relative.document(),
        }


@dataclass(frozen=True, slots=True)
class OfferRow:
    """How one offer did among the offers shown in the window."""

    offer_id: str
    shown: int
    answered: int
    accepted: int
    discounted: int
    discount_offered_minor: int
    discount_accepted_minor: int

    @property
    def take_rate(self) -> float:
        return self.accepted / self.shown if self.shown else 0.0

    def document(self) -> dict[str, Any]:
        return {
            "offer_id": self.offer_id,
            "shown": self.shown,
            "answered": self.answered,
            "accepted": self.accepted,
            "take_rate": self.take_rate,
            "discounted_shown": self.discounted,
            "discount_offered_minor": self.discount_offered_minor,
            "discount_accepted_minor": self.discount_accepted_minor,
        }


@dataclass(frozen=True, slots=True)
class WeekRow:
    """Margin per 1,000 tickets in one ISO week of decision time (None: a group had none)."""

    week: str
    treated_tickets: int
    holdout_tickets: int
    treated: Estimate | None
    holdout: Estimate | None
    difference: Estimate | None

    def document(self) -> dict[str, Any]:
        def doc(e: Estimate | None) -> dict[str, float | None] | None:
            return None if e is None else e.document()

        return {
            "week": self.week,
            "treated_tickets": self.treated_tickets,
            "holdout_tickets": self.holdout_tickets,
            "treated_margin_per_1000": doc(self.treated),
            "holdout_margin_per_1000": doc(self.holdout),
            "difference": doc(self.difference),
        }


@dataclass(frozen=True, slots=True)
class PowerNote:
    """How many decisions it takes to detect a margin lift of ``effect`` per 1,000 tickets
    (80% power, two-sided 5%), at the observed holdout share and clustered variances."""

    basis: str
    effect: float
    decisions_now: int
    decisions_needed: int | None

    @property
    def detectable_now(self) -> bool:
        return self.decisions_needed is not None and self.decisions_needed <= self.decisions_now

    @property
    def more_needed(self) -> int | None:
        if self.decisions_needed is None:
            return None
        return max(0, self.decisions_needed - self.decisions_now)

    def document(self) -> dict[str, Any]:
        return {
            "basis": self.basis,
            "effect_margin_per_1000": self.effect,
            "decisions_now": self.decisions_now,
            "decisions_needed": self.decisions_needed,
            "more_decisions_needed": self.more_needed,
            "detectable_now": self.detectable_now,
        }


@dataclass(frozen=True, slots=True)
class LiftReport:
    """Treated against holdout in one window of decision time, and what the offers did."""

    source: str
    currency: str
    since: datetime | None
    until: datetime | None
    complete_only: bool
    first_decision_at: datetime
    last_decision_at: datetime
    last_record_at: datetime | None
    groups: Mapping[str, GroupSummary]
    metrics: Mapping[str, Metric]
    offers_shown: int
    offers_answered: int
    offers_accepted: int
    coverage: float
    discount_spend_minor: int
    offers: tuple[OfferRow, ...]
    weeks: tuple[WeekRow, ...]
    power: tuple[PowerNote, ...]
    conversions_counted: int
    conversions_unattributed: int
    conversions_outside: int
    conversions_other_currency: int
    conversions_unknown_margin: int
    open_windows: int
    customers_in_both: int
    caveats: tuple[str, ...] = field(default=())

    @property
    def take_rate_answered(self) -> float:
        """Accepted among offers with any outcome recorded."""
        return self.offers_accepted / self.offers_answered if self.offers_answered else 0.0

    @property
    def take_rate_shown(self) -> float:
        """Accepted among all offers shown (no outcome counts as not accepted)."""
        return self.offers_accepted / self.offers_shown if self.offers_shown else 0.0

    def document(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (times as ISO 8601 UTC, money in minor units)."""
        return {
            "report": "lift",
            "source": self.source,
            "currency": self.currency,
            "window": {
                "since": _iso(self.since),
                "until": _iso(self.until),
                "complete_only": self.complete_only,
                "first_decision_at": _iso(self.first_decision_at),
                "last_decision_at": _iso(self.last_decision_at),
                "last_record_at": _iso(self.last_record_at),
                "attribution_days": ATTRIBUTION_WINDOW.days,
            },
            "per_tickets": PER_TICKETS,
            "groups": {name: g.document() for name, g in self.groups.items()},
            "metrics": {name: m.document() for name, m in self.metrics.items()},
            "offers_shown": self.offers_shown,
            "offers_answered": self.offers_answered,
            "offers_accepted": self.offers_accepted,
            "take_rate_answered": self.take_rate_answered,
            "take_rate_shown": self.take_rate_shown,
            "coverage": self.coverage,
            "discount_spend_minor": self.discount_spend_minor,
            "by_offer": [o.document() for o in self.offers],
            "by_week": [w.document() for w in self.weeks],
            "power": [p.document() for p in self.power],
            "conversions": {
                "counted": self.conversions_counted,
                "unattributed": self.conversions_unattributed,
                "attributed_outside_window": self.conversions_outside,
                "other_currency": self.conversions_other_currency,
                "unknown_margin": self.conversions_unknown_margin,
            },
            "open_windows": self.open_windows,
            "customers_in_both_groups": self.customers_in_both,
            "caveats": list(self.caveats),
        }


def build_report(
    data: LogData,
    costs: Mapping[str, Mapping[str, int]],
    currency: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    complete_only: bool = False,
    source: str = "",
) -> LiftReport:
    """The lift report of the decisions made in ``[since, until)`` (naive UTC, either optional).

    ``costs`` maps a catalog version to its products' unit costs (see unit_costs); a version
    missing from it leaves its conversions' margin unknown (counted as 0, said in a caveat).
    Money is reported in ``currency``; conversions in another currency are left out.
    Raises LiftError when the window holds no treated or no holdout decision.
    """
    tickets = data.tickets
    now = data.last_record_at
    in_range = [
        t.group in GROUPS and (since is None or t.at >= since) and (until is None or t.at < until)
        for t in tickets
    ]
    is_open = [now is None or t.at + ATTRIBUTION_WINDOW > now for t in tickets]
    included = [r and not (complete_only and o) for r, o in zip(in_range, is_open, strict=True)]
    chosen = [i for i, keep in enumerate(included) if keep]
    if not chosen:
        what = "whose 30-day window has closed " if complete_only and any(in_range) else ""
        raise LiftError(f"no decisions {what}{_span(since, until)}")
    by_group = {g: [i for i in chosen if tickets[i].group == g] for g in GROUPS}
    if not by_group[HOLDOUT]:
        raise LiftError(
            f"no holdout decisions {_span(since, until)}: there is nothing to compare the "
            "offers with (is the catalog's policy.holdout_share 0?)"
        )
    if not by_group[TREATED]:
        raise LiftError(f"no treated decisions {_span(since, until)}: no offer could be made")

    # Each conversion counts once, for its last-touch decision, and only if that one is in.
    considered = [
        c
        for c in data.conversions
        if (since is None or c.at >= since) and (until is None or c.at < until + ATTRIBUTION_WINDOW)
    ]
    conv = [0] * len(tickets)
    revenue = [0] * len(tickets)
    margin = [0] * len(tickets)
    unattributed = outside = other_currency = 0
    unknown: Counter[str] = Counter()
    for c, i in zip(considered, attribute(tickets, considered), strict=True):
        if i is None:
            unattributed += 1
            continue
        if not included[i]:
            outside += 1
            continue
        if c.currency != currency:
            other_currency += 1
            continue
        version = tickets[i].catalog_version
        m = margin_of(c.amount_minor, c.product, costs.get(version, {}))
        if m is None:
            unknown[c.product if version in costs else f"catalog {version}"] += 1
        conv[i] += 1
        revenue[i] += c.amount_minor
        margin[i] += m or 0

    def estimate(rows: Sequence[int], values: Sequence[int]) -> Estimate:
        y, n = cluster_totals([tickets[i].subject for i in rows], [float(values[i]) for i in rows])
        return ratio(y, n, per=PER_TICKETS)

    metrics: dict[str, Metric] = {}
    for name, values in (("conversions", conv), ("revenue", revenue), ("margin", margin)):
        treated = estimate(by_group[TREATED], values)
        holdout = estimate(by_group[HOLDOUT], values)
        metrics[name] = Metric(
            name, treated, holdout, difference(treated, holdout), relative(treated, holdout)
        )
    groups = {
        g: GroupSummary(
            g,
            tickets=len(rows),
            customers=len({tickets[i].subject for i in rows}),
            offers=sum(tickets[i].offered for i in rows),
            conversions=sum(conv[i] for i in rows),
            revenue_minor=sum(revenue[i] for i in rows),
            margin_minor=sum(margin[i] for i in rows),
        )
        for g, rows in by_group.items()
    }
    offers = _offer_rows(tickets[i] for i in chosen if tickets[i].offered)
    subjects = {g: {tickets[i].subject for i in rows} for g, rows in by_group.items()}
    report = LiftReport(
        source=source,
        currency=currency,
        since=since,
        until=until,
        complete_only=complete_only,
        first_decision_at=min(tickets[i].at for i in chosen),
        last_decision_at=max(tickets[i].at for i in chosen),
        last_record_at=now,
        groups=groups,
        metrics=metrics,
        offers_shown=sum(o.shown for o in offers),
        offers_answered=sum(o.answered for o in offers),
        offers_accepted=sum(o.accepted for o in offers),
        coverage=groups[TREATED].offers / groups[TREATED].tickets,
        discount_spend_minor=sum(o.discount_accepted_minor for o in offers),
        offers=offers,
        weeks=_week_rows([tickets[i] for i in chosen], [float(margin[i]) for i in chosen]),
        power=_power_notes(metrics["margin"], groups),
        conversions_counted=sum(conv),
        conversions_unattributed=unattributed,
        conversions_outside=outside,
        conversions_other_currency=other_currency,
        conversions_unknown_margin=sum(unknown.values()),
        # open windows among the window's decisions: included, or left out by complete_only
        open_windows=sum(r and o for r, o in zip(in_range, is_open, strict=True)),
        customers_in_both=len(subjects[TREATED] & subjects[HOLDOUT]),
    )
    return _with_caveats(report, unknown)


def _offer_rows(shown: Iterable[Ticket]) -> tuple[OfferRow, ...]:
    rows: dict[str, list[int]] = {}
    for t in shown:
        assert t.offer_id is not None
        row = rows.setdefault(t.offer_id, [0] * 6)
        discount = max(0, (t.list_price_minor or 0) - (t.price_minor or 0))
        accepted = t.outcome == "accepted"
        row[0] += 1
        row[1] += t.outcome is not None
        row[2] += accepted
        row[3] += discount > 0
        row[4] += discount
        row[5] += discount if accepted else 0
    return tuple(
        OfferRow(offer_id, *counts)
        for offer_id, counts in sorted(rows.items(), key=lambda kv: (-kv[1][0], kv[0]))
    )


def _week_rows(chosen: Sequence[Ticket], margin: Sequence[float]) -> tuple[WeekRow, ...]:
    weeks: dict[str, dict[str, list[int]]] = {}
    for i, t in enumerate(chosen):
        iso = t.at.isocalendar()
        weeks.setdefault(f"{iso.year}-W{iso.week:02d}", {g: [] for g in GROUPS})[t.group].append(i)
    rows = []
    for week, members in sorted(weeks.items()):
        est: dict[str, Estimate | None] = {}
        for g, idx in members.items():
            y, n = cluster_totals([chosen[i].subject for i in idx], [margin[i] for i in idx])
            est[g] = ratio(y, n, per=PER_TICKETS) if idx else None
        treated, holdout = est[TREATED], est[HOLDOUT]
        diff = None if treated is None or holdout is None else difference(treated, holdout)
        rows.append(
            WeekRow(week, len(members[TREATED]), len(members[HOLDOUT]), treated, holdout, diff)
        )
    return tuple(rows)


def _power_notes(margin: Metric, groups: Mapping[str, GroupSummary]) -> tuple[PowerNote, ...]:
    n_t, n_h = groups[TREATED].tickets, groups[HOLDOUT].tickets
    if not margin.treated.se or not margin.holdout.se:
        # no customers to tell (None) or no variation yet (0): nothing to scale from
        return ()
    # Variance of a per-1,000 figure times its tickets: what one more ticket's share costs.
    v_t, v_h = margin.treated.se**2 * n_t, margin.holdout.se**2 * n_h
    share = n_h / (n_t + n_h)
    efforts: list[tuple[str, float]] = []
    if margin.difference.value != 0:
        efforts.append(("observed difference", margin.difference.value))
    if margin.holdout.value != 0:
        efforts.append(("10% of the holdout margin", 0.1 * abs(margin.holdout.value)))
    notes = []
    for basis, effect in efforts:
        needed = decisions_needed(effect, v_t, v_h, share)
        notes.append(
            PowerNote(basis, effect, n_t + n_h, None if needed is None else math.ceil(needed))
        )
    return tuple(notes)


def _with_caveats(report: LiftReport, unknown: Mapping[str, int]) -> LiftReport:
    notes = []
    if report.complete_only and report.open_windows:
        notes.append(
            f"{report.open_windows:,} decisions whose 30-day window is still open were left out "
            "(--complete-only)"
        )
    elif report.open_windows:
        notes.append(
            f"{report.open_windows:,} decisions' 30-day window is still open: their conversions "
            "may still come"
        )
    if report.conversions_unattributed:
        notes.append(
            f"{report.conversions_unattributed:,} conversions had no decision for that customer "
            "in the 30 days before them: not counted"
        )
    if report.conversions_outside:
        notes.append(
            f"{report.conversions_outside:,} conversions belong to a later decision outside the "
            "window: not counted here"
        )
    if report.conversions_other_currency:
        notes.append(
            f"{report.conversions_other_currency:,} conversions in a currency other than "
            f"{report.currency}: left out"
        )
    if unknown:
        what = ", ".join(f"{k} ({v})" for k, v in sorted(unknown.items()))
        notes.append(
            f"{sum(unknown.values()):,} conversions with unknown margin, counted as 0: {what}"
        )
    if report.customers_in_both:
        notes.append(
            f"{report.customers_in_both:,} customers have decisions in both groups (the holdout "
            "key changed?): the groups are not disjoint and the intervals are too narrow"
        )
    for g in GROUPS:
        if not report.groups[g].conversions:
            notes.append(
                f"no conversions in the {g} group yet: its figures and their interval are 0, "
                "which understates the uncertainty"
            )
    holdout = report.groups[HOLDOUT].customers
    if holdout < FEW_CUSTOMERS:
        notes.append(
            f"only {holdout} holdout customers: the intervals rest on too few customers to trust"
        )
    return replace(report, caveats=tuple(notes))


def _span(since: datetime | None, until: datetime | None) -> str:
    if since is None and until is None:
        return "in the log"
    if until is None:
        return f"from {_iso(since)}"
    if since is None:
        return f"before {_iso(until)}"
    return f"from {_iso(since)} to before {_iso(until)}"


def _iso(at: datetime | None) -> str | None:
    if at is None:
        return None
    return at.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


# -- reading: the edge --------------------------------------------------------------------------

_TICKETS_SQL = """\
SELECT d.decision_id, d.subject, d.recorded_at, d.decision_group, d.catalog_version,
       d.offer_id, d.variant_id, d.product, d.price_minor, d.list_price_minor,
       d.discount_bps, o.outcome
FROM decisions AS d
LEFT JOIN (SELECT decision_id, arg_max(outcome, seq) AS outcome
           FROM outcomes GROUP BY decision_id) AS o USING (decision_id)
WHERE $since IS NULL OR d.recorded_at >= $since
ORDER BY d.seq"""

_CONVERSIONS_SQL = """\
SELECT subject, product, amount_minor, currency, occurred_at
FROM conversions
WHERE $since IS NULL OR occurred_at >= $since
ORDER BY occurred_at, seq"""

_LAST_SQL = """\
SELECT max(recorded_at) FROM audit_records
WHERE kind IN ('decision', 'outcome', 'conversion') AND record <> ''"""


def read_log(con: duckdb.DuckDBPyConnection, *, since: datetime | None = None) -> LogData:
    """The tickets and conversions of a log whose views are installed on ``con``.

    With ``since`` (naive UTC), decisions from 30 days before it are read (a conversion after
    ``since`` may belong to one of them), and conversions from ``since`` on.
    """
    early = None if since is None else since - ATTRIBUTION_WINDOW
    tickets = tuple(
        Ticket(
            decision_id=row[0],
            # A decision always names its customer; the id keeps a bare one its own cluster.
            subject=row[1] if row[1] is not None else f"?{row[0]}",
            at=row[2],
            group=row[3],
            catalog_version=row[4],
            offer_id=row[5],
            variant_id=row[6],
            product=row[7],
            price_minor=row[8],
            list_price_minor=row[9],
            discount_bps=row[10],
            outcome=row[11],
        )
        for row in con.execute(_TICKETS_SQL, {"since": early}).fetchall()
    )
    conversions = tuple(
        Conversion(subject=row[0], product=row[1], amount_minor=row[2], currency=row[3], at=row[4])
        for row in con.execute(_CONVERSIONS_SQL, {"since": since}).fetchall()
    )
    (last,) = con.execute(_LAST_SQL).fetchone() or (None,)
    return LogData(tickets, conversions, last)


def load_costs(
    registry_dir: Path, versions: Iterable[str]
) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """Each catalog version's unit costs and currency from the registry; versions the
    registry lacks are left out (their conversions' margin is unknown)."""
    from service.errors import OfferDeskError
    from service.registry import Registry

    registry = Registry(registry_dir)
    costs: dict[str, dict[str, int]] = {}
    currencies: dict[str, str] = {}
    for version in sorted(set(versions)):
        try:
            catalog = registry.load_catalog(version)
        except OfferDeskError:
            continue
        costs[version] = unit_costs(catalog)
        currencies[version] = catalog.currency
    return costs, currencies


def lift_report(
    audit_path: Path,
    registry_dir: Path,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    complete_only: bool = False,
) -> LiftReport:
    """Read the log at ``audit_path`` (read-only) and build its lift report.

    ``since``/``until`` are aware or naive-UTC datetimes. Raises audit.errors.AuditLocked when
    the service holds the file, AuditError when it is not an audit log, LiftError when there
    is nothing to compare.
    """
    from audit.views import open_source

    low, high = _naive_utc(since), _naive_utc(until)
    con = open_source(audit_path)
    try:
        data = read_log(con, since=low)
    finally:
        con.close()
    costs, currencies = load_costs(registry_dir, {t.catalog_version for t in data.tickets})
    weight = Counter(currencies.get(t.catalog_version) for t in data.tickets)
    weight.pop(None, None)
    if not weight:  # no catalog known: the purchases say which currency they are in
        weight.update(c.currency for c in data.conversions)
    currency = str(weight.most_common(1)[0][0]) if weight else "XXX"
    return build_report(
        data,
        costs,
        currency,
        since=low,
        until=high,
        complete_only=complete_only,
        source=str(audit_path),
    )


def _naive_utc(at: datetime | None) -> datetime | None:
    if at is None or at.tzinfo is None:
        return at
    return at.astimezone(UTC).replace(tzinfo=None)
