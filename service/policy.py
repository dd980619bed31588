"""Contact policy: consent, caps, cooldowns, blackouts and the pause after an erasure —
restraint as pure functions.

Reads a customer's contact history (offers shown and what came of them, from the audit log),
the day their data was last erased, and the decision time; never reads a clock or a database.
Guardrails always win over the model: anything blocked here is never shown, exploration included.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from service.catalog import ContactPolicySpec

DAY = timedelta(days=1)
#: the longest window a contact feature looks back over (declines_90d)
FEATURE_LOOKBACK_DAYS = 90


@dataclass(frozen=True)
class ContactEvent:
    """An offer made to the customer and, once known, what came of it."""

    decision_id: str
    offer_id: str
    offered_at: datetime
    outcome: str | None = None  # "accepted" | "declined" | "not_presented"
    outcome_at: datetime | None = None

    @property
    def counts_as_contact(self) -> bool:
        """An offer the agent never presented is not a contact."""
        return self.outcome != "not_presented"

    def to_record(self) -> dict[str, Any]:
        from audit.records import encode_time

        return {
            "decision_id": self.decision_id,
            "offer_id": self.offer_id,
            "offered_at": encode_time(self.offered_at),
            "outcome": self.outcome,
            "outcome_at": None if self.outcome_at is None else encode_time(self.outcome_at),
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> ContactEvent:
        from audit.records import decode_time

        return cls(
            r["decision_id"],
            r["offer_id"],
            decode_time(r["offered_at"]),
            r["outcome"],
            None if r["outcome_at"] is None else decode_time(r["outcome_at"]),
        )


@dataclass(frozen=True)
class Block:
    """Why the policy says no: a code for the response, the rule id, and plain words."""

    code: str  # NoOfferReason / WhyNotCode name
    rule_id: str
    detail: str


def lookback_days(policy: ContactPolicySpec) -> int:
    """How much history decide() needs: the longest window of the policy or the features."""
    return max(
        policy.window_days,
        policy.decline_cooldown_days,
        policy.offer_cooldown_days,
        FEATURE_LOOKBACK_DAYS,
    )


def relevant_history(
    events: Iterable[ContactEvent], policy: ContactPolicySpec, now: datetime
) -> tuple[ContactEvent, ...]:
    """The events decide() reads (and the log records): within the lookback, oldest first."""
    since = now - lookback_days(policy) * DAY
    return tuple(
        sorted(
            (e for e in events if since <= e.offered_at <= now),
            key=lambda e: (e.offered_at, e.decision_id),
        )
    )


def contact_summary(history: Sequence[ContactEvent], now: datetime) -> dict[str, Any]:
    """The contact features the models and rules read (unknown values absent)."""
    shown = [e for e in history if e.counts_as_contact and e.offered_at <= now]
    summary: dict[str, Any] = {
        "offers_30d": sum(1 for e in shown if now - e.offered_at <= 30 * DAY),
        "declines_90d": sum(
            1
            for e in shown
            if e.outcome == "declined"
            and e.outcome_at is not None
            and now - e.outcome_at <= 90 * DAY
        ),
    }
    if shown:
        last = max(e.offered_at for e in shown)
        summary["days_since_last_offer"] = round((now - last) / DAY, 6)
    return summary


def consent_block(policy: ContactPolicySpec, consent: bool | None) -> Block | None:
    """An explicit opt-out always blocks; unknown consent blocks when consent is required."""
    if consent is False or (policy.require_consent and consent is not True):
        return Block(
            "OPTED_OUT", "contact.require_consent", "The customer has not consented to offers."
        )
    return None


def blackout_block(policy: ContactPolicySpec, now: datetime) -> Block | None:
    for b in policy.blackouts:
        if b.start <= now < b.end:
            return Block("BLACKOUT", b.id, b.description)
    return None


def limit_block(
    policy: ContactPolicySpec, history: Sequence[ContactEvent], now: datetime
) -> Block | None:
    """Caps on the customer as a whole: offers per window and the cooldown after a decline."""
    shown = [e for e in history if e.counts_as_contact and e.offered_at <= now]
    in_window = sum(1 for e in shown if now - e.offered_at < policy.window_days * DAY)
    if in_window >= policy.max_offers:
        return Block(
            "CONTACT_LIMIT",
            "contact.max_offers",
            f"Already {in_window} offer(s) in the last {policy.window_days} days "
            f"(limit {policy.max_offers}).",
        )
    for e in shown:
        if (
            e.outcome == "declined"
            and e.outcome_at is not None
            and timedelta(0) <= now - e.outcome_at < policy.decline_cooldown_days * DAY
        ):
            return Block(
                "CONTACT_LIMIT",
                "contact.decline_cooldown",
                f"Declined an offer less than {policy.decline_cooldown_days} days ago.",
            )
    return None


def offer_block(
    policy: ContactPolicySpec, history: Sequence[ContactEvent], offer_id: str, now: datetime
) -> Block | None:
    """Per-offer cooldown: the same offer is not made again too soon."""
    for e in history:
        if (
            e.offer_id == offer_id
            and e.counts_as_contact
            and timedelta(0) <= now - e.offered_at < policy.offer_cooldown_days * DAY
        ):
            return Block(
                "CONTACT_POLICY",
                "contact.offer_cooldown",
                f"Offered less than {policy.offer_cooldown_days} days ago.",
            )
    return None


def erasure_pause_end(policy: ContactPolicySpec, erased_on: date) -> datetime | None:
    """When offers resume after an erasure on ``erased_on`` (UTC day): midnight UTC after the
    policy's paused days, so the pause is never shorter than configured. None: no pause."""
    days = policy.erasure_suppress_days
    if days == 0:
        return None
    return datetime(erased_on.year, erased_on.month, erased_on.day, tzinfo=UTC) + (days + 1) * DAY


def relevant_erasure(
    erased_at: datetime | None, policy: ContactPolicySpec, now: datetime
) -> date | None:
    """What decide() reads (and the log records) about an erasure of this customer id: its day
    while it can still pause offers, else None. The day, never the time, so a new decision
    cannot be joined to its erasure record by an exact timestamp."""
    if erased_at is None:
        return None
    erased_on = erased_at.astimezone(UTC).date()
    end = erasure_pause_end(policy, erased_on)
    return erased_on if end is not None and now < end else None


def erasure_horizon(policy: ContactPolicySpec, now: datetime) -> datetime:
    """Erasures before this time can no longer pause an offer under ``policy``: their entry in
    the vault's erased list is no longer needed."""
    return now - (policy.erasure_suppress_days + 1) * DAY


def erasure_block(policy: ContactPolicySpec, erased_on: date | None, now: datetime) -> Block | None:
    """After an erasure the customer's history is gone; a pause stands in for the caps and
    cooldowns it held, so erasing cannot be used to reset them."""
    if erased_on is None:
        return None
    end = erasure_pause_end(policy, erased_on)
    if end is None or now >= end:
        return None
    return Block(
        "CONTACT_LIMIT",
        "contact.after_erasure",
        f"Offers are paused until {end:%Y-%m-%d} after this customer's data was erased.",
    )
