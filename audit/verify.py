"""Offline verification of an audit log (a DuckDB file or a Parquet export) against its
signed checkpoints.

The chain proves every record present, unedited and in order up to the last one; the signed
checkpoints prove the records they sealed were not cut off or re-chained since. Says in words
what failed first (a record or a checkpoint) and where. It must never write to what it
verifies, and never claim more than it checked: records after the last checkpoint are
proved by the chain alone (the unsealed tail).
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from audit import retention
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
# Rows per Arrow batch of the single pass. Measured on a 98k-record, 393 MB log: fetching
# took 0.28 s in batches of 1-2k rows against 0.41-0.45 s in batches of 4k-1M (big batch
# buffers are fresh mmaps whose pages fault in again every batch; ~8 MB ones are reused).
_BATCH_ROWS = 2048
# Batches read ahead by the reader thread: DuckDB makes the next batch (scan, decompress,
# copy to Arrow; it does not hold the GIL) while this thread hashes the last one. Measured
# on 976k records of 4 KB: 11.5 s with the reading in line, 6.0-6.7 s read ahead.
_READ_AHEAD_BATCHES = 2
# The column types AuditStore writes (and export_parquet keeps). Files with other types are
# walked by the reference alone: the fast pass trusts these types (e.g. strftime below
# on a TIMESTAMP WITH TIME ZONE would depend on the session's time zone).
_STORE_TYPES = {
    "seq": "BIGINT",
    "kind": "VARCHAR",
    "recorded_at": "TIMESTAMP",
    "subject": "VARCHAR",
    "ref": "VARCHAR",
    "record": "VARCHAR",
    "prev_hash": "BLOB",
    "hash": "BLOB",
}
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
    # Rows whose content a retention cut removed, and the cut records (audit.retention),
    # checked against each other once every row has been seen.
    cut_rows: list[retention.CutRow] = field(default_factory=list)
    cuts: list[retention.Cut] = field(default_factory=list)
    first: int = field(init=False, default=0)  # where the walk started

    def __post_init__(self) -> None:
        self.first = self.count
        for earlier, later in zip(self.checkpoints, self.checkpoints[1:], strict=False):
            if later.size < earlier.size:
                raise ValueError("checkpoints must be in order of size")
        self._seal()

    def row(self, row: tuple[Any, ...]) -> None:
        """Check one row fully (the reference algorithm) and add it."""
        if len(row) == len(COLUMNS) and row[5] in (retention.CUT_RECORD, b""):
            digest = _verify_cut_row(row, self.count, self.prev)
            self.cut_rows.append(retention.CutRow(row[0], row[1], _utc(row[2]), digest))
        else:
            digest = _verify_row(row, self.count, self.prev)
            if row[1] == retention.CUT_KIND:
                self.cuts.append(_read_cut(row))
        self.trusted([digest])

    def trusted(self, digests: list[bytes]) -> None:
        """Add records whose rows were already checked (chain hashes, in order)."""
        append = self.tree.append
        done, total = 0, len(digests)
        while done < total:
            # Up to the next checkpoint at most (_seal has run, so it lies ahead of count).
            stop = total
            if self.matched < len(self.checkpoints):
                stop = min(total, done + self.checkpoints[self.matched].size - self.count)
            for digest in digests[done:stop]:
                append(digest)
            self.count += stop - done
            self.prev = digests[stop - 1]
            done = stop
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
        # A walk from a trusted point (audit.recovery) has not seen the rows before it.
        if self.first == 0 and (
            problem := retention.check(sorted(self.cut_rows, key=attrgetter("seq")), self.cuts)
        ):
            return self._report(_Bad(*problem))
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


def _check_seq(seq: Any, expected: int) -> None:
    if type(seq) is not int:
        raise _Bad(expected, f"record {expected}: seq column is {seq!r}, not an integer")
    if seq > expected:
        raise _Bad(expected, f"expected seq {expected}, found {seq} (a record is missing)")
    if seq < expected:
        raise _Bad(
            seq, f"expected seq {expected}, found {seq} again (a duplicate or inserted record)"
        )


def _check_link(seq: int, prev_hash: Any, prev: bytes) -> None:
    if bytes(prev_hash) != prev:
        link = "is not the genesis value" if seq == 0 else f"does not link to record {seq - 1}"
        raise _Bad(seq, f"record {seq}: prev_hash {link} (deleted, inserted or reordered record?)")


def _verify_cut_row(row: tuple[Any, ...], expected: int, prev: bytes) -> bytes:
    """A row whose content a retention cut removed: its place in the chain, and its shape.

    Its hash cannot be recomputed (the bytes are gone); the next row's link, the signed
    checkpoints and the cut record's digest (checked in _Walk.report) are what hold it.
    """
    seq, kind, recorded_at, subject, ref, _, prev_hash, digest = row
    _check_seq(seq, expected)
    problem = None
    if not isinstance(kind, str) or not KIND_PATTERN.fullmatch(kind):
        problem = f"kind {kind!r} is not a kind name"
    elif kind in retention.PROTECTED_KINDS:
        problem = f"{kind} records are never cut"
    elif not isinstance(recorded_at, datetime):
        problem = f"recorded_at is {recorded_at!r}, not a time"
    elif subject is not None or ref is not None:
        problem = "subject and ref must be null once the content is cut"
    elif not isinstance(digest, bytes | bytearray | memoryview) or len(bytes(digest)) != 32:
        problem = "hash is not 32 bytes"
    if problem is not None:
        raise _Bad(seq, f"record {seq}: content removed, but {problem} (edited?)")
    _check_link(seq, prev_hash, prev)
    return bytes(digest)


def _read_cut(row: tuple[Any, ...]) -> retention.Cut:
    """The cut record of a row that _verify_row accepted."""
    seq, record = row[0], row[5]
    data = record.encode("utf-8") if isinstance(record, str) else bytes(record)
    try:
        return retention.read_cut(seq, parse_envelope(data)["body"])
    except ValueError as exc:
        raise _Bad(seq, f"record {seq}: a retention record, but {exc}") from None


def _verify_row(row: tuple[Any, ...], expected: int, prev: bytes) -> bytes:
    if len(row) != len(COLUMNS):
        raise _Bad(expected, f"record {expected}: row has {len(row)} columns, expected 8")
    seq, kind, recorded_at, subject, ref, record, prev_hash, digest = row
    _check_seq(seq, expected)
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
    _check_link(seq, prev_hash, prev)
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

    By default one streaming pass reads the rows as the file stores them, checks every
    row's seq, link, chain hash (hashlib) and projections (against the envelope around the
    body, in DuckDB), and adds the chain hashes to the Merkle tree that the checkpoints are
    checked against. A row those checks flag goes to the reference algorithm, in place, so
    a problem is named exactly as it names it. If that finds a problem and the file does not
    store its rows in seq order, the pass is repeated in seq order. ``deep`` runs the
    reference on every row, adding the canonical-form and envelope checks (which the
    hashes already cover for bytes sealed by a checkpoint); so do files whose columns do
    not have the types the store writes.

    Raises AuditLocked if the running service holds the DuckDB file, and AuditCorrupt if
    the file has no readable audit table.
    """
    path = Path(path)
    con, source = _open_source(path)
    try:
        if deep or not _store_typed(con, source, path):
            return _reference_pass(con, source, path, checkpoints)
        return _fast_pass(con, source, path, checkpoints, in_seq_order=False)
    finally:
        con.close()


@dataclass(frozen=True, slots=True)
class _Source:
    """Where the rows are, in SQL, and how to number them in the order they are stored."""

    rows: str  # the table, or read_parquet(...)
    numbered: str  # the same with a storage position column
    position: str


def _open_source(path: Path) -> tuple[duckdb.DuckDBPyConnection, _Source]:
    if _is_duckdb(path):
        return connect(path, read_only=True), _Source(TABLE, TABLE, "rowid")
    if _is_parquet(path):
        file = _sql_string(str(path))
        return duckdb.connect(), _Source(
            f"read_parquet({file})",
            f"read_parquet({file}, file_row_number = true)",
            "file_row_number",
        )
    raise AuditError(f"{path} is neither a DuckDB database nor a Parquet file")


def _store_typed(con: duckdb.DuckDBPyConnection, source: _Source, path: Path) -> bool:
    try:
        described = con.execute(f"DESCRIBE SELECT {', '.join(COLUMNS)} FROM {source.rows}")
        types = {row[0]: row[1] for row in described.fetchall()}
    except duckdb.Error as exc:
        raise AuditCorrupt(f"cannot read audit records from {path}: {exc}") from exc
    return types == _STORE_TYPES


def _reference_pass(
    con: duckdb.DuckDBPyConnection, source: _Source, path: Path, checkpoints: Sequence[Checkpoint]
) -> VerifyReport:
    walk = _Walk(list(checkpoints))
    try:
        for row in _stream(con, source.rows, path):
            walk.row(row)
    except _Bad as bad:
        return walk._report(bad)
    return walk.report()


# Every row as stored, and whether the record's envelope around the body matches the
# projection columns (spliced as audit.records.PreparedRecord does). The chain hashes are
# checked in Python: DuckDB's sha256 ran at ~300 MB/s (0.75 s of a 0.9 s query on 218 MB),
# hashlib at ~1.3 GB/s. A row this flags may still be fine (a character DuckDB escapes
# differently): the reference decides.
_PASS_SQL = """
SELECT {columns},
  coalesce(
    starts_with(record, '{{"at":"' || strftime(recorded_at, '%Y-%m-%dT%H:%M:%S.%fZ')
                            || '","body":')
    AND ends_with(record, ',"kind":' || to_json(kind) || ',"ref":'
                          || coalesce(to_json(ref)::VARCHAR, 'null') || ',"seq":' || seq
                          || ',"subject":' || coalesce(to_json(subject)::VARCHAR, 'null')
                          || ',"v":{version}}}'),
    false) AS envelope_ok
FROM {source}{order}
"""


def _fast_pass(
    con: duckdb.DuckDBPyConnection,
    source: _Source,
    path: Path,
    checkpoints: Sequence[Checkpoint],
    *,
    in_seq_order: bool,
) -> VerifyReport:
    """The single pass, over the rows in the order they are stored or in seq order.

    Stored order is seq order for every log the store writes and every export, and reading
    it needs no sort (a sort would hold the whole log). Until a problem shows, every row
    had seq = its position, so the stored order was seq order. When one shows, it stands
    only if the stored order is a seq order (duplicates may sit side by side); otherwise
    the reference, reading in seq order, might have met another problem first, so the pass
    starts again in seq order.
    """
    walk = _Walk(list(checkpoints))
    rows = _Rows(walk)
    query = _PASS_SQL.format(
        columns=", ".join(COLUMNS),
        version=ENVELOPE_VERSION,
        source=source.rows,
        order=" ORDER BY seq" if in_seq_order else "",
    )
    try:
        with _read_ahead(con, query, path) as batches:
            for batch in batches:
                rows.add(batch)
        rows.finish()
    except _Bad as bad:
        if not in_seq_order and not _stored_in_seq_order(con, source):
            return _fast_pass(con, source, path, checkpoints, in_seq_order=True)
        return walk._report(bad)
    return walk.report()


def _stored_in_seq_order(con: duckdb.DuckDBPyConnection, source: _Source) -> bool:
    try:
        (disorder,) = con.execute(
            f"SELECT count(*) FROM (SELECT seq, lag(seq) OVER (ORDER BY {source.position}) "
            f"AS before FROM {source.numbered}) WHERE seq IS NULL OR seq < before"
        ).fetchall()[0]
    except duckdb.Error:
        return False  # cannot tell: read in seq order, which is always right
    return bool(disorder == 0)


@contextmanager
def _read_ahead(
    con: duckdb.DuckDBPyConnection, query: str, path: Path
) -> Iterator[Iterator[pa.RecordBatch]]:
    """The query's Arrow batches, read on a thread a few batches ahead of the caller."""
    try:
        con.execute("SET preserve_insertion_order = true")  # stored order, without ORDER BY
        reader = con.sql(query).to_arrow_reader(_BATCH_ROWS)
    except duckdb.Error as exc:
        raise AuditCorrupt(f"cannot read audit records from {path}: {exc}") from exc
    ahead: queue.Queue[pa.RecordBatch | Exception | None] = queue.Queue(_READ_AHEAD_BATCHES)
    stop = threading.Event()

    def read() -> None:
        try:
            for batch in reader:
                if stop.is_set():
                    return
                ahead.put(batch)
        except Exception as exc:  # handed to the caller's thread
            ahead.put(exc)
            return
        ahead.put(None)

    def batches() -> Iterator[pa.RecordBatch]:
        while (item := ahead.get()) is not None:
            if isinstance(item, duckdb.Error | pa.ArrowException):
                raise AuditCorrupt(f"cannot read audit records from {path}: {item}") from item
            if isinstance(item, Exception):
                raise item
            yield item

    thread = threading.Thread(target=read, name="audit-verify-read-ahead", daemon=True)
    thread.start()
    try:
        yield batches()
    finally:
        stop.set()
        while thread.is_alive():  # it may be waiting to put a batch
            with suppress(queue.Empty):
                ahead.get_nowait()
            thread.join(0.01)
        reader.close()


@dataclass
class _Held:
    row: tuple[Any, ...]
    digest: bytes | None
    flagged: bool
    cut: retention.CutRow | None  # a cut row the checks passed


class _Rows:
    """Feeds checked rows to the walk, the reference taking the ones the checks flag.

    The reference also takes the row before a flagged one: a record edited and re-hashed
    shows only as a broken link in the next row, and the reference, looking at the edited
    row itself, may name it (bytes not in canonical form). So the last row of each batch is
    held until the first row of the next one has been checked.
    """

    def __init__(self, walk: _Walk) -> None:
        self.walk = walk
        self.held: _Held | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        n = batch.num_rows
        if n == 0:
            return
        walk, held = self.walk, self.held
        hashes = batch.column(7).to_pylist()
        prevs = batch.column(6).to_pylist()
        chained = _chain_hashes(prevs, batch.column(5))
        if held is None:
            flagged, cut = _flags(batch, walk.count, walk.prev, prevs, hashes, chained)
        else:
            flagged, cut = _flags(batch, walk.count + 1, held.digest, prevs, hashes, chained)
            self._settle(held, followed_by_flagged=bool(flagged[0]))
        to_reference = flagged[:-1] | flagged[1:]
        # Cut rows the checks passed, but for those the reference takes (it notes them).
        walk.cut_rows += _cut_rows(batch, np.flatnonzero(cut[:-1] & ~to_reference))
        start = 0
        for i in np.flatnonzero(to_reference).tolist():
            walk.trusted(hashes[start:i])
            walk.row(_row(batch, i))
            start = i + 1
        walk.trusted(hashes[start : n - 1])
        last = _cut_rows(batch, np.array([n - 1])) if cut[n - 1] else [None]
        self.held = _Held(_row(batch, n - 1), hashes[n - 1], bool(flagged[n - 1]), last[0])

    def finish(self) -> None:
        # The last row has no successor whose link would expose it edited and re-hashed,
        # so the reference (canonical form included) always checks it: one row.
        if self.held is not None:
            self.walk.row(self.held.row)
            self.held = None

    def _settle(self, held: _Held, *, followed_by_flagged: bool) -> None:
        if held.flagged or followed_by_flagged or held.digest is None:
            self.walk.row(held.row)
        else:
            if held.cut is not None:
                self.walk.cut_rows.append(held.cut)
            self.walk.trusted([held.digest])


def _cut_rows(batch: pa.RecordBatch, where: np.ndarray[Any, Any]) -> list[retention.CutRow]:
    """The cut rows at positions ``where`` of the batch, as audit.retention reads them."""
    if not len(where):
        return []
    index = pa.array(where, type=pa.int64())
    seqs, kinds, times, digests = (batch.column(i).take(index).to_pylist() for i in (0, 1, 2, 7))
    return [
        retention.CutRow(seq, kind, at.replace(tzinfo=UTC), digest)
        for seq, kind, at, digest in zip(seqs, kinds, times, digests, strict=True)
    ]


_KIND_REGEX = f"^{KIND_PATTERN.pattern}$"  # for Arrow's regex match, which is not anchored


def _cut_shape(batch: pa.RecordBatch) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Rows that are cut rows of the right shape (_verify_cut_row's checks on the columns)."""
    is_cut = pc.equal(batch.column(5), retention.CUT_RECORD).fill_null(False)
    if not pc.any(is_cut).as_py():
        return np.zeros(batch.num_rows, dtype=bool)
    kind = batch.column(1)
    ok = pc.and_(
        pc.and_(is_cut, pc.and_(pc.is_null(batch.column(3)), pc.is_null(batch.column(4)))),
        pc.and_(
            pc.and_(
                pc.match_substring_regex(kind, _KIND_REGEX),
                pc.invert(pc.is_in(kind, pa.array(sorted(retention.PROTECTED_KINDS)))),
            ),
            pc.and_(
                pc.equal(pc.binary_length(batch.column(7)), 32),
                pc.is_valid(batch.column(2)),
            ),
        ),
    )
    return np.asarray(ok.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _row(batch: pa.RecordBatch, i: int) -> tuple[Any, ...]:
    """Row i in table column order, as DuckDB's own fetch would give it."""
    return tuple(column[i].as_py() for column in batch.columns[: len(COLUMNS)])


def _chain_hashes(prevs: list[bytes | None], records: pa.Array) -> list[bytes]:
    """SHA-256(prev_hash || SHA-256(record)) of each row, hashing the Arrow buffer in place."""
    _, offsets_buffer, data_buffer = records.buffers()
    width = np.int64 if pa.types.is_large_string(records.type) else np.int32
    offsets = np.frombuffer(offsets_buffer, dtype=width)[
        records.offset : records.offset + len(records) + 1
    ].tolist()
    data = memoryview(b"" if data_buffer is None else data_buffer)
    sha256 = hashlib.sha256
    # hashlib releases the GIL for inputs over 2 KB, so the reader thread keeps going.
    return [
        sha256((prev or b"") + sha256(data[begin:end]).digest()).digest()
        for prev, (begin, end) in zip(prevs, pairwise(offsets), strict=True)
    ]


def _flags(
    batch: pa.RecordBatch,
    count: int,
    prev: bytes | None,
    prevs: list[bytes | None],
    hashes: list[bytes | None],
    chained: list[bytes],
) -> tuple[np.ndarray[Any, np.dtype[np.bool_]], np.ndarray[Any, np.dtype[np.bool_]]]:
    """Which rows of the batch the checks flag, after ``count`` rows ending in ``prev``; and
    which are cut rows that pass the checks a cut row can have.

    A row that is not flagged is one the reference accepts (but for the canonical form)
    after the rows before it, once those are accepted: seq is its position, prev_hash
    links, and either hash is the chain hash of its bytes and the envelope agrees with the
    columns, or it is a cut row of the right shape (the cut records check it at the end).
    """
    n = batch.num_rows
    seq = batch.column(0)
    if seq.null_count:
        seq = seq.fill_null(-1)
    placed = seq.to_numpy() == np.arange(count, count + n)
    flagged = ~placed
    flagged |= ~batch.column(8).fill_null(False).to_numpy(zero_copy_only=False)
    # Cut records go to the reference, which reads their bodies.
    flagged |= (
        pc.equal(batch.column(1), retention.CUT_KIND)
        .fill_null(False)
        .to_numpy(zero_copy_only=False)
    )
    if prevs[0] != prev or prevs[1:] != hashes[:-1]:
        links = zip(prevs, [prev, *hashes[:-1]], strict=True)
        linked = np.array([mine == link for mine, link in links])
        placed &= linked
        flagged |= ~linked
    if chained != hashes:
        flagged |= np.array([mine != theirs for mine, theirs in zip(chained, hashes, strict=True)])
    # A cut row has neither the envelope nor a hash of its (empty) bytes: flagged above.
    cut = _cut_shape(batch) & placed
    return flagged & ~cut, cut


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
