"""What every helpdesk adapter is: verify the sender on the raw body, then map the event.

An adapter is one small module: a class with a ``name``, ``verify`` (the helpdesk's own
signature scheme, on the exact bytes received, in constant time) and ``parse`` (the "ticket
solved" event → a ``DecideRequest``, or an ignored event). It talks to nothing: the gateway
does the I/O and calls the service over the gRPC contract. Adapters import ``offerdesk.v1``
and never the service's internals.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from google.protobuf.timestamp_pb2 import Timestamp
from offerdesk.v1 import offerdesk_pb2 as pb


class Rejected(Exception):
    """A request the gateway refuses, with the HTTP status and the field at fault.

    400 malformed (``field`` names it), 401 not from the helpdesk (bad or stale signature).
    Nothing reaches the service.
    """

    def __init__(self, status: int, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.status = status
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class Event:
    """A verified event: a Decide to make, or a reason it is none of ours (``ignored``)."""

    request: pb.DecideRequest | None
    ignored: str | None = None


class Adapter(Protocol):
    """One helpdesk. ``headers`` are lower-cased; ``body`` is the raw bytes received."""

    name: str

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        """Raise Rejected(401, ...) unless the request was sent by this helpdesk."""
        ...

    def parse(self, headers: Mapping[str, str], body: bytes) -> Event:
        """Map a verified event; raise Rejected(400, field, ...) for a malformed one."""
        ...


def same(expected: bytes, given: bytes) -> bool:
    """Constant-time comparison of two signatures."""
    return hmac.compare_digest(expected, given)


def header(headers: Mapping[str, str], name: str) -> str:
    """A required header's value, or Rejected(401) naming it (an unsigned request)."""
    value = headers.get(name.lower())
    if not value:
        raise Rejected(401, name, "missing")
    return value


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or Rejected(400, "body", ...)."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected(400, "body", f"not JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise Rejected(400, "body", "must be a JSON object")
    return parsed


def text(obj: Mapping[str, Any], key: str, *, required: bool = True, path: str = "") -> str:
    """A string field (numbers are taken as their decimal text: helpdesks send ids either way)."""
    name = f"{path}{key}"
    value = obj.get(key)
    if value is None or value == "":
        if required:
            raise Rejected(400, name, "required")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Rejected(400, name, f"must be a string, got {type(value).__name__}")
    return str(value).strip()


def number(obj: Mapping[str, Any], key: str, *, path: str = "") -> float | None:
    """An optional number, given as a JSON number or as its text (placeholders render as text)."""
    name = f"{path}{key}"
    value = obj.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise Rejected(400, name, "must be a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise Rejected(400, name, f"must be a number, got {value!r}") from None


def timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC).replace(tzinfo=None))
    return ts


def iso_time(obj: Mapping[str, Any], key: str, *, path: str = "") -> datetime:
    """A required ISO-8601 time with a zone (``Z`` or an offset)."""
    name = f"{path}{key}"
    raw = text(obj, key, path=path)
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise Rejected(400, name, f"must be an ISO-8601 time, got {raw!r}") from None
    if parsed.tzinfo is None:
        raise Rejected(400, name, "must carry a time zone (Z or an offset)")
    return parsed


def check_fresh(sent: datetime, now: datetime, tolerance: timedelta, name: str) -> None:
    """Refuse (401, naming the header) a signature timestamp too far from now: a replay."""
    if sent.tzinfo is None or abs(now - sent) > tolerance:
        raise Rejected(
            401, name, f"more than {tolerance.total_seconds():.0f} s from now (a replay?)"
        )


def trigger_event(
    helpdesk: str, body: bytes, *, solved: Collection[str], external_id_prefix: str = ""
) -> Event:
    """A "ticket solved" event in the trigger body we document for helpdesks whose admins
    write the body from placeholders (Zendesk, Freshdesk, ServiceNow): every key is the same.

    ``solved``: the status values (lower case) that make a decision; any other is ignored.
    Request key: ``<helpdesk>:<ticket_id>:<updated_at>``: a retry carries the same body, so the
    same key; a ticket solved again after it was reopened has a new ``updated_at``.
    """
    event = json_object(body)
    status = text(event, "status").lower()
    if status not in solved:
        return Event(None, f"ticket status is {status!r}, not {' or '.join(sorted(solved))}")
    ticket_id = text(event, "ticket_id")
    updated_at = iso_time(event, "updated_at")  # the solve time: in the body, so retries agree
    ticket = solved_ticket(event, ticket_id, updated_at, channel=text(event, "via", required=False))
    return Event(
        pb.DecideRequest(
            request_key=f"{helpdesk}:{ticket_id}:{text(event, 'updated_at')}",
            helpdesk=helpdesk,
            ticket=ticket,
            customer=pb.Customer(external_id=external_id_prefix + text(event, "requester_id")),
            agent_id=text(event, "assignee_id"),
            locale=text(event, "locale", required=False) or "en-US",
        )
    )


# The ticket fields every trigger body we document shares (Zendesk, Freshdesk, ServiceNow):
# category, product_area, tags, fields, csat, sentiment, reopens.

#: a helpdesk's channel name → the contract's channel (matched by substring, lower case)
_CHANNELS = (
    ("chat", pb.CHANNEL_CHAT),
    ("messaging", pb.CHANNEL_MESSAGING),
    ("whatsapp", pb.CHANNEL_MESSAGING),
    ("email", pb.CHANNEL_EMAIL),
    ("mail", pb.CHANNEL_EMAIL),
    ("phone", pb.CHANNEL_PHONE),
    ("voice", pb.CHANNEL_PHONE),
    ("twitter", pb.CHANNEL_SOCIAL),
    ("facebook", pb.CHANNEL_SOCIAL),
    ("social", pb.CHANNEL_SOCIAL),
    ("portal", pb.CHANNEL_WEB),
    ("web", pb.CHANNEL_WEB),
    ("api", pb.CHANNEL_WEB),
)
#: satisfaction ratings given as words → CSAT 1..5 (a number 1..5 is taken as it is)
_RATINGS = {"good": 5, "bad": 1}
_NO_RATING = ("", "offered", "unoffered")


def solved_ticket(
    event: Mapping[str, Any], ticket_id: str, resolved_at: datetime, *, channel: str
) -> pb.Ticket:
    """The contract's Ticket from a documented trigger body's shared keys."""
    ticket = pb.Ticket(
        id=ticket_id,
        category=snake(text(event, "category", required=False)),
        product_area=snake(text(event, "product_area", required=False)),
        channel=channel_of(channel),
        resolved_at=timestamp(resolved_at),
        tags=_tags(event),
        custom_fields=_fields(event),
        reopen_count=int(number(event, "reopens") or 0),
    )
    csat = _csat(event)
    if csat is not None:
        ticket.csat = csat
    sentiment = number(event, "sentiment")
    if sentiment is not None:
        ticket.sentiment = sentiment
    return ticket


def snake(value: str) -> str:
    """ "Feature Request" → feature_request (the catalog's category names)."""
    return "_".join(value.lower().replace("-", " ").split())


def channel_of(name: str, default: int = pb.CHANNEL_UNSPECIFIED) -> int:
    """The contract's channel for a helpdesk's channel name (UNSPECIFIED, which the service
    refuses naming ticket.channel, when no word matches and no default is given)."""
    lowered = name.lower()
    return next((channel for word, channel in _CHANNELS if word in lowered), default)


def _tags(event: Mapping[str, Any]) -> list[str]:
    raw = event.get("tags")
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):  # placeholders render tags space- or comma-separated
        return raw.replace(",", " ").split()
    if isinstance(raw, list) and all(isinstance(t, str) for t in raw):
        return list(raw)
    raise Rejected(400, "tags", "must be a space-separated string or a list of strings")


def _fields(event: Mapping[str, Any]) -> dict[str, str]:
    raw = event.get("fields")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise Rejected(400, "fields", "must be an object of field name → value")
    return {str(k): text(raw, k, required=False, path="fields.") for k in raw}


def _csat(event: Mapping[str, Any]) -> int | None:
    raw = event.get("csat")
    if isinstance(raw, str) and raw.strip().lower() in _RATINGS:
        return _RATINGS[raw.strip().lower()]
    if isinstance(raw, str) and raw.strip().lower() in _NO_RATING:
        return None
    value = number(event, "csat")
    if value is None:
        return None
    if value != int(value) or not 1 <= value <= 5:
        raise Rejected(400, "csat", f"must be 1..5, good or bad, got {raw!r}")
    return int(value)


__all__ = [
    "Adapter",
    "Event",
    "Rejected",
    "channel_of",
    "check_fresh",
    "header",
    "iso_time",
    "json_object",
    "number",
    "same",
    "snake",
    "solved_ticket",
    "text",
    "timestamp",
    "trigger_event",
]
