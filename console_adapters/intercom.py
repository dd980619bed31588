"""Intercom: the `conversation.admin.closed` webhook decides; a Canvas Kit inbox app shows the
card in the conversation's details and records the teammate's click.

Signatures (Intercom's docs and its support engineers, ../shared/reference/helpdesks.md):
- webhooks: ``X-Hub-Signature: sha1=<hex HMAC-SHA1(client secret, raw body)>``;
- Canvas Kit requests: ``X-Body-Signature: <hex HMAC-SHA256(client secret, raw body)>``.
Neither has a timestamp: replays are stopped by the request key (a replay returns the decision
already made and logs nothing), and Canvas Kit requests only read or record an outcome.

Request key: ``intercom:<conversation id>:<last close time>``. A retry of the notification
carries the same conversation: the same key. A conversation reopened and closed again has a new
close time: a new decision. The Canvas Kit app never decides: it shows the conversation's
latest decision (GetDecision by ticket), so both paths agree on one decision per close.

Nothing here does I/O: the gateway calls the service and sends the canvases built here.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from offerdesk.v1 import offerdesk_pb2 as pb

from console_adapters.adapter import (
    Event,
    Rejected,
    channel_of,
    header,
    json_object,
    same,
    snake,
    text,
    timestamp,
)

WEBHOOK_SIGNATURE = "x-hub-signature"
CANVAS_SIGNATURE = "x-body-signature"
CLOSED = "conversation.admin.closed"
_KINDS = {"ADD_ON": "Add-on", "UPGRADE": "Upgrade", "CROSS_SELL": "Cross-sell"}
DECLINE_REASONS = (
    ("not_interested", "Not interested"),
    ("too_expensive", "Too expensive"),
    ("bad_timing", "Bad timing"),
    ("already_has_it", "Already has it"),
    ("needs_approval", "Needs approval"),
    ("customer_upset", "Customer upset"),
    ("other", "Other"),
)


def sign_webhook(secret: str, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), body, hashlib.sha1).hexdigest()
    return f"sha1={mac}"


def sign_canvas(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_canvas(secret: str, headers: Mapping[str, str], body: bytes) -> None:
    """Raise Rejected(401) unless a Canvas Kit request was signed with the client secret."""
    given = header(headers, CANVAS_SIGNATURE).strip().lower()
    if not same(sign_canvas(secret, body).encode(), given.encode()):
        raise Rejected(401, CANVAS_SIGNATURE, "does not match the body (wrong client secret?)")


def request_key(conversation: Mapping[str, Any]) -> str:
    """The key of a conversation's latest close, from the conversation model."""
    conversation_id = text(conversation, "id", path="conversation.")
    statistics = conversation.get("statistics")
    closed = statistics.get("last_close_at") if isinstance(statistics, dict) else None
    if not isinstance(closed, int) or isinstance(closed, bool) or closed <= 0:
        raise Rejected(
            400, "conversation.statistics.last_close_at", "required: Unix seconds of the close"
        )
    return f"intercom:{conversation_id}:{closed}"


class IntercomAdapter:
    """Intercom webhooks (the app's client secret signs them)."""

    name = "intercom"

    def __init__(self, client_secret: str, *, external_id_prefix: str = "") -> None:
        if not client_secret:
            raise ValueError("the Intercom app's client secret is required")
        self.client_secret = client_secret
        self._prefix = external_id_prefix

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        given = header(headers, WEBHOOK_SIGNATURE).strip().lower()
        if not same(sign_webhook(self.client_secret, body).encode(), given.encode()):
            raise Rejected(401, WEBHOOK_SIGNATURE, "does not match the body (wrong secret?)")

    def parse(self, headers: Mapping[str, str], body: bytes) -> Event:
        envelope = json_object(body)
        topic = text(envelope, "topic")
        if topic != CLOSED:
            return Event(None, f"topic {topic!r} is not {CLOSED}")
        data = envelope.get("data")
        item = data.get("item") if isinstance(data, dict) else None
        if not isinstance(item, dict):
            raise Rejected(400, "data.item", "required: the conversation")
        return Event(self.decide_request(item))

    def decide_request(self, conversation: Mapping[str, Any]) -> pb.DecideRequest:
        key = request_key(conversation)
        closed = datetime.fromtimestamp(conversation["statistics"]["last_close_at"], UTC)
        contacts = conversation.get("contacts")
        listed = contacts.get("contacts") if isinstance(contacts, dict) else None
        if not isinstance(listed, list) or not listed or not isinstance(listed[0], dict):
            raise Rejected(400, "conversation.contacts.contacts", "required: the customer")
        attributes = conversation.get("custom_attributes") or {}
        if not isinstance(attributes, dict):
            raise Rejected(400, "conversation.custom_attributes", "must be an object")
        source = conversation.get("source")
        ticket = pb.Ticket(
            id=text(conversation, "id", path="conversation."),
            category=snake(str(attributes.get("category", ""))),
            product_area=snake(str(attributes.get("product_area", ""))),
            # Intercom conversations start in the Messenger (chat) unless the source says
            # email, push or a social network.
            channel=channel_of(
                str(source.get("type", "")) if isinstance(source, dict) else "",
                default=pb.CHANNEL_CHAT,
            ),
            resolved_at=timestamp(closed),
            tags=_tags(conversation),
            custom_fields={
                str(k): str(v)
                for k, v in attributes.items()
                if k not in ("category", "product_area") and isinstance(v, str | int | float)
            },
        )
        rating = conversation.get("conversation_rating")
        score = rating.get("rating") if isinstance(rating, dict) else None
        if isinstance(score, int) and not isinstance(score, bool) and 1 <= score <= 5:
            ticket.csat = score
        return pb.DecideRequest(
            request_key=key,
            helpdesk=self.name,
            ticket=ticket,
            customer=pb.Customer(
                external_id=self._prefix + text(listed[0], "id", path="conversation.contacts.")
            ),
            agent_id=str(conversation.get("admin_assignee_id") or "unassigned"),
            locale="en-US",
        )


def _tags(conversation: Mapping[str, Any]) -> list[str]:
    tags = conversation.get("tags")
    listed = tags.get("tags") if isinstance(tags, dict) else None
    if not isinstance(listed, list):
        return []
    return [t["name"] for t in listed if isinstance(t, dict) and isinstance(t.get("name"), str)]


# -- Canvas Kit: the card as components (developers.intercom.com/docs/canvas-kit) ----------


def _text(value: str, style: str = "paragraph") -> dict[str, Any]:
    return {"type": "text", "text": value, "style": style}


#: ISO 4217 currencies whose minor unit is not a hundredth
_DIGITS = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "OMR": 3}


def _money(m: Mapping[str, Any] | None) -> str:
    if not m:
        return ""
    currency = str(m.get("currency", ""))
    digits = _DIGITS.get(currency, 2)
    amount = int(m.get("amount_minor", 0)) / 10**digits
    return f"{amount:,.{digits}f} {currency}".strip()


def canvas(components: list[dict[str, Any]], stored: Mapping[str, str]) -> dict[str, Any]:
    return {"canvas": {"content": {"components": components}, "stored_data": dict(stored)}}


def card_canvas(decision: Mapping[str, Any] | None, token: str) -> dict[str, Any]:
    """The canvas for a decision (its DecideResponse JSON), or for none made yet."""
    if decision is None:
        return canvas([_text("Offers appear here once the conversation is closed.", "muted")], {})
    stored = {"decision_id": decision["decision_id"], "token": token}
    if decision.get("kind") != "OFFER" or not decision.get("card"):
        return canvas(
            [
                _text("No offer this time", "header"),
                _text(decision.get("agent_message", "")),
            ],
            stored,
        )
    card = decision["card"]
    variant = card.get("variant", {})
    components: list[dict[str, Any]] = [
        _text(_KINDS.get(card.get("offer_kind", ""), ""), "muted"),
        _text(card.get("offer_name", ""), "header"),
        _text(f"{variant.get('name', '')}: {_money(variant.get('price'))}"),
        {"type": "divider"},
        _text("Say", "muted"),
        *(_text(f"• {point}") for point in card.get("talking_points", [])),
        _text("Why this customer", "muted"),
        *(
            _text(f"{i}. {reason['text']}")
            for i, reason in enumerate(card.get("reasons", [])[:3], start=1)
        ),
        _text(f"Rule: {card.get('firing_rule', {}).get('description', '')}", "muted"),
    ]
    if decision.get("outcome", "OUTCOME_UNSPECIFIED") != "OUTCOME_UNSPECIFIED":
        components.append(_text(f"Recorded: {decision['outcome'].lower()}.", "muted"))
        return canvas(components, stored)
    components.append(
        {
            "type": "button",
            "id": "accept",
            "label": "Accept",
            "style": "primary",
            "action": {"type": "submit"},
        }
    )
    components.append(
        {
            "type": "button",
            "id": "decline",
            "label": "Decline",
            "style": "secondary",
            "action": {"type": "submit"},
        }
    )
    return canvas(components, stored)


def decline_canvas(stored: Mapping[str, str]) -> dict[str, Any]:
    """Asks for the decline reason."""
    return canvas(
        [
            {
                "type": "dropdown",
                "id": "decline_reason",
                "label": "Why did the customer decline?",
                "options": [
                    {"type": "option", "id": value, "text": label}
                    for value, label in DECLINE_REASONS
                ],
            },
            {
                "type": "button",
                "id": "record_decline",
                "label": "Record decline",
                "style": "primary",
                "action": {"type": "submit"},
            },
        ],
        stored,
    )


def recorded_canvas(what: str, stored: Mapping[str, str]) -> dict[str, Any]:
    return canvas([_text(f"Recorded: {what}.", "header")], stored)


def error_canvas(problem: str, stored: Mapping[str, str]) -> dict[str, Any]:
    return canvas([_text(f"Not recorded: {problem}", "error")], stored)


__all__ = [
    "CANVAS_SIGNATURE",
    "CLOSED",
    "DECLINE_REASONS",
    "WEBHOOK_SIGNATURE",
    "IntercomAdapter",
    "card_canvas",
    "decline_canvas",
    "error_canvas",
    "recorded_canvas",
    "request_key",
    "sign_canvas",
    "sign_webhook",
    "verify_canvas",
]
