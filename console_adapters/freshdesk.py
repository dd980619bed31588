"""Freshdesk: an automation rule ("Ticket is updated", "Status is changed to Resolved") with
the action "Trigger webhook", whose JSON content the admin writes from placeholders
(docs/adapters/freshdesk.md has the exact body: the same keys as every trigger body).

Freshdesk does not sign webhooks. The rule sends a custom header we ask for,
``X-Offerdesk-Token: <the tenant's token>``, over HTTPS, and the gateway compares it in
constant time. There is no timestamp, so replays are stopped only by the request key: a replay
returns the decision already made and logs nothing.

Request key: ``freshdesk:<ticket id>:<updated_at>``. Freshdesk retries a failed delivery after
5, 30 and 60 minutes with the same body: the same key, the same decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from console_adapters.adapter import Event, Rejected, header, same, trigger_event

TOKEN = "x-offerdesk-token"
#: Freshdesk's Resolved status, as {{ticket.status}} renders it or as its number (4)
SOLVED = frozenset({"resolved", "4"})


class FreshdeskAdapter:
    """Freshdesk automation-rule webhooks, authenticated by a shared token header."""

    name = "freshdesk"

    def __init__(self, token: str, *, external_id_prefix: str = "") -> None:
        self._token = token.encode()
        self._prefix = external_id_prefix

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        if not same(self._token, header(headers, TOKEN).encode()):
            raise Rejected(401, TOKEN, "not this gateway's Freshdesk token")

    def parse(self, headers: Mapping[str, str], body: bytes) -> Event:
        return trigger_event(self.name, body, solved=SOLVED, external_id_prefix=self._prefix)


__all__ = ["SOLVED", "TOKEN", "FreshdeskAdapter"]
