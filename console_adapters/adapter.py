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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
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


__all__ = [
    "Adapter",
    "Event",
    "Rejected",
    "header",
    "iso_time",
    "json_object",
    "number",
    "same",
    "text",
    "timestamp",
]
