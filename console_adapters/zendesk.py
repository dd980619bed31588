"""Zendesk: a trigger ("Ticket status changed to Solved") notifies a webhook with a JSON body
the admin writes from placeholders (docs/adapters/zendesk.md has the exact body).

Signature (developer.zendesk.com/documentation/webhooks/verifying): the headers
``X-Zendesk-Webhook-Signature`` = base64(HMAC-SHA256(signing secret as UTF-8, timestamp +
raw body)) and ``X-Zendesk-Webhook-Signature-Timestamp`` (ISO-8601). Zendesk states no
tolerance; we refuse a timestamp more than 5 minutes from now.

Request key: ``zendesk:<ticket id>:<updated_at>``. Zendesk delivers at least once and retries:
a retry carries the same body, so the same key and the same decision. A ticket solved again
after it was reopened has a new ``updated_at``, so a new key and a new decision.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from offerdesk.v1 import offerdesk_pb2 as pb

from console_adapters.adapter import (
    Event,
    Rejected,
    header,
    iso_time,
    json_object,
    number,
    same,
    text,
    timestamp,
)

SIGNATURE = "x-zendesk-webhook-signature"
SIGNATURE_TIMESTAMP = "x-zendesk-webhook-signature-timestamp"
#: Zendesk's `via` channel names → the contract's channels (matched by substring, lower case)
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
    ("web", pb.CHANNEL_WEB),
    ("api", pb.CHANNEL_WEB),
)
#: Zendesk's satisfaction ratings → CSAT 1..5 (a number 1..5 is taken as it is)
_RATINGS = {"good": 5, "bad": 1}


def sign(secret: str, stamp: str, body: bytes) -> str:
    """The X-Zendesk-Webhook-Signature value Zendesk sends for this timestamp and body."""
    mac = hmac.new(secret.encode("utf-8"), stamp.encode("utf-8") + body, hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


class ZendeskAdapter:
    """Zendesk Support webhooks (trigger → "Notify active webhook")."""

    name = "zendesk"

    def __init__(
        self,
        signing_secret: str,
        *,
        tolerance: timedelta = timedelta(minutes=5),
        external_id_prefix: str = "",
    ) -> None:
        if not signing_secret:
            raise ValueError("the Zendesk webhook's signing secret is required")
        self._secret = signing_secret
        self._tolerance = tolerance
        self._prefix = external_id_prefix

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        stamp = header(headers, SIGNATURE_TIMESTAMP)
        given = header(headers, SIGNATURE)
        try:
            sent = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            raise Rejected(401, SIGNATURE_TIMESTAMP, "not an ISO-8601 time") from None
        if sent.tzinfo is None or abs(now - sent) > self._tolerance:
            raise Rejected(
                401,
                SIGNATURE_TIMESTAMP,
                f"more than {self._tolerance.total_seconds():.0f} s from now (a replay?)",
            )
        if not same(sign(self._secret, stamp, body).encode(), given.encode()):
            raise Rejected(401, SIGNATURE, "does not match the body (wrong secret?)")

    def parse(self, headers: Mapping[str, str], body: bytes) -> Event:
        event = json_object(body)
        status = text(event, "status").lower()
        if status != "solved":
            return Event(None, f"ticket status is {status!r}, not solved")
        ticket_id = text(event, "ticket_id")
        # The solve time, and part of the request key: it is in the body, so a retry (which
        # Zendesk signs again, with a new timestamp) is the same request.
        updated_at = iso_time(event, "updated_at")
        ticket = pb.Ticket(
            id=ticket_id,
            category=_snake(text(event, "category", required=False)),
            product_area=_snake(text(event, "product_area", required=False)),
            channel=_channel(text(event, "via", required=False)),
            resolved_at=timestamp(updated_at),
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
        return Event(
            pb.DecideRequest(
                request_key=f"zendesk:{ticket_id}:{text(event, 'updated_at')}",
                helpdesk=self.name,
                ticket=ticket,
                customer=pb.Customer(external_id=self._prefix + text(event, "requester_id")),
                agent_id=text(event, "assignee_id"),
                locale=text(event, "locale", required=False) or "en-US",
            )
        )


def _snake(value: str) -> str:
    return "_".join(value.lower().replace("-", " ").split())


def _channel(via: str) -> int:
    lowered = via.lower()
    return next((channel for name, channel in _CHANNELS if name in lowered), 0)


def _tags(event: Mapping[str, Any]) -> list[str]:
    raw = event.get("tags")
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):  # {{ticket.tags}} renders space-separated
        return raw.split()
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
    if isinstance(raw, str) and raw.strip().lower() in ("", "offered", "unoffered"):
        return None
    value = number(event, "csat")
    if value is None:
        return None
    if value != int(value) or not 1 <= value <= 5:
        raise Rejected(400, "csat", f"must be 1..5, good or bad, got {raw!r}")
    return int(value)


__all__ = ["SIGNATURE", "SIGNATURE_TIMESTAMP", "ZendeskAdapter", "sign"]
