"""Retention cuts: the one definition of what a cut removes, what it records, and how a
verifier checks it. Pure functions, no I/O (the store runs the cut; verify checks it).

A cut removes the content of records older than their kind's retention period and keeps
their place in the chain. The row stays with its ``seq``, ``kind``, ``recorded_at``,
``prev_hash`` and ``hash``; ``record`` becomes the empty string (never a valid record, so a
cut row cannot be mistaken for one) and ``subject`` and ``ref`` become NULL. The chain
hashes, and so every Merkle root, checkpoint and proof, are unchanged.

In the same transaction the store appends a chained ``retention`` record (the cut record)
that says what it cut: the cutoff per kind, how many rows, and a digest over the cut rows.
It cuts every row before it that is not cut yet and whose kind has a cutoff and whose
``recorded_at`` is before that cutoff. A verifier can then check every cut row:

- it must be covered: the first cut record after it whose cutoff for its kind lies after
  its ``recorded_at`` is the one that cut it (any earlier one would have);
- each cut record's count and digest must equal those of the cut rows so assigned to it.

A row emptied by hand, a cut row restored or relabelled (its kind or time changed), or a cut
record removed or edited, each breaks one of these. The cut record, like every record, is
then sealed by the next signed checkpoint.

The kinds that prove what the log is (``deployment``, ``erasure``, ``consent`` and
``retention`` itself) are never cut.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from audit.records import decode_time, encode_time

#: the kind of the chained cut record
CUT_KIND = "retention"
#: ``record`` of a cut row: empty, which no real record can be
CUT_RECORD = ""
#: never cut: they prove which model and catalog served, which customers were erased, what
#: was cut, and (consent) that no offer went to an opted-out customer: a consent record is
#: written only when consent changes, so a decision made today may rest on one years old
PROTECTED_KINDS = frozenset({"deployment", "erasure", "consent", CUT_KIND})


@dataclass(frozen=True, slots=True)
class CutRow:
    """What stays of a cut record, and what a cut record's digest covers."""

    seq: int
    kind: str
    recorded_at: datetime  # aware, UTC
    hash: bytes


@dataclass(frozen=True, slots=True)
class Cut:
    """A cut record, as the verifier reads it."""

    seq: int
    cutoffs: Mapping[str, datetime]  # kind → records recorded before this are cut
    count: int
    digest: str


def check_days(retention_days: Mapping[str, int]) -> None:
    """Refuse a retention setting that would cut what must stay; the error names the kind."""
    for kind, days in retention_days.items():
        if kind in PROTECTED_KINDS:
            raise ValueError(
                f"retention_days.{kind}: {kind} records are never cut (deployment, erasure, "
                "consent and retention records prove what served, who was erased, that no "
                "offer went to an opted-out customer, and what was cut)"
            )
        if type(days) is not int or days < 1:
            raise ValueError(f"retention_days.{kind}: must be a whole number of days ≥ 1")


def cutoffs(retention_days: Mapping[str, int], now: datetime) -> dict[str, datetime]:
    """The cutoff per kind at ``now``: records recorded before it are due to be cut."""
    check_days(retention_days)
    now = now.astimezone(UTC)
    # Whole microseconds as encoded: the record says exactly the instant it compared with.
    return {
        kind: decode_time(encode_time(now - timedelta(days=days)))
        for kind, days in sorted(retention_days.items())
    }


def line(row: CutRow) -> bytes:
    """One cut row in a cut record's digest: ``seq kind time hash-hex`` and a newline."""
    return f"{row.seq} {row.kind} {encode_time(row.recorded_at)} {row.hash.hex()}\n".encode()


def digest(rows: Iterable[CutRow]) -> str:
    """SHA-256 (hex) over the lines of the rows, in the order given (seq order)."""
    h = hashlib.sha256()
    for row in rows:
        h.update(line(row))
    return h.hexdigest()


def cut_body(
    cut: Mapping[str, datetime],
    rows: Sequence[CutRow],
    *,
    retention_days: Mapping[str, int],
    requested_by: str,
    now: datetime,
) -> dict[str, Any]:
    """The body of the cut record for ``rows`` (the rows cut, in seq order)."""
    per_kind: dict[str, int] = dict.fromkeys(sorted(cut), 0)
    for row in rows:
        per_kind[row.kind] += 1
    return {
        "cut_at": encode_time(now),
        "requested_by": requested_by,
        "retention_days": dict(sorted(retention_days.items())),
        "cutoffs": {kind: encode_time(at) for kind, at in sorted(cut.items())},
        "count": len(rows),
        "count_by_kind": per_kind,
        "first_seq": rows[0].seq if rows else None,
        "last_seq": rows[-1].seq if rows else None,
        "digest": digest(rows),
    }


def read_cut(seq: int, body: Mapping[str, Any]) -> Cut:
    """A cut record's body as the verifier needs it; ValueError says what is wrong."""
    try:
        raw = body["cutoffs"]
        count, value = body["count"], body["digest"]
        if not isinstance(raw, dict) or type(count) is not int or not isinstance(value, str):
            raise TypeError
        at = {kind: decode_time(text) for kind, text in raw.items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a valid cut record ({exc!r})") from None
    protected = sorted(set(at) & PROTECTED_KINDS)
    if protected:
        raise ValueError(f"it cuts {', '.join(protected)} records, which are never cut")
    return Cut(seq, at, count, value)


def check(rows: Sequence[CutRow], cuts: Sequence[Cut]) -> tuple[int, str] | None:
    """The first problem with the cut rows and cut records of a log, as (seq, problem).

    ``rows`` are every cut row and ``cuts`` every cut record, each in seq order. Each row is
    assigned to the first cut after it whose cutoff for its kind lies after its time; each
    cut's assigned rows must have its count and digest; every row must be assigned.
    O(n log n): a row waits in a heap by time (per kind) until a cut takes it.
    """
    problems: list[tuple[int, str]] = []
    waiting: dict[str, list[tuple[datetime, int, CutRow]]] = {}
    i = 0
    for cut in cuts:
        while i < len(rows) and rows[i].seq < cut.seq:
            row = rows[i]
            heapq.heappush(waiting.setdefault(row.kind, []), (row.recorded_at, row.seq, row))
            i += 1
        taken: list[CutRow] = []
        for kind, before in cut.cutoffs.items():
            heap = waiting.get(kind, [])
            while heap and heap[0][0] < before:
                taken.append(heapq.heappop(heap)[2])
        taken.sort(key=lambda row: row.seq)
        if len(taken) != cut.count or digest(taken) != cut.digest:
            problems.append(
                (
                    cut.seq,
                    f"record {cut.seq}: the retention cut it records ({cut.count:,} records) "
                    f"does not match the {len(taken):,} cut records it covers (a cut record "
                    "restored or relabelled, or a record emptied by hand?)",
                )
            )
    left = [row for heap in waiting.values() for _, _, row in heap] + list(rows[i:])
    if left:
        row = min(left, key=lambda r: r.seq)
        problems.append(
            (
                row.seq,
                f"record {row.seq}: its content was removed but no retention cut after it "
                "covers it (deleted by hand?)",
            )
        )
    return min(problems) if problems else None


__all__ = [
    "CUT_KIND",
    "CUT_RECORD",
    "PROTECTED_KINDS",
    "Cut",
    "CutRow",
    "check",
    "check_days",
    "cut_body",
    "cutoffs",
    "digest",
    "line",
    "read_cut",
]
