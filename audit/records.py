"""The one definition of what an audit record is, byte for byte, and how records chain.

A stored record is ``canonical_json(envelope)``, where the envelope is
``{"v": 1, "seq": n, "kind": k, "at": encode_time(t), "subject": s|null, "ref": r|null,
"body": {...}}``; ``seq`` is 0-based over the whole log. Records chain as
``hash[n] = SHA-256(prev_hash[n] || SHA-256(record_bytes[n]))`` with ``prev_hash[0]`` = 32
zero bytes and ``prev_hash[n] = hash[n-1]`` (``||`` is byte concatenation; hashes are raw
32-byte digests). docs/audit-format.md spells this out for outside auditors.

Nothing here does I/O, and nothing may ever encode a value it was not given exactly:
anything that is not plain JSON (datetimes, bytes, Decimal, numpy scalars) is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

ENVELOPE_VERSION = 1
GENESIS_HASH = bytes(32)

# The kinds in use today. The set is open: a kind is any name matching KIND_PATTERN, so a
# later feature adds a kind without a format change. Documented here so readers of the log
# know what to expect:
#   decision    one Decide call: inputs snapshot, candidates, chosen offer (or none), reasons
#   outcome     the agent's accept/decline of a decision
#   conversion  a purchase attributed (or not) to an earlier decision
#   consent     a change of a customer's contact consent
#   deployment  the model and catalog versions the service started serving
#   erasure     a customer's pseudonym was erased from the vault (the chain keeps the rows)
#   retention   a retention cut: which records' content was removed (audit.retention)
#   audit_access  one answer of the audit API: who asked what
KINDS = frozenset(
    {
        "decision",
        "outcome",
        "conversion",
        "consent",
        "deployment",
        "erasure",
        "retention",
        "audit_access",
    }
)
KIND_PATTERN = re.compile(r"[a-z_]{1,32}")

# subject and ref are pseudonyms and keyed hashes, never free text: bounded and printable.
_IDENTIFIER_MAX_CHARS = 256
# Deep enough for any real body; shallow enough that a cyclic structure fails with a path
# instead of a RecursionError.
_MAX_DEPTH = 64
_TIME_PATTERN = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\.([0-9]{6})Z"
)
_HINTS = {
    "datetime": "encode it with audit.records.encode_time()",
    "date": "write it as an ISO date string",
    "bytes": "write it as hex or base64 text",
    "bytearray": "write it as hex or base64 text",
    "Decimal": "decide between str and float explicitly",
}


def canonical_json(obj: Any) -> bytes:
    """Encode plain JSON data canonically: sorted keys, no spaces, UTF-8, exact numbers.

    Allowed: None, bool, int, float (finite), str, list/tuple and dict with str keys, by
    exact type (subclasses such as numpy.float64 or enums are refused). Raises TypeError for
    any other type and ValueError for NaN/infinity, both naming the path (``body.inputs.now``).
    """
    return _canonical_text(obj, "").encode("utf-8")


def _canonical_text(obj: Any, path: str) -> str:
    _check(obj, path, 0)
    # json's float repr is Python's shortest round-trip repr, so 1.0 stays 1.0 and every
    # finite float reads back bit-exactly; allow_nan=False is a second guard behind _check.
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(_unencodable_path(obj, path)) from None
    return text


def _where(path: str) -> str:
    return path or "(root)"


def _check(value: Any, path: str, depth: int) -> None:
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is str:
        return
    if kind is float:
        if not math.isfinite(value):
            raise ValueError(
                f"{_where(path)}: {value!r} is not a finite number (JSON has no NaN or infinity)"
            )
        return
    if depth >= _MAX_DEPTH:
        raise ValueError(f"{_where(path)}: nested more than {_MAX_DEPTH} deep (a cycle?)")
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(
                    f"{_where(path)}: key {key!r} is {type(key).__name__}; keys must be str"
                )
            _check(item, f"{path}.{key}" if path else key, depth + 1)
        return
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]", depth + 1)
        return
    raise TypeError(_refusal(value, path))


def _refusal(value: Any, path: str) -> str:
    kind = type(value)
    name = f"{kind.__module__}.{kind.__qualname__}"
    if kind.__module__.split(".")[0] == "numpy":
        hint = "convert it with .item() (numpy scalars must not be encoded implicitly)"
    elif isinstance(value, int | float | str):
        hint = "pass the plain int, float or str value (subclasses are refused)"
    else:
        hint = _HINTS.get(kind.__name__, "convert it to plain JSON data first")
    return f"{_where(path)}: {name} is not allowed in an audit record; {hint}"


def _unencodable_path(value: Any, path: str) -> str:
    def bad(text: str) -> bool:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False

    if isinstance(value, str):
        return f"{_where(path)}: string is not valid Unicode (lone surrogate)"
    if isinstance(value, dict):
        for key, item in value.items():
            if bad(key):
                return f"{_where(path)}: key {key!r} is not valid Unicode (lone surrogate)"
            child = f"{path}.{key}" if path else key
            if _contains_unencodable(item):
                return _unencodable_path(item, child)
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if _contains_unencodable(item):
                return _unencodable_path(item, f"{path}[{index}]")
    return f"{_where(path)}: contains text that is not valid Unicode"


def _contains_unencodable(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def encode_time(dt: datetime) -> str:
    """Format a timezone-aware datetime as UTC ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (always 6 digits)."""
    if not isinstance(dt, datetime):
        raise TypeError(f"expected a datetime, got {type(dt).__name__}")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt.isoformat()}: audit times must be timezone-aware")
    u = dt.astimezone(UTC)
    # Explicit fields, not strftime: %Y is not zero-padded for years < 1000 on glibc.
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T"
        f"{u.hour:02d}:{u.minute:02d}:{u.second:02d}.{u.microsecond:06d}Z"
    )


def decode_time(text: str) -> datetime:
    """Parse exactly what encode_time writes; return a UTC-aware datetime."""
    match = _TIME_PATTERN.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not an audit time (YYYY-MM-DDTHH:MM:SS.ffffffZ)")
    try:
        year, month, day, hour, minute, second, micro = (int(part) for part in match.groups())
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid time: {exc}") from None


def keyed_hash(key: bytes, value: str, *, domain: str) -> str:
    """Hex HMAC-SHA256 of ``domain + "\\x00" + value`` (UTF-8) under ``key``.

    The domain separates purposes (ticket ids, request keys, billing ids) so one key can
    serve all of them without a value of one purpose matching a value of another.
    """
    if not isinstance(key, bytes) or len(key) < 16:
        raise ValueError("keyed_hash needs a secret key of at least 16 bytes")
    if not isinstance(domain, str) or not domain or "\x00" in domain:
        raise ValueError("domain must be a non-empty str without NUL")
    if not isinstance(value, str):
        raise TypeError(f"value must be str, got {type(value).__name__}")
    message = domain.encode("utf-8") + b"\x00" + value.encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def chain_hash(prev_hash: bytes, record: bytes) -> bytes:
    """``SHA-256(prev_hash || SHA-256(record))``: the hash of one link of the chain."""
    if len(prev_hash) != 32:
        raise ValueError(f"prev_hash must be 32 bytes, got {len(prev_hash)}")
    return hashlib.sha256(prev_hash + hashlib.sha256(record).digest()).digest()


def check_kind(kind: str) -> str:
    """Return ``kind`` if it is a valid record kind name, else raise ValueError."""
    if not isinstance(kind, str) or KIND_PATTERN.fullmatch(kind) is None:
        raise ValueError(f"kind {kind!r} must match [a-z_]{{1,32}}")
    return kind


def _check_identifier(name: str, value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str or None, got {type(value).__name__}")
    if not 1 <= len(value) <= _IDENTIFIER_MAX_CHARS or not value.isprintable():
        raise ValueError(
            f"{name} must be 1-{_IDENTIFIER_MAX_CHARS} printable characters "
            "(a pseudonym or keyed hash, never free text)"
        )


@dataclass(frozen=True, slots=True)
class NewRecord:
    """A record to append; the store assigns its seq and chain hashes."""

    kind: str
    recorded_at: datetime
    subject: str | None
    ref: str | None
    body: dict[str, Any]

    def __post_init__(self) -> None:
        check_kind(self.kind)
        encode_time(self.recorded_at)
        _check_identifier("subject", self.subject)
        _check_identifier("ref", self.ref)
        if not isinstance(self.body, dict):
            raise TypeError(f"body must be a dict, got {type(self.body).__name__}")


@dataclass(frozen=True, slots=True)
class PreparedRecord:
    """A NewRecord encoded up front (in the caller's thread): only its seq is still open."""

    kind: str
    recorded_at: datetime  # UTC, exactly what ``at`` says
    at: str
    subject: str | None
    ref: str | None
    body_json: str

    def envelope(self, seq: int) -> bytes:
        """The canonical record bytes for this record at ``seq``."""
        # Spliced in sorted key order (at, body, kind, ref, seq, subject, v) instead of
        # re-encoding a dict, so the writer thread does no JSON work; tests pin that this
        # equals canonical_json() of the envelope dict.
        return (
            f'{{"at":"{self.at}","body":{self.body_json},"kind":"{self.kind}",'
            f'"ref":{_json_str_or_null(self.ref)},"seq":{seq:d},'
            f'"subject":{_json_str_or_null(self.subject)},"v":{ENVELOPE_VERSION}}}'
        ).encode()


def _json_str_or_null(value: str | None) -> str:
    return "null" if value is None else json.dumps(value, ensure_ascii=False)


def prepare(record: NewRecord) -> PreparedRecord:
    """Encode a record's body now, so a bad body fails in the caller, naming its path."""
    if not isinstance(record, NewRecord):
        raise TypeError(f"expected NewRecord, got {type(record).__name__}")
    at = encode_time(record.recorded_at)
    return PreparedRecord(
        kind=record.kind,
        recorded_at=decode_time(at),
        at=at,
        subject=record.subject,
        ref=record.ref,
        body_json=_canonical_text(record.body, "body"),
    )


def envelope(seq: int, record: NewRecord) -> bytes:
    """The canonical bytes of ``record`` stored at ``seq`` (same as the store writes)."""
    return prepare(record).envelope(seq)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A committed record: its bytes, its place in the chain and its query projections."""

    seq: int
    kind: str
    recorded_at: datetime  # UTC-aware
    subject: str | None
    ref: str | None
    record: bytes  # the canonical JSON bytes that were hashed; b"" once cut
    prev_hash: bytes
    hash: bytes

    @property
    def cut(self) -> bool:
        """Whether a retention cut removed this record's content (audit.retention)."""
        return not self.record

    @property
    def body(self) -> dict[str, Any]:
        """The record's body, parsed from the stored bytes (ValueError once cut)."""
        if not self.record:
            raise ValueError(f"record {self.seq}: its content was removed by a retention cut")
        return cast(dict[str, Any], json.loads(self.record)["body"])

    def as_row(self) -> tuple[Any, ...]:
        """The table row: (seq, kind, recorded_at naive UTC, subject, ref, record, prev, hash)."""
        return (
            self.seq,
            self.kind,
            self.recorded_at.astimezone(UTC).replace(tzinfo=None),
            self.subject,
            self.ref,
            self.record.decode("utf-8"),
            self.prev_hash,
            self.hash,
        )


def parse_envelope(record: bytes) -> Mapping[str, Any]:
    """Parse record bytes as JSON without accepting NaN/Infinity (which JSON does not have)."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    parsed = json.loads(record, parse_constant=refuse)
    if not isinstance(parsed, dict):
        raise ValueError("record is not a JSON object")
    return parsed
