"""Salesforce Service Cloud: an Outbound Message on Case close decides; an Apex action
(Strategy Builder "Generate") shows the decision as a Recommendation; a feedback endpoint
records the agent's reaction.

Outbound Messages are SOAP and **unsigned** (developer.salesforce.com, outbound messaging
security). So the gateway requires both a secret URL path (/salesforce/outbound/<path
secret>, compared in constant time) and the organisation id in the message (compared in
constant time), and expects TLS in front. It answers only once every notification in the
message is recorded, with the exact SOAP acknowledgement; otherwise Salesforce retries (with
backoff, for up to 24 hours).

Request key: ``salesforce:<Case Id>:<ClosedDate>``. A retried message carries the same case
and close date: the same decision. A case reopened and closed again has a new ClosedDate: a new
decision. The Apex action shows the case's latest decision (GetDecision by ticket) and never
decides itself.

XML is parsed with defusedxml: the body comes from the internet before anything else is
trusted, and the standard library's parsers expand entities.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from xml.etree.ElementTree import Element

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException
from offerdesk.v1 import offerdesk_pb2 as pb

from console_adapters.adapter import Rejected, channel_of, snake, timestamp

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
OUTBOUND = "http://soap.sforce.com/2005/09/outbound"
SOBJECT = "urn:sobject.enterprise.soap.sforce.com"
#: the acknowledgement Salesforce waits for (the WSDL's notificationsResponse/Ack)
ACK = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    f'<soapenv:Envelope xmlns:soapenv="{SOAP}"><soapenv:Body>'
    f'<notificationsResponse xmlns="{OUTBOUND}"><Ack>true</Ack></notificationsResponse>'
    "</soapenv:Body></soapenv:Envelope>"
).encode()
CLOSED = frozenset({"closed"})


@dataclass(frozen=True)
class Notification:
    """One notification of an Outbound Message, mapped to a Decide (or ignored)."""

    notification_id: str
    request: pb.DecideRequest | None
    ignored: str | None = None


def request_key(case_id: str, closed_date: str) -> str:
    return f"salesforce:{case_id}:{closed_date}"


def _child(element: Element, name: str, namespace: str) -> Element | None:
    return element.find(f"{{{namespace}}}{name}")


def _field(case: Element, name: str, *, required: bool = True) -> str:
    found = _child(case, name, SOBJECT)
    value = (found.text or "").strip() if found is not None else ""
    if required and not value:
        raise Rejected(400, f"sObject.{name}", "required")
    return value


class SalesforceAdapter:
    """Outbound Messages of one Salesforce organisation."""

    name = "salesforce"

    def __init__(
        self, organization_id: str, path_secret: str, *, external_id_prefix: str = ""
    ) -> None:
        self._org = organization_id
        self._path = path_secret
        self._prefix = external_id_prefix

    def verify_path(self, given: str) -> None:
        if not hmac.compare_digest(self._path.encode(), given.encode()):
            raise Rejected(401, "path", "not this gateway's Salesforce path")

    def parse(self, body: bytes) -> list[Notification]:
        """The message's notifications; Rejected(401) for another organisation."""
        try:
            root = ElementTree.fromstring(body)
        except (ElementTree.ParseError, DefusedXmlException) as exc:
            raise Rejected(400, "body", f"not a SOAP message ({exc})") from None
        soap_body = _child(root, "Body", SOAP)
        message = _child(soap_body, "notifications", OUTBOUND) if soap_body is not None else None
        if message is None:
            raise Rejected(400, "body", "no Body/notifications element")
        org = _child(message, "OrganizationId", OUTBOUND)
        given = (org.text or "").strip() if org is not None else ""
        if not hmac.compare_digest(given[:15].encode(), self._org[:15].encode()):
            raise Rejected(401, "OrganizationId", "not this gateway's organisation")
        notifications = message.findall(f"{{{OUTBOUND}}}Notification")
        if not notifications:
            raise Rejected(400, "Notification", "required: at least one")
        return [self._notification(n) for n in notifications]

    def _notification(self, notification: Element) -> Notification:
        ident = _child(notification, "Id", OUTBOUND)
        notification_id = (ident.text or "").strip() if ident is not None else ""
        if not notification_id:
            raise Rejected(400, "Notification.Id", "required")
        case = _child(notification, "sObject", OUTBOUND)
        if case is None:
            raise Rejected(400, "Notification.sObject", "required: the Case")
        status = _field(case, "Status").lower()
        if status not in CLOSED:
            return Notification(notification_id, None, f"case status is {status!r}, not closed")
        case_id = _field(case, "Id")
        closed_text = _field(case, "ClosedDate")
        try:
            closed = datetime.fromisoformat(closed_text.replace("Z", "+00:00"))
        except ValueError:
            raise Rejected(
                400, "sObject.ClosedDate", f"not an ISO-8601 time: {closed_text!r}"
            ) from None
        if closed.tzinfo is None:
            raise Rejected(400, "sObject.ClosedDate", "must carry a time zone")
        ticket = pb.Ticket(
            id=case_id,
            category=snake(_field(case, "Type", required=False)),
            product_area=snake(_field(case, "Product_Area__c", required=False)),
            channel=channel_of(_field(case, "Origin", required=False)),
            resolved_at=timestamp(closed),
        )
        return Notification(
            notification_id,
            pb.DecideRequest(
                request_key=request_key(case_id, closed_text),
                helpdesk=self.name,
                ticket=ticket,
                customer=pb.Customer(external_id=self._prefix + _field(case, "ContactId")),
                agent_id=_field(case, "OwnerId"),
                locale="en-US",
            ),
        )


def recommendation(decision: Mapping[str, Any], token: str) -> dict[str, Any]:
    """What the Apex Generate action turns into one Recommendation (fields of that object:
    Name 80, Description 255, AcceptanceLabel and RejectionLabel 80, ExternalId)."""
    card = decision.get("card") or {}
    if decision.get("kind") != "OFFER" or not card:
        return {
            "offer": False,
            "message": decision.get("agent_message", "")[:255],
            "decision_id": decision["decision_id"],
        }
    reasons = "; ".join(r["text"] for r in card.get("reasons", [])[:3])
    variant = card.get("variant", {})
    description = f"{variant.get('name', '')}. " + (f"Why: {reasons}." if reasons else "")
    return {
        "offer": True,
        "Name": card.get("offer_name", "")[:80],
        "Description": description.strip()[:255],
        "AcceptanceLabel": "Accept",
        "RejectionLabel": "Decline",
        # The feedback call sends it back: the decision and its outcome token, together.
        "ExternalId": f"{decision['decision_id']}.{token}",
        "talking_points": card.get("talking_points", []),
        "rule": card.get("firing_rule", {}).get("description", ""),
        "decision_id": decision["decision_id"],
        "outcome": decision.get("outcome", "OUTCOME_UNSPECIFIED"),
    }


__all__ = [
    "ACK",
    "CLOSED",
    "Notification",
    "SalesforceAdapter",
    "recommendation",
    "request_key",
]
