"""Canonical encoding, times, keyed hashes and the chain rule of audit/records.py."""

from __future__ import annotations

import decimal
import enum
import hashlib
import hmac
import json
import math
import struct
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.records import (
    GENESIS_HASH,
    NewRecord,
    StoredRecord,
    canonical_json,
    chain_hash,
    decode_time,
    encode_time,
    envelope,
    keyed_hash,
)

T0 = datetime(2026, 11, 23, 9, 30, 0, 123456, tzinfo=UTC)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def same_json(a: Any, b: Any) -> bool:
    """Equal with exact types: 1, 1.0 and True are three different values here."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    return bool(a == b)


def test_keys_are_sorted_and_output_is_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": [True, None], "é": "日本"}) == (
        '{"a":[true,null],"b":1,"é":"日本"}'.encode()
    )


def test_int_float_and_bool_stay_distinct() -> None:
    assert canonical_json(1) == b"1"
    assert canonical_json(1.0) == b"1.0"
    assert canonical_json(True) == b"true"
    assert canonical_json(-0.0) == b"-0.0"
    assert canonical_json(1e16) == b"1e+16"


def test_null_and_absent_are_distinct() -> None:
    assert canonical_json({"a": None}) != canonical_json({})


def test_tuples_encode_as_lists() -> None:
    assert canonical_json({"a": (1, 2)}) == b'{"a":[1,2]}'


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_float_round_trips_bit_exactly_through_record_bytes(x: float) -> None:
    stored = envelope(7, NewRecord("decision", T0, None, None, {"score": x}))
    back = json.loads(stored)["body"]["score"]
    assert type(back) is float
    assert struct.pack("<d", back) == struct.pack("<d", x)


@given(json_values)
def test_plain_json_round_trips_with_exact_types(value: Any) -> None:
    encoded = canonical_json(value)
    back = json.loads(encoded)
    normalised = json.loads(json.dumps(value))  # tuples → lists, nothing else changes
    assert same_json(back, normalised)
    assert canonical_json(back) == encoded


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused_naming_the_path(bad: float) -> None:
    with pytest.raises(ValueError, match=r"body\.scores\[1\]"):
        envelope(0, NewRecord("decision", T0, None, None, {"scores": [0.5, bad]}))


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (datetime(2026, 1, 1, tzinfo=UTC), "encode_time"),
        (date(2026, 1, 1), "ISO date"),
        (b"\x00", "hex or base64"),
        (decimal.Decimal("1.10"), "str and float"),
        (np.float64(0.5), r"\.item\(\)"),
        (np.int64(3), r"\.item\(\)"),
        (np.bool_(True), r"\.item\(\)"),
        ({1, 2}, "plain JSON"),
        (object(), "plain JSON"),
    ],
)
def test_other_types_are_refused_naming_the_path(value: object, hint: str) -> None:
    record = NewRecord("decision", T0, None, None, {"inputs": {"now": value}})
    with pytest.raises(TypeError, match=rf"body\.inputs\.now: .*{hint}"):
        envelope(0, record)


def test_subclasses_of_plain_types_are_refused() -> None:
    class Level(enum.IntEnum):
        HIGH = 1

    class Name(str):
        pass

    for value in (Level.HIGH, Name("x")):
        with pytest.raises(TypeError, match="subclasses are refused"):
            canonical_json({"x": value})


def test_non_str_keys_are_refused() -> None:
    with pytest.raises(TypeError, match=r"body\.m: key 1 is int"):
        envelope(0, NewRecord("decision", T0, None, None, {"m": {1: "a"}}))


def test_lone_surrogates_are_refused_naming_the_path() -> None:
    with pytest.raises(ValueError, match=r"body\.names\[0\]: .*surrogate"):
        envelope(0, NewRecord("decision", T0, None, None, {"names": ["\ud800"]}))


def test_cycles_fail_with_a_path_not_a_recursion_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="nested more than"):
        canonical_json(loop)


def test_naive_recorded_at_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        NewRecord("decision", datetime(2026, 1, 1), None, None, {})


@pytest.mark.parametrize("kind", ["Decision", "", "a" * 33, "de-cision", "décision"])
def test_bad_kinds_are_refused(kind: str) -> None:
    with pytest.raises(ValueError, match="kind"):
        NewRecord(kind, T0, None, None, {})


def test_kinds_are_open_to_new_names() -> None:
    assert NewRecord("model_promotion", T0, None, None, {}).kind == "model_promotion"


@pytest.mark.parametrize("subject", ["", "a\nb", "x" * 257])
def test_subject_must_be_an_identifier_not_free_text(subject: str) -> None:
    with pytest.raises(ValueError, match="subject"):
        NewRecord("decision", T0, subject, None, {})


def test_time_is_utc_with_six_digits() -> None:
    plus2 = timezone(timedelta(hours=2))
    assert encode_time(datetime(2026, 1, 1, 2, 0, tzinfo=plus2)) == "2026-01-01T00:00:00.000000Z"
    assert encode_time(datetime(999, 3, 4, 5, 6, 7, 8, tzinfo=UTC)) == "0999-03-04T05:06:07.000008Z"


@given(st.datetimes(timezones=st.timezones()).filter(lambda d: d.utcoffset() is not None))
def test_decode_time_is_the_strict_inverse(dt: datetime) -> None:
    try:
        text = encode_time(dt)
    except OverflowError:
        return  # the UTC instant is outside datetime's range (year 1 or 9999 with an offset)
    back = decode_time(text)
    # Compared in UTC: Python's == across zones is False for local times in a DST gap.
    assert back == dt.astimezone(UTC)
    assert back.tzinfo is UTC
    assert encode_time(back) == text


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00.000Z",
        "2026-01-01T00:00:00.000000+00:00",
        "2026-01-01 00:00:00.000000Z",
        "2026-02-30T00:00:00.000000Z",
        "２026-01-01T00:00:00.000000Z",
    ],
)
def test_decode_time_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError):
        decode_time(text)


def test_keyed_hash_is_hmac_sha256_over_domain_nul_value() -> None:
    key = bytes(range(32))
    expected = hmac.new(key, b"ticket\x00T-1001", hashlib.sha256).hexdigest()
    assert keyed_hash(key, "T-1001", domain="ticket") == expected
    assert keyed_hash(key, "T-1001", domain="request") != expected


def test_keyed_hash_refuses_short_keys_and_bad_domains() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        keyed_hash(b"short", "x", domain="ticket")
    with pytest.raises(ValueError, match="domain"):
        keyed_hash(bytes(32), "x", domain="a\x00b")


identifiers = st.none() | st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Cf", "Co", "Cn", "Zs")),
    min_size=1,
    max_size=20,
)


@given(
    st.integers(min_value=0, max_value=2**62),
    identifiers,
    identifiers,
    st.dictionaries(st.text(), json_values, max_size=4),
)
def test_spliced_envelope_equals_canonical_json_of_the_dict(
    seq: int, subject: str | None, ref: str | None, body: dict[str, Any]
) -> None:
    record = NewRecord("decision", T0, subject, ref, body)
    expected = canonical_json(
        {
            "v": 1,
            "seq": seq,
            "kind": "decision",
            "at": encode_time(T0),
            "subject": subject,
            "ref": ref,
            "body": body,
        }
    )
    assert envelope(seq, record) == expected


def test_chain_hash_is_sha256_of_prev_and_record_digest() -> None:
    record = b'{"x":1}'
    inner = hashlib.sha256(record).digest()
    assert chain_hash(GENESIS_HASH, record) == hashlib.sha256(bytes(32) + inner).digest()
    with pytest.raises(ValueError):
        chain_hash(b"short", record)


# The test vector published in docs/audit-format.md: if this changes, the format changed.
VECTOR_RECORD = NewRecord(
    "decision",
    datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    "p_aaaaaaaaaaaaaaaaaaaaaaaaaa",
    "3f1c",
    {"offer": "fibre_1g", "p_accept": 0.25, "reasons": ["tenure", "usage"], "count": 3},
)
VECTOR_BYTES = (
    b'{"at":"2026-01-02T03:04:05.000006Z","body":{"count":3,"offer":"fibre_1g",'
    b'"p_accept":0.25,"reasons":["tenure","usage"]},"kind":"decision","ref":"3f1c",'
    b'"seq":0,"subject":"p_aaaaaaaaaaaaaaaaaaaaaaaaaa","v":1}'
)


def test_published_vector_matches_the_code_and_the_docs() -> None:
    data = envelope(0, VECTOR_RECORD)
    assert data == VECTOR_BYTES
    digest = chain_hash(GENESIS_HASH, data).hex()
    second = chain_hash(bytes.fromhex(digest), envelope(1, VECTOR_RECORD)).hex()
    doc = (Path(__file__).resolve().parents[1] / "docs" / "audit-format.md").read_text()
    assert VECTOR_BYTES.decode() in doc
    assert digest in doc
    assert second in doc


def test_stored_record_body_is_parsed_from_its_bytes() -> None:
    data = envelope(0, VECTOR_RECORD)
    stored = StoredRecord(0, "decision", T0, None, None, data, GENESIS_HASH, bytes(32))
    assert stored.body["p_accept"] == 0.25
