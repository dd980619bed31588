"""`why`: every decision made for some pseudonyms, with what it read, weighed and concluded.

One scan of the ``subject`` projection column finds the customer's rows; only those rows'
JSON is parsed, so one customer's answer stays fast on a log of millions of records (there
are no indexes by design). Reads ``audit_records`` on the caller's connection; never writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import duckdb

from audit.errors import AuditError
from audit.records import decode_time, encode_time
from audit.store import TABLE

_PSEUDONYM = re.compile(r"p_[a-z2-7]{26}")
_NEVER = datetime(1, 1, 1)
_FOREVER = datetime(9999, 12, 31)

# The customer's rows only: the subject filter runs on the projection column inside the scan
# (DuckDB pushes it down), JSON is touched only on the rows it keeps, and a decision's record
# text is returned only inside [since, until). Every decision's offered product comes back
# so that conversions can be linked to the last offer of that product, wherever it falls.
_WHY_SQL = """
SELECT seq,
       kind,
       recorded_at,
       subject,
       ref,
       CASE WHEN kind = 'decision'
            THEN json_extract_string(record, '$.body.card.product') END AS offered_product,
       CASE WHEN kind <> 'decision' OR (recorded_at >= ? AND recorded_at < ?)
            THEN record END AS record
FROM {table}
WHERE subject IN ({subjects})
  AND kind IN ('decision', 'outcome', 'conversion')
ORDER BY seq
"""


@dataclass(frozen=True, slots=True)
class OutcomeSeen:
    """What the agent recorded about an offer, who recorded it, and when."""

    seq: int
    recorded_at: datetime
    outcome: str  # accepted | declined | not_presented
    decline_reason: str | None
    has_note: bool
    agent_id: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class ConversionSeen:
    """A purchase of the offered product after the offer (see why() for the linking rule)."""

    seq: int
    recorded_at: datetime
    product: str
    amount_minor: int
    currency: str
    source: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class DecisionWhy:
    """One decision as logged: inputs, candidates, choice, reasons, rule, versions, outcome."""

    seq: int
    decided_at: datetime
    decision_id: str
    subject: str
    kind: str  # offer | no_offer
    no_offer_reason: str | None
    agent_message: str
    group: str  # treated | holdout
    explored: bool
    propensity: float
    greedy: str
    policy_action: str
    card: Mapping[str, Any] | None  # offer, variant, prices, firing rule, reasons, SHAP
    #: every candidate with its scores, plus no_offer; from 64 candidates on, 63 of them (the
    #: greedy, the chosen, the highest values), the rest counted in actions_omitted (named by
    #: reference in the record: docs/decisions.md#candidates-by-reference)
    actions: Sequence[Mapping[str, Any]]
    why_not: Sequence[Mapping[str, Any]]
    rule_errors: Sequence[Mapping[str, Any]]
    inputs: Mapping[str, Any]  # the feature snapshot decide() read
    contact: Mapping[str, Any]
    model_version: str
    catalog_version: str
    trace_id: str
    agent_id: str
    helpdesk: str
    actions_omitted: int = 0
    outcome: OutcomeSeen | None = None
    conversions: tuple[ConversionSeen, ...] = field(default=())

    @property
    def offer_id(self) -> str | None:
        return None if self.card is None else str(self.card["offer_id"])

    @property
    def variant_id(self) -> str | None:
        return None if self.card is None else str(self.card["variant_id"])

    @property
    def firing_rule(self) -> Mapping[str, Any] | None:
        return None if self.card is None else self.card["firing_rule"]

    @property
    def reasons(self) -> Sequence[Mapping[str, Any]]:
        return () if self.card is None else self.card["reasons"]

    def mentions(self, offer_id: str) -> bool:
        """Whether this decision weighed ``offer_id``: shown, a candidate, or ruled out."""
        return (
            self.offer_id == offer_id
            or any(str(a["action"]).split("/", 1)[0] == offer_id for a in self.actions)
            or any(w["offer_id"] == offer_id for w in self.why_not)
        )

    def document(self) -> dict[str, Any]:
        """The decision as JSON data (what ``audit why --json`` prints for it)."""
        return {
            "seq": self.seq,
            "decided_at": encode_time(self.decided_at),
            "decision_id": self.decision_id,
            "subject": self.subject,
            "kind": self.kind,
            "no_offer_reason": self.no_offer_reason,
            "agent_message": self.agent_message,
            "group": self.group,
            "explored": self.explored,
            "propensity": self.propensity,
            "greedy": self.greedy,
            "policy_action": self.policy_action,
            "offer_id": self.offer_id,
            "variant_id": self.variant_id,
            "firing_rule": self.firing_rule,
            "reasons": list(self.reasons),
            "card": self.card,
            "actions": list(self.actions),
            "actions_omitted": self.actions_omitted,
            "why_not": list(self.why_not),
            "rule_errors": list(self.rule_errors),
            "inputs": self.inputs,
            "contact": self.contact,
            "model_version": self.model_version,
            "catalog_version": self.catalog_version,
            "trace_id": self.trace_id,
            "agent_id": self.agent_id,
            "helpdesk": self.helpdesk,
            "outcome": None
            if self.outcome is None
            else {
                "seq": self.outcome.seq,
                "recorded_at": encode_time(self.outcome.recorded_at),
                "outcome": self.outcome.outcome,
                "decline_reason": self.outcome.decline_reason,
                "has_note": self.outcome.has_note,
                "agent_id": self.outcome.agent_id,
                "occurred_at": encode_time(self.outcome.occurred_at),
            },
            "conversions": [
                {
                    "seq": c.seq,
                    "recorded_at": encode_time(c.recorded_at),
                    "product": c.product,
                    "amount_minor": c.amount_minor,
                    "currency": c.currency,
                    "source": c.source,
                    "occurred_at": encode_time(c.occurred_at),
                }
                for c in self.conversions
            ],
        }


def why(
    con: duckdb.DuckDBPyConnection,
    subjects: Sequence[str],
    offer: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[DecisionWhy]:
    """Every decision for ``subjects`` (pseudonyms) decided in [since, until), in log order.

    With ``offer``, only decisions that weighed that offer (shown, a candidate, or ruled out
    with a why-not). Each comes with its outcome and the conversions linked to it: purchases
    by the same pseudonym of the offered product, occurring after the offer and not after a
    later offer of that product (last touch; the log itself holds no such link). Times are
    timezone-aware; ``since`` is inclusive and ``until`` exclusive.
    """
    wanted = _check_subjects(subjects)
    if offer is not None and (not isinstance(offer, str) or not offer):
        raise ValueError("offer: must be a non-empty offer id or None")
    low = _naive_utc("since", since) if since is not None else _NEVER
    high = _naive_utc("until", until) if until is not None else _FOREVER
    if low >= high:
        raise ValueError(f"since/until: since ({since}) must be before until ({until})")
    sql = _WHY_SQL.format(table=TABLE, subjects=", ".join("?" * len(wanted)))
    try:
        rows = con.execute(sql, [low, high, *wanted]).fetchall()
    except duckdb.Error as exc:
        raise AuditError(f"why: cannot read {TABLE}: {exc}") from exc
    return _assemble(rows, offer)


def document(
    decisions: Sequence[DecisionWhy],
    subjects: Sequence[str],
    offer: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """What ``offerdesk audit why --json`` prints and the audit API's Why returns."""
    return {
        "subjects": list(subjects),
        "offer": offer,
        "since": None if since is None else encode_time(since),
        "until": None if until is None else encode_time(until),
        "decision_count": len(decisions),
        "decisions": [d.document() for d in decisions],
    }


def _check_subjects(subjects: Sequence[str]) -> list[str]:
    if isinstance(subjects, str) or not isinstance(subjects, Sequence):
        raise TypeError("subjects: expected a list of pseudonyms")
    wanted = sorted(set(subjects))
    if not wanted:
        raise ValueError("subjects: at least one pseudonym is needed")
    for s in wanted:
        if not isinstance(s, str) or not _PSEUDONYM.fullmatch(s):
            raise ValueError(f"subjects: {s!r} is not a pseudonym (p_ + 26 base32 characters)")
    return wanted


def _naive_utc(name: str, when: datetime) -> datetime:
    if not isinstance(when, datetime) or when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{name}: must be a timezone-aware datetime, got {when!r}")
    return when.astimezone(UTC).replace(tzinfo=None)


def _assemble(rows: list[tuple[Any, ...]], offer: str | None) -> list[DecisionWhy]:
    decisions: list[DecisionWhy] = []
    outcomes: dict[str, OutcomeSeen] = {}
    conversions: dict[str, list[ConversionSeen]] = {}
    # Per (subject, product): every offer of it, in log order, for last-touch linking.
    offers: dict[tuple[str, str], list[tuple[datetime, str]]] = {}
    for seq, kind, recorded_at, subject, ref, product, record in rows:
        at = recorded_at.replace(tzinfo=UTC)
        if kind == "decision":
            if product is not None:
                offers.setdefault((subject, product), []).append((at, ref))
            if record is not None:
                decision = _decision(seq, at, json.loads(record))
                if offer is None or decision.mentions(offer):
                    decisions.append(decision)
            continue
        body = json.loads(record)["body"]
        if kind == "outcome":
            outcomes[body["decision_id"]] = OutcomeSeen(
                seq,
                at,
                body["outcome"],
                body["decline_reason"],
                bool(body["has_note"]),
                body["agent_id"],
                decode_time(body["occurred_at"]),
            )
            continue
        bought = ConversionSeen(
            seq,
            at,
            body["product"],
            int(body["amount_minor"]),
            body["currency"],
            body["source"],
            decode_time(body["occurred_at"]),
        )
        # The latest offer of this product logged before the purchase was recorded and made
        # no later than the purchase happened.
        for offered_at, decision_id in reversed(offers.get((subject, bought.product), [])):
            if offered_at <= bought.occurred_at:
                conversions.setdefault(decision_id, []).append(bought)
                break
    return [
        _with_follow_up(d, outcomes.get(d.decision_id), conversions.get(d.decision_id, []))
        for d in decisions
    ]


def _decision(seq: int, at: datetime, envelope: Mapping[str, Any]) -> DecisionWhy:
    b = envelope["body"]
    return DecisionWhy(
        seq=seq,
        decided_at=at,
        decision_id=b["decision_id"],
        subject=envelope["subject"],
        kind=b["kind"],
        no_offer_reason=b["no_offer_reason"],
        agent_message=b["agent_message"],
        group=b["group"],
        explored=bool(b["explored"]),
        propensity=float(b["propensity"]),
        greedy=b["greedy"],
        policy_action=b["policy_action"],
        card=b["card"],
        actions=b["actions"],
        why_not=b["why_not"],
        rule_errors=b["rule_errors"],
        inputs=b["inputs"],
        contact=b["contact"],
        model_version=b["model_version"],
        catalog_version=b["catalog_version"],
        trace_id=b["trace_id"],
        agent_id=b["agent_id"],
        helpdesk=b["helpdesk"],
        actions_omitted=int(b.get("actions_omitted", {}).get("count", 0)),
    )


def _with_follow_up(
    d: DecisionWhy, outcome: OutcomeSeen | None, bought: list[ConversionSeen]
) -> DecisionWhy:
    if outcome is None and not bought:
        return d
    return replace(d, outcome=outcome, conversions=tuple(bought))
