"""ServiceNow: an after-update business rule on `incident` (state changes to Resolved) sends
the incident with the script include we ship (console_adapters/servicenow/), signed.

ServiceNow has no signed webhooks of its own, so the script signs: headers
``X-Offerdesk-Timestamp`` (Unix seconds) and ``X-Offerdesk-Signature`` = base64(HMAC-SHA256(
secret, timestamp + "." + raw body)), computed with GlideCertificateEncryption.generateMac.
Timestamps more than 5 minutes from now are refused.

Body: the same trigger keys as every helpdesk whose body we write (`ticket_id` is the
incident's sys_id, `status` is the state's value). Request key:
``servicenow:<sys_id>:<updated_at>``. RESTMessageV2 does not retry by itself; the script
include retries on 429 and 5xx after Retry-After, with the same body: the same decision.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from console_adapters.adapter import Event, Rejected, check_fresh, header, same, trigger_event

TIMESTAMP = "x-offerdesk-timestamp"
SIGNATURE = "x-offerdesk-signature"
#: the Resolved state: its value in the incident state model (6) or its label
SOLVED = frozenset({"6", "resolved"})


def sign(secret: str, stamp: int, body: bytes) -> str:
    """What the shipped script include sends as X-Offerdesk-Signature."""
    mac = hmac.new(secret.encode("utf-8"), f"{stamp}.".encode() + body, hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


class ServiceNowAdapter:
    """ServiceNow incidents, sent and signed by the shipped business rule and script include."""

    name = "servicenow"

    def __init__(
        self,
        secret: str,
        *,
        tolerance: timedelta = timedelta(minutes=5),
        external_id_prefix: str = "",
    ) -> None:
        self._secret = secret
        self._tolerance = tolerance
        self._prefix = external_id_prefix

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        raw = header(headers, TIMESTAMP)
        given = header(headers, SIGNATURE)
        if not raw.isdigit():
            raise Rejected(401, TIMESTAMP, "must be Unix seconds")
        check_fresh(datetime.fromtimestamp(int(raw), UTC), now, self._tolerance, TIMESTAMP)
        if not same(sign(self._secret, int(raw), body).encode(), given.encode()):
            raise Rejected(401, SIGNATURE, "does not match the body (wrong secret?)")

    def parse(self, headers: Mapping[str, str], body: bytes) -> Event:
        return trigger_event(self.name, body, solved=SOLVED, external_id_prefix=self._prefix)


__all__ = ["SIGNATURE", "SOLVED", "TIMESTAMP", "ServiceNowAdapter", "sign"]
