"""Any helpdesk we do not ship: Standard Webhooks (standardwebhooks.com) in, the contract's own
JSON out. Point a workflow, an automation or a small script of yours at it.

Signature (the Standard Webhooks spec): headers ``webhook-id``, ``webhook-timestamp`` (Unix
seconds) and ``webhook-signature`` = space-separated ``v1,<base64 HMAC-SHA256(key,
"<id>.<timestamp>.<raw body>")>`` entries (several during a key rotation). The key is the
base64 after ``whsec_`` in the secret. Timestamps more than 5 minutes from now are refused.
Written here rather than taken from the `standardwebhooks` package: the check is a dozen lines
with the spec's test vector, and that package brings an HTTP client and four more packages.

Body: a ``DecideRequest`` in protobuf's JSON mapping (lowerCamelCase or the proto's names),
without ``requestKey``. Request key: ``<helpdesk>:<webhook-id>``: the spec keeps the id across
retries of one message, so a retry returns the same decision.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from google.protobuf import json_format
from offerdesk.v1 import offerdesk_pb2 as pb

from console_adapters.adapter import Event, Rejected, check_fresh, header, same

ID, TIMESTAMP, SIGNATURE = "webhook-id", "webhook-timestamp", "webhook-signature"
_PREFIX = "whsec_"


def key_of(secret: str) -> bytes:
    """The HMAC key of a ``whsec_…`` secret (the prefix is optional)."""
    try:
        return base64.b64decode(secret.removeprefix(_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the secret must be whsec_ followed by base64") from None


def sign(secret: str, message_id: str, stamp: int, body: bytes) -> str:
    """The webhook-signature value (one v1 entry) for this message."""
    content = f"{message_id}.{stamp}.".encode() + body
    mac = hmac.new(key_of(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


class GenericAdapter:
    """Standard Webhooks with the contract's JSON; ``name`` is the helpdesk it stands for."""

    def __init__(
        self, name: str, secret: str, *, tolerance: timedelta = timedelta(minutes=5)
    ) -> None:
        self.name = name
        self._secret = secret
        key_of(secret)  # refuse a malformed secret at start, not on the first request
        self._tolerance = tolerance

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        message_id = header(headers, ID)
        raw_stamp = header(headers, TIMESTAMP)
        given = header(headers, SIGNATURE)
        if not raw_stamp.isdigit():
            raise Rejected(401, TIMESTAMP, "must be Unix seconds")
        stamp = int(raw_stamp)
        check_fresh(datetime.fromtimestamp(stamp, UTC), now, self._tolerance, TIMESTAMP)
        expected = sign(self._secret, message_id, stamp, body).encode()
        if not any(same(expected, entry.encode()) for entry in given.split()):
            raise Rejected(401, SIGNATURE, "no v1 signature matches the body (wrong secret?)")

    def parse(self, headers: Mapping[str, str], body: bytes) -> Event:
        request = pb.DecideRequest()
        try:
            json_format.Parse(body, request)
        except json_format.ParseError as exc:
            raise Rejected(400, "body", str(exc)) from None
        if request.request_key:
            raise Rejected(400, "requestKey", "set by the gateway from webhook-id; leave it out")
        if request.helpdesk and request.helpdesk != self.name:
            raise Rejected(400, "helpdesk", f"must be {self.name!r} (this endpoint) or left out")
        request.helpdesk = self.name
        request.request_key = f"{self.name}:{headers[ID]}"
        return Event(request)


__all__ = ["ID", "SIGNATURE", "TIMESTAMP", "GenericAdapter", "key_of", "sign"]
