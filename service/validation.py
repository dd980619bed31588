"""Validation: every request message becomes a checked, typed value once, at the edge.

Each problem raises InvalidArgument naming the field (`ticket.resolved_at: ...`) before anything
is looked up or written. Only fields the catalog declares (tags, custom fields) survive, so
undeclared data never reaches a rule, a model or the log.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from offerdesk.v1 import offerdesk_pb2 as pb

from service.errors import InvalidArgument

_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_CODE = re.compile(r"^[a-z0-9][a-z0-9_]{0,63}$")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$")
#: the catalog's id format (service.catalog), which product names follow
_PRODUCT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_DECISION_ID = re.compile(r"^d_[0-9a-f]{32}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
#: how far a reported time may run ahead of our clock
CLOCK_SKEW = timedelta(minutes=5)
#: tickets resolved longer ago than this are not decided on
MAX_TICKET_AGE = timedelta(days=30)

CHANNELS = {
    pb.CHANNEL_EMAIL: "email",
    pb.CHANNEL_CHAT: "chat",
    pb.CHANNEL_PHONE: "phone",
    pb.CHANNEL_WEB: "web",
    pb.CHANNEL_MESSAGING: "messaging",
    pb.CHANNEL_SOCIAL: "social",
}
OUTCOMES = {pb.ACCEPTED: "accepted", pb.DECLINED: "declined", pb.NOT_PRESENTED: "not_presented"}
DECLINE_REASONS = {
    v: pb.DeclineReason.Name(v).lower()
    for v in pb.DeclineReason.values()
    if v != pb.DECLINE_REASON_UNSPECIFIED
}


@dataclass(frozen=True)
class DecideCommand:
    request_key: str
    payload_hash: str
    helpdesk: str
    ticket_id: str
    ticket: Mapping[str, Any]  # the declared ticket values decide() reads
    resolved_at: datetime
    external_id: str
    agent_id: str
    locale: str


@dataclass(frozen=True)
class OutcomeCommand:
    decision_id: str
    outcome: str
    decline_reason: str | None
    decline_note: str
    agent_id: str
    occurred_at: datetime


@dataclass(frozen=True)
class ConversionCommand:
    transaction_id: str
    payload_hash: str
    source: str
    external_id: str
    product: str
    amount_minor: int
    currency: str
    occurred_at: datetime


def payload_hash(message: Any) -> str:
    """Identity of a request's content, for idempotency: same key + other payload is refused."""
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()


def decide_command(
    req: pb.DecideRequest, *, now: datetime, tags: Sequence[str], fields: Sequence[str]
) -> DecideCommand:
    key = _match(req.request_key, _KEY, "request_key", "1-255 printable ASCII characters")
    helpdesk = _match(req.helpdesk, _NAME, "helpdesk", "lower-case [a-z0-9_-], e.g. 'zendesk'")
    if not req.HasField("ticket"):
        raise InvalidArgument("ticket", "required")
    t = req.ticket
    ticket_id = _text(t.id, "ticket.id", 128)
    category = _match(t.category, _CODE, "ticket.category", "lower-case snake_case, e.g. 'billing'")
    area = _match(
        t.product_area or "general",
        _CODE,
        "ticket.product_area",
        "lower-case snake_case, e.g. 'storage'",
    )
    if t.channel not in CHANNELS:
        raise InvalidArgument(
            "ticket.channel", "required: one of " + ", ".join(pb.Channel.Name(c) for c in CHANNELS)
        )
    resolved_at = _time(t, "resolved_at", "ticket.resolved_at", now)
    if now - resolved_at > MAX_TICKET_AGE:
        raise InvalidArgument("ticket.resolved_at", f"more than {MAX_TICKET_AGE.days} days ago")
    ticket: dict[str, Any] = {
        "category": category,
        "product_area": area,
        "channel": CHANNELS[t.channel],
    }
    if t.HasField("csat"):
        if not 1 <= t.csat <= 5:
            raise InvalidArgument("ticket.csat", f"must be 1..5, got {t.csat}")
        ticket["csat"] = int(t.csat)
    if t.HasField("sentiment"):
        if not (math.isfinite(t.sentiment) and -1.0 <= t.sentiment <= 1.0):
            raise InvalidArgument("ticket.sentiment", f"must be within -1..1, got {t.sentiment}")
        ticket["sentiment"] = float(t.sentiment)
    if not 0 <= t.reopen_count <= 1000:
        raise InvalidArgument("ticket.reopen_count", f"must be 0..1000, got {t.reopen_count}")
    ticket["reopen_count"] = int(t.reopen_count)
    if len(t.tags) > 200:
        raise InvalidArgument("ticket.tags", "at most 200 tags")
    for i, tag in enumerate(t.tags):
        _text(tag, f"ticket.tags[{i}]", 128)
    declared = set(tags)
    ticket["tags"] = sorted({tag for tag in t.tags if tag in declared})
    if len(t.custom_fields) > 200:
        raise InvalidArgument("ticket.custom_fields", "at most 200 fields")
    for k, v in t.custom_fields.items():
        _text(k, "ticket.custom_fields", 128)
        if len(v) > 1024:
            raise InvalidArgument(f"ticket.custom_fields[{k!r}]", "longer than 1024 characters")
    ticket["fields"] = {k: t.custom_fields[k] for k in sorted(fields) if k in t.custom_fields}
    if not req.HasField("customer"):
        raise InvalidArgument("customer", "required")
    external_id = _text(req.customer.external_id, "customer.external_id", 128)
    if len(req.customer.attributes) > 50:
        raise InvalidArgument("customer.attributes", "at most 50 attributes")
    for k, v in req.customer.attributes.items():
        _text(k, "customer.attributes", 64)
        if len(v) > 256:
            raise InvalidArgument(f"customer.attributes[{k!r}]", "longer than 256 characters")
    return DecideCommand(
        key,
        payload_hash(req),
        helpdesk,
        ticket_id,
        ticket,
        resolved_at,
        external_id,
        _agent(req.agent_id, "agent_id"),
        _match(req.locale, _LOCALE, "locale", "a BCP 47 tag such as 'en-US'"),
    )


def outcome_command(req: pb.RecordOutcomeRequest, *, now: datetime) -> OutcomeCommand:
    decision_id = _match(
        req.decision_id,
        _DECISION_ID,
        "decision_id",
        "a decision id as returned by Decide (d_ + 32 hex)",
    )
    if req.outcome not in OUTCOMES:
        raise InvalidArgument("outcome", "required: ACCEPTED, DECLINED or NOT_PRESENTED")
    reason = None
    if req.outcome == pb.DECLINED:
        if req.decline_reason not in DECLINE_REASONS:
            raise InvalidArgument("decline_reason", "required when the outcome is DECLINED")
        reason = DECLINE_REASONS[req.decline_reason]
    elif req.decline_reason != pb.DECLINE_REASON_UNSPECIFIED:
        raise InvalidArgument("decline_reason", "only allowed when the outcome is DECLINED")
    elif req.decline_note:
        raise InvalidArgument("decline_note", "only allowed when the outcome is DECLINED")
    if len(req.decline_note) > 500:
        raise InvalidArgument("decline_note", "longer than 500 characters")
    return OutcomeCommand(
        decision_id,
        OUTCOMES[req.outcome],
        reason,
        req.decline_note,
        _agent(req.agent_id, "agent_id"),
        _time(req, "occurred_at", "occurred_at", now),
    )


def conversion_command(req: pb.RecordConversionRequest, *, now: datetime) -> ConversionCommand:
    txn = _text(req.transaction_id, "transaction_id", 128)
    source = _match(req.source, _NAME, "source", "lower-case [a-z0-9_-], e.g. 'billing'")
    if not req.HasField("customer"):
        raise InvalidArgument("customer", "required")
    external_id = _text(req.customer.external_id, "customer.external_id", 128)
    product = _match(req.product, _PRODUCT, "product", "a catalog product name, e.g. 'storage'")
    if not req.HasField("amount"):
        raise InvalidArgument("amount", "required")
    if req.amount.amount_minor <= 0:
        raise InvalidArgument("amount.amount_minor", "must be positive")
    currency = _match(req.amount.currency, _CURRENCY, "amount.currency", "an ISO 4217 code")
    return ConversionCommand(
        txn,
        payload_hash(req),
        source,
        external_id,
        product,
        int(req.amount.amount_minor),
        currency,
        _time(req, "occurred_at", "occurred_at", now),
    )


def _text(value: str, field: str, limit: int) -> str:
    if not value or not value.strip():
        raise InvalidArgument(field, "required")
    if len(value) > limit:
        raise InvalidArgument(field, f"longer than {limit} characters")
    if any(ord(c) < 32 for c in value):
        raise InvalidArgument(field, "contains control characters")
    return value


def _match(value: str, pattern: re.Pattern[str], field: str, expected: str) -> str:
    if not value:
        raise InvalidArgument(field, "required")
    if not pattern.match(value):
        raise InvalidArgument(field, f"must be {expected}, got {value[:64]!r}")
    return value


def _agent(value: str, field: str) -> str:
    value = _text(value, field, 128)
    if "@" in value:
        raise InvalidArgument(field, "must be the helpdesk's opaque agent id, not an email address")
    return value


def _time(message: Any, name: str, field: str, now: datetime) -> datetime:
    if not message.HasField(name):
        raise InvalidArgument(field, "required")
    ts = getattr(message, name)
    if not 0 <= ts.nanos < 1_000_000_000 or not -62135596800 <= ts.seconds <= 253402300799:
        raise InvalidArgument(field, "not a valid timestamp")
    at = datetime.fromtimestamp(ts.seconds, tz=UTC) + timedelta(microseconds=ts.nanos // 1000)
    if at > now + CLOCK_SKEW:
        raise InvalidArgument(field, f"in the future ({at.isoformat()})")
    return at
