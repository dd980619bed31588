"""Offline verification of an audit log (a DuckDB file or a Parquet export) against its
signed checkpoints.

The chain proves every record present, unedited and in order up to the last one; the signed
checkpoints prove the records they sealed were not cut off or re-chained since. Says in words
what failed first (a record or a checkpoint) and where. It must never write to what it
verifies, and never claim more than it checked: records after the last checkpoint are
proved by the chain alone (the unsealed tail).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from audit.errors import AuditCorrupt, AuditError
from audit.merkle import Frontier
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

if TYPE_CHECKING:
    from audit.checkpoint import Checkpoint

_FETCH_ROWS = 4096
_ENVELOPE_KEYS = frozenset({"v", "seq", "kind", "at", "subject", "ref", "body"})
_DUCKDB_MAGIC = (8, b"DUCK")  # offset, bytes: DuckDB's main header
_PARQUET_MAGIC = b"PAR1"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of a verification.

    ``count`` is the number of records that verified (all of them when ``ok``) and
    ``head_hash`` the hash of the last of those (32 zero bytes for none). ``sealed`` is the
    size of the newest checkpoint that matched; records after it rest on the chain alone.
    ``bad_checkpoint`` is the 1-based position of the first checkpoint that did not match.
    """

    ok: bool
    count: int
    head_hash: bytes
    first_bad_seq: int | None
    problem: str | None
    checkpoints: int = 0
    sealed: int = 0
    bad_checkpoint: int | None = None


class _Bad(Exception):
    def __init__(self, seq: int | None, problem: str, checkpoint: int | None = None) -> None:
        super().__init__(problem)
        self.seq = seq
        self.problem = problem
        self.checkpoint = checkpoint


@dataclass
class _Walk:
    """Verification state: the chain so far, its Merkle frontier, the checkpoints ahead."""

    checkpoints: Sequence[Checkpoint]
    count: int = 0
    prev: bytes = GENESIS_HASH
    tree: Frontier = field(default_factory=Frontier)
    matched: int = 0  # checkpoints checked so far
    sealed: int = 0

    def __post_init__(self) -> None:
        for earlier, later in zip(self.checkpoints, self.checkpoints[1:], strict=False):
            if later.size < earlier.size:
                raise ValueError("checkpoints must be in order of size")
        self._seal()

    def row(self, row: tuple[Any, ...]) -> None:
        """Check one row fully (the reference algorithm) and add it."""
        self.trusted(_verify_row(row, self.count, self.prev))

    def trusted(self, digest: bytes) -> None:
        """Add a record whose chain hash was already checked."""
        self.prev = digest
        self.count += 1
        self.tree.append(digest)
        self._seal()

    def _seal(self) -> None:
        while self.matched < len(self.checkpoints):
            checkpoint = self.checkpoints[self.matched]
            if checkpoint.size != self.count:
                return
            number = self.matched + 1
            if self.tree.root() != checkpoint.root or self.prev != checkpoint.chain_head:
                raise _Bad(
                    None,
                    f"checkpoint {number} (size {checkpoint.size:,}, signed "
                    f"{_when(checkpoint)}): the log's first {checkpoint.size:,} records are "
                    "not the ones signed (rewritten or re-chained after sealing)",
                    number,
                )
            self.matched += 1
            self.sealed = checkpoint.size

    def report(self) -> VerifyReport:
        if self.matched < len(self.checkpoints):
            checkpoint = self.checkpoints[self.matched]
            number = self.matched + 1
            return self._report(
                _Bad(
                    self.count,
                    f"checkpoint {number} (signed {_when(checkpoint)}) sealed "
                    f"{checkpoint.size:,} records but the log has {self.count:,}: "
                    "records were cut off after they were sealed",
                    number,
                )
            )
        return VerifyReport(
            True, self.count, self.prev, None, None, self.matched, self.sealed, None
        )

    def _report(self, bad: _Bad) -> VerifyReport:
        return VerifyReport(
            False,
            self.count,
            self.prev,
            bad.seq,
            bad.problem,
            self.matched,
            self.sealed,
            bad.checkpoint,
        )


def _when(checkpoint: Checkpoint) -> str:
    return checkpoint.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def verify_records(
    rows: Iterable[StoredRecord | tuple[Any, ...]], checkpoints: Sequence[Checkpoint] = ()
) -> VerifyReport:
    """Verify rows in seq order, from any source, against checkpoints; stop at the first problem.

    This is the reference algorithm (docs/audit-format.md), row by row. A row is a
    StoredRecord or a tuple in table column order: (seq, kind, recorded_at, subject, ref,
    record, prev_hash, hash); recorded_at naive means UTC, record is str or bytes.
    ``checkpoints`` must already be signature-checked and in order of size.
    """
    walk = _Walk(list(checkpoints))
    try:
        for row in rows:
            walk.row(_fields(row))
    except _Bad as bad:
        return walk._report(bad)
    return walk.report()


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


def verify_file(
    path: Path, checkpoints: Sequence[Checkpoint] = (), *, deep: bool = False
) -> VerifyReport:
    """Verify a DuckDB audit file or a Parquet export of one against signed checkpoints.

    By default DuckDB checks every row's hash, link, seq and projections in one vectorised
    query (measured: the row-by-row reference spends most of its time re-parsing JSON), then
    the Merkle roots are checked from the hash column; the reference algorithm re-walks
    from just before the first row the query flags, so problems are named exactly as it
    names them. ``deep`` runs the reference on every row, adding the canonical-form and
    envelope checks (which the hashes already cover for bytes sealed by a checkpoint).

    Raises AuditLocked if the running service holds the DuckDB file, and AuditCorrupt if
    the file has no readable audit table.
    """
    path = Path(path)
    con, source = _open_source(path)
    try:
        walk = _Walk(list(checkpoints))
        try:
            start = 0 if deep else _first_suspect(con, source, path)
            if start is None:  # nothing flagged: every chain hash is right; seal them
                for digest in _hashes(con, source, path):
                    walk.trusted(digest)
                return walk.report()
            start = max(start - 1, 0)
            for position, row in enumerate(_stream(con, source, path)):
                if position < start:
                    walk.trusted(bytes(row[7]))
                else:
                    walk.row(row)
        except _Bad as bad:
            return walk._report(bad)
        return walk.report()
    finally:
        con.close()


def _open_source(path: Path) -> tuple[duckdb.DuckDBPyConnection, str]:
    if _is_duckdb(path):
        return connect(path, read_only=True), TABLE
    if _is_parquet(path):
        return duckdb.connect(), f"read_parquet({_sql_string(str(path))})"
    raise AuditError(f"{path} is neither a DuckDB database nor a Parquet file")


# Per row: the chain hash of its bytes, and the record's envelope around the body against
# the projection columns (the envelope is spliced as audit.records.PreparedRecord does).
# A row this flags may still be fine (a character DuckDB escapes differently): the
# reference walk that follows decides.
_SUSPECT_SQL = """
WITH rows AS (
  SELECT seq, prev_hash, hash,
    coalesce(
      lower(hex(hash)) = sha256(prev_hash || unhex(sha256(record)))
      AND starts_with(record, '{{"at":"' || strftime(recorded_at, '%Y-%m-%dT%H:%M:%S.%fZ')
                              || '","body":')
      AND ends_with(record, ',"kind":' || to_json(kind) || ',"ref":'
                            || coalesce(to_json(ref)::VARCHAR, 'null') || ',"seq":' || seq
                            || ',"subject":' || coalesce(to_json(subject)::VARCHAR, 'null')
                            || ',"v":{version}}}'),
      false) AS row_ok
  FROM {source}
), ordered AS (
  SELECT seq, row_ok, prev_hash,
    row_number() OVER (ORDER BY seq) - 1 AS position,
    lag(hash, 1, unhex(repeat('00', 32))) OVER (ORDER BY seq) AS prior
  FROM rows
)
SELECT min(position) FROM ordered
WHERE NOT row_ok OR seq IS DISTINCT FROM position OR prev_hash IS DISTINCT FROM prior
"""


def _first_suspect(con: duckdb.DuckDBPyConnection, source: str, path: Path) -> int | None:
    try:
        row = con.execute(_SUSPECT_SQL.format(source=source, version=ENVELOPE_VERSION)).fetchone()
    except duckdb.Error as exc:
        raise AuditCorrupt(f"cannot read audit records from {path}: {exc}") from exc
    return None if row is None or row[0] is None else int(row[0])


def _hashes(con: duckdb.DuckDBPyConnection, source: str, path: Path) -> Iterator[bytes]:
    try:
        cursor = con.execute(f"SELECT hash FROM {source} ORDER BY seq")
        while rows := cursor.fetchmany(_FETCH_ROWS * 16):
            for (digest,) in rows:
                yield bytes(digest)
    except duckdb.Error as exc:
        raise AuditCorrupt(f"cannot read audit records from {path}: {exc}") from exc


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
