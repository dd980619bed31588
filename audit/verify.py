"""Offline verification of an audit log: a DuckDB file or a Parquet export, streamed.

Checks what the chain can prove (every record present, unedited, in order, projections
true to the record) and says in words what failed and where. It must never write to what it
verifies, and never claim more than a chain proves: a cut-off tail or a fully rewritten
chain passes here and is caught only by signed checkpoints kept outside the database.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from audit.errors import AuditCorrupt, AuditError
from audit.records import (
    ENVELOPE_VERSION,
    GENESIS_HASH,
    KIND_PATTERN,
    StoredRecord,
    canonical_json,
    chain_hash,
    decode_time,
    parse_envelope,
)
from audit.store import COLUMNS, TABLE, connect

_FETCH_ROWS = 4096
_ENVELOPE_KEYS = frozenset({"v", "seq", "kind", "at", "subject", "ref", "body"})
_DUCKDB_MAGIC = (8, b"DUCK")  # offset, bytes: DuckDB's main header
_PARQUET_MAGIC = b"PAR1"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of a verification.

    ``count`` is the number of records that verified (all of them when ``ok``) and
    ``head_hash`` the hash of the last of those (32 zero bytes for none).
    """

    ok: bool
    count: int
    head_hash: bytes
    first_bad_seq: int | None
    problem: str | None


class _Bad(Exception):
    def __init__(self, seq: int, problem: str) -> None:
        super().__init__(problem)
        self.seq = seq
        self.problem = problem


def verify_records(rows: Iterable[StoredRecord | tuple[Any, ...]]) -> VerifyReport:
    """Verify rows in seq order, from any source; stop at the first problem.

    A row is a StoredRecord or a tuple in table column order: (seq, kind, recorded_at,
    subject, ref, record, prev_hash, hash); recorded_at naive means UTC, record is str or
    bytes.
    """
    count, prev = 0, GENESIS_HASH
    try:
        for row in rows:
            prev = _verify_row(_fields(row), count, prev)
            count += 1
    except _Bad as bad:
        return VerifyReport(False, count, prev, bad.seq, bad.problem)
    return VerifyReport(True, count, prev, None, None)


def _fields(row: StoredRecord | tuple[Any, ...]) -> tuple[Any, ...]:
    if isinstance(row, StoredRecord):
        return row.as_row()
    return tuple(row)


def _verify_row(row: tuple[Any, ...], expected: int, prev: bytes) -> bytes:
    if len(row) != len(COLUMNS):
        raise _Bad(expected, f"record {expected}: row has {len(row)} columns, expected 8")
    seq, kind, recorded_at, subject, ref, record, prev_hash, digest = row
    if type(seq) is not int:
        raise _Bad(expected, f"record {expected}: seq column is {seq!r}, not an integer")
    if seq > expected:
        raise _Bad(expected, f"expected seq {expected}, found {seq} (a record is missing)")
    if seq < expected:
        raise _Bad(
            seq, f"expected seq {expected}, found {seq} again (a duplicate or inserted record)"
        )
    data = record.encode("utf-8") if isinstance(record, str) else bytes(record)
    fields = _parse(seq, data)
    mismatches = [
        f"column {name} is {column!r} but the record says {stored!r}"
        for name, column, stored in (
            ("kind", kind, fields["kind"]),
            ("recorded_at", _utc(recorded_at), fields["at"]),
            ("subject", subject, fields["subject"]),
            ("ref", ref, fields["ref"]),
        )
        if column != stored
    ]
    if fields["seq"] != seq:
        raise _Bad(
            seq,
            f"record {seq}: the record says seq {fields['seq']} (records swapped or renumbered?)",
        )
    if mismatches:
        raise _Bad(seq, f"record {seq}: {'; '.join(mismatches)} (projection edited?)")
    if bytes(prev_hash) != prev:
        link = "is not the genesis value" if seq == 0 else f"does not link to record {seq - 1}"
        raise _Bad(seq, f"record {seq}: prev_hash {link} (deleted, inserted or reordered record?)")
    if bytes(digest) != chain_hash(prev, data):
        raise _Bad(seq, f"record {seq}: hash does not match its contents (edited?)")
    return bytes(digest)


def _parse(seq: int, data: bytes) -> dict[str, Any]:
    try:
        fields = dict(parse_envelope(data))
    except ValueError as exc:  # includes JSON and UTF-8 decoding errors
        raise _Bad(seq, f"record {seq}: not a JSON record ({exc})") from None
    problem = None
    if fields.keys() != _ENVELOPE_KEYS:
        problem = f"fields are {sorted(fields)}, expected {sorted(_ENVELOPE_KEYS)}"
    elif type(fields["v"]) is not int or fields["v"] != ENVELOPE_VERSION:
        problem = f"unknown envelope version {fields['v']!r}"
    elif type(fields["seq"]) is not int:
        problem = f"seq {fields['seq']!r} is not an integer"
    elif not isinstance(fields["kind"], str) or not KIND_PATTERN.fullmatch(fields["kind"]):
        problem = f"kind {fields['kind']!r} is not a kind name"
    elif not isinstance(fields["body"], dict):
        problem = "body is not an object"
    elif not all(fields[k] is None or isinstance(fields[k], str) for k in ("subject", "ref")):
        problem = "subject and ref must be strings or null"
    else:
        try:
            fields["at"] = decode_time(fields["at"])
        except ValueError as exc:
            problem = str(exc)
    if problem is not None:
        raise _Bad(seq, f"record {seq}: not a valid record: {problem}")
    try:
        canonical = canonical_json(parse_envelope(data))
    except (TypeError, ValueError):
        canonical = b""
    if canonical != data:
        raise _Bad(seq, f"record {seq}: bytes are not in canonical form (edited by hand?)")
    return fields


def _utc(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


def verify_file(path: Path) -> VerifyReport:
    """Verify a DuckDB audit file or a Parquet export of one, reading it in seq order.

    Raises AuditLocked if the running service holds the DuckDB file, and AuditCorrupt if
    the file has no readable audit table.
    """
    path = Path(path)
    if _is_duckdb(path):
        con = connect(path, read_only=True)
        source = TABLE
    elif _is_parquet(path):
        con = duckdb.connect()
        source = f"read_parquet({_sql_string(str(path))})"
    else:
        raise AuditError(f"{path} is neither a DuckDB database nor a Parquet file")
    try:
        return verify_records(_stream(con, source, path))
    finally:
        con.close()


def _stream(con: duckdb.DuckDBPyConnection, source: str, path: Path) -> Iterator[tuple[Any, ...]]:
    try:
        # Ordered by seq so a physically reordered but intact file verifies; duplicates and
        # gaps still show, because seq itself is checked against the record.
        cursor = con.execute(f"SELECT {', '.join(COLUMNS)} FROM {source} ORDER BY seq")
        while rows := cursor.fetchmany(_FETCH_ROWS):
            yield from rows
    except duckdb.Error as exc:
        raise AuditCorrupt(f"cannot read audit records from {path}: {exc}") from exc


def _is_duckdb(path: Path) -> bool:
    offset, magic = _DUCKDB_MAGIC
    return _head_bytes(path, offset + len(magic))[offset:] == magic


def _is_parquet(path: Path) -> bool:
    return _head_bytes(path, len(_PARQUET_MAGIC)) == _PARQUET_MAGIC


def _head_bytes(path: Path, n: int) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(n)
    except OSError as exc:
        raise AuditError(f"cannot read {path}: {exc}") from exc


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def export_parquet(db_path: Path, out_path: Path) -> int:
    """Write the whole log, in seq order, to a Parquet file; return the number of records.

    Opens the DuckDB file read-only, so it raises AuditLocked while the service runs.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    con = connect(Path(db_path), read_only=True)
    try:
        con.execute(
            f"COPY (SELECT {', '.join(COLUMNS)} FROM {TABLE} ORDER BY seq) "
            f"TO {_sql_string(str(out_path))} (FORMAT parquet)"
        )
        row = con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    except duckdb.Error as exc:
        raise AuditError(f"cannot export {db_path} to {out_path}: {exc}") from exc
    finally:
        con.close()
    assert row is not None
    return int(row[0])
