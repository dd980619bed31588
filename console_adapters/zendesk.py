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

from console_adapters.adapter import Event, Rejected, check_fresh, header, same, trigger_event

SIGNATURE = "x-zendesk-webhook-signature"
SIGNATURE_TIMESTAMP = "x-zendesk-webhook-signature-timestamp"


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
        check_fresh(sent, now, self._tolerance, SIGNATURE_TIMESTAMP)
        if not same(sign(self._secret, stamp, body).encode(), given.encode()):
            raise Rejected(401, SIGNATURE, "does not match the body (wrong secret?)")

    def parse(self, headers: Mapping[str, str], body: bytes) -> Event:
        return trigger_event(self.name, body, solved={"solved"}, external_id_prefix=self._prefix)


__all__ = ["SIGNATURE", "SIGNATURE_TIMESTAMP", "ZendeskAdapter", "sign"]
