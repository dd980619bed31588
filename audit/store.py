"""The audit log writer: one DuckDB file, one writer thread, durable before acknowledged.

Submissions are grouped: the writer takes everything waiting, chains it from the committed
head and commits it in one transaction (one WAL fsync), and only then resolves the futures.
It must never acknowledge a record that COMMIT has not returned for, never extend a head it
is unsure of, and never run DDL beyond the initial CREATE TABLE (no indexes, no keys). Rows
are only ever appended, with one exception: a retention cut (``cut``) empties the content of
rows past their retention period, in the transaction that appends its chained cut record
(audit.retention). When it
can no longer tell what is committed it reopens the file and re-reads the head (in-process
recovery, audit.recovery); it never deletes a WAL.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import duckdb

from audit import retention
from audit.errors import AuditCorrupt, AuditError, AuditLocked, AuditWriteError
from audit.merkle import Frontier
from audit.records import (
    GENESIS_HASH,
    NewRecord,
    PreparedRecord,
    StoredRecord,
    chain_hash,
    check_kind,
    encode_time,
    prepare,
)

if TYPE_CHECKING:
    from audit.recovery import Quarantine

log = logging.getLogger("offerdesk.audit")

TABLE = "audit_records"
COLUMNS = ("seq", "kind", "recorded_at", "subject", "ref", "record", "prev_hash", "hash")
# A plain append-only table: DuckDB's known WAL-replay failures involve index DDL, and
# nothing here needs an index (the hot path only appends; reads are cold scans).
# recorded_at is naive UTC; `record` is the canonical JSON text exactly as hashed.
# `record` is zstd-compressed. Measured on 8,800 records from a service run, against DuckDB's own
# choice: the file is 2.8x smaller, and checkpoints, which stall every commit while they run, are
# 2-3x shorter; scans are about 20% slower (docs/operations.md#checkpoints). Logs created
# before keep DuckDB's choice.
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
  seq BIGINT NOT NULL,
  kind VARCHAR NOT NULL,
  recorded_at TIMESTAMP NOT NULL,
  subject VARCHAR,
  ref VARCHAR,
  record VARCHAR NOT NULL USING COMPRESSION zstd,
  prev_hash BLOB NOT NULL,
  hash BLOB NOT NULL
)"""
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM {TABLE}"
# Rows per read query when streaming: bounded memory for start-up scans of large logs.
_SCAN_PAGE_ROWS = 4096
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in .*?\(PID \d+\)[^.]*")
# In-process recovery: the first reopen is immediate; after a failed one the wait doubles up
# to the cap (a full disk may take minutes to clear; each attempt is cheap but logs a line).
_RECOVERY_FIRST_WAIT = 0.1
_RECOVERY_MAX_WAIT = 5.0

# One AuditStore per file per process. DuckDB happily gives a second connection in the same
# process to an open file, and two writers would each extend their own head: a forked chain.
_open_paths: set[Path] = set()
_open_paths_lock = threading.Lock()


def connect(path: Path, *, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB audit file, turning lock conflicts into AuditLocked with a clear message."""
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        if "Could not set lock" not in str(exc):
            raise AuditError(f"cannot open audit log {path}: {exc}") from exc
        holder = _LOCK_HOLDER.search(str(exc))
        raise AuditLocked(
            f"audit log {path} is held by another process, normally the running offerdesk "
            f"service ({holder.group(0) if holder else exc}). DuckDB lets only one process "
            "open the file, even read-only, so it cannot be verified or queried from here "
            "while the service runs."
        ) from exc
    except duckdb.ConnectionException as exc:
        if "different configuration" not in str(exc):
            raise AuditError(f"cannot open audit log {path}: {exc}") from exc
        raise AuditLocked(
            f"audit log {path} is open for writing in this process (an AuditStore); "
            "query it through that store or verify a Parquet export."
        ) from exc
    except duckdb.Error as exc:
        # Typically a WAL that fails to replay. The .wal file may hold committed records:
        # it must be copied aside and investigated, never deleted to get the service up.
        raise AuditCorrupt(
            f"cannot open audit log {path}: {exc}. Do not delete {path}.wal: "
            "it may hold committed records."
        ) from exc


@dataclass(frozen=True, slots=True)
class TreeHead:
    """What a checkpoint signs: the log's size, chain head and Merkle root, all at one size."""

    size: int
    chain_head: bytes  # hash of record size-1, or 32 zero bytes for an empty log
    root: bytes  # RFC 6962 root over the first `size` chain hashes (audit.merkle)


@dataclass(frozen=True, slots=True)
class WriterStats:
    """What the writer has done since open (for metrics)."""

    batches: int = 0
    rows: int = 0
    failed_batches: int = 0
    last_batch_rows: int = 0
    last_commit_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class CutRequest:
    """A retention cut (audit.retention): cut records recorded before their kind's cutoff."""

    cutoffs: Mapping[str, datetime]
    retention_days: Mapping[str, int]
    requested_by: str
    now: datetime
    #: write the emptied rows into the file right after (DuckDB CHECKPOINT); a cut made in
    #: steps sets it on the last one only
    checkpoint: bool = True


@dataclass(slots=True)
class _Submission:
    records: list[PreparedRecord]
    future: Future[list[StoredRecord]]
    cut: CutRequest | None = None  # a retention cut, committed on its own
    cut_rows: list[retention.CutRow] = field(default_factory=list)  # what the cut emptied


class AuditStore:
    """The append-only, hash-chained audit log in one DuckDB file. Use ``AuditStore.open``."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        path: Path,
        head: tuple[int, bytes],
        tree: Frontier,
        max_batch_rows: int,
    ) -> None:
        self._con = con
        self._path = path
        self._max_batch_rows = max_batch_rows
        # Replaced as a whole tuple, so a reader never sees a count from one batch and a hash
        # from another.
        self._head = head
        # The Merkle frontier follows the head (writer thread only); its snapshot is replaced
        # as a whole, like the head, so size, chain head and root always belong together.
        self._tree = tree
        self._tree_head = TreeHead(head[0], head[1], tree.root())
        self._stats = WriterStats()
        #: called as fn(rows, seconds) after each commit, on the writer thread (metrics)
        self._commit_observers: list[Callable[[int, float], None]] = []
        self._appender: duckdb.Appender | None = None  # used by the writer thread only
        self._queue: collections.deque[_Submission] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._failure: AuditWriteError | None = None
        self._recoverable = True  # False once recovery found records lost: restart only
        self._watchers: list[Callable[[AuditWriteError | None], None]] = []
        self._close_lock = threading.Lock()
        self._closed = False
        # Reads use their own connections (cursors), never the writer's, so a slow scan
        # cannot sit between a BEGIN and its COMMIT.
        self._read_lock = threading.Lock()
        self._reader = con.cursor()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, path: Path, *, max_batch_rows: int = 1024) -> AuditStore:
        """Open or create the log at ``path`` and start its writer thread.

        A WAL left by an unclean shutdown is copied aside first and the whole chain verified
        read-only before the file is opened for writing (audit.recovery). Raises AuditLocked
        when another process holds the file; any other AuditError says which files are
        involved and what to do, and nothing has been deleted.
        """
        if max_batch_rows < 1:
            raise ValueError("max_batch_rows must be at least 1")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        key = path.resolve()
        with _open_paths_lock:
            if key in _open_paths:
                raise AuditLocked(
                    f"audit log {path} is already open in this process; one AuditStore per "
                    "file, or two writers would fork the chain"
                )
            _open_paths.add(key)
        try:
            con, head, tree = _open_checked(path)
        except BaseException:
            with _open_paths_lock:
                _open_paths.discard(key)
            raise
        return cls(con, key, head, tree, max_batch_rows)

    # -- writing -------------------------------------------------------------------------

    def submit(self, records: Sequence[NewRecord]) -> Future[list[StoredRecord]]:
        """Queue records for the next group commit; the future resolves once they are durable.

        Records are encoded here, in the caller's thread: a record that cannot be encoded
        raises TypeError/ValueError now and nothing of the submission is queued. Raises
        AuditWriteError at once if the store is closed or its connection is broken. The
        future's result is the stored records, contiguous and in submission order; its
        exception is AuditWriteError when the batch did not commit.
        """
        prepared = [prepare(record) for record in records]
        future: Future[list[StoredRecord]] = Future()
        if not prepared:
            future.set_result([])
            return future
        with self._cond:
            if self._failure is not None:
                raise AuditWriteError(f"audit store is broken: {self._failure}") from self._failure
            if self._closing:
                raise AuditWriteError("audit store is closed")
            self._queue.append(_Submission(prepared, future))
            self._cond.notify()
        return future

    def append(self, records: Sequence[NewRecord]) -> list[StoredRecord]:
        """Submit and wait until the records are committed; return them as stored."""
        return self.submit(records).result()

    def cut(self, request: CutRequest) -> tuple[StoredRecord, list[retention.CutRow]]:
        """Run a retention cut; return its chained ``retention`` record and the rows it
        emptied, once durable.

        In one transaction on the writer thread (between group commits): the cut record is
        appended and every earlier row not cut yet whose kind has a cutoff and whose
        ``recorded_at`` is before it keeps only its place in the chain (audit.retention).
        Hashes, Merkle roots and checkpoints do not change. Raises ValueError for a cutoff
        on a protected kind and AuditWriteError when the cut did not commit (then nothing
        was cut).
        """
        protected = sorted(set(request.cutoffs) & retention.PROTECTED_KINDS)
        if protected:
            raise ValueError(f"{', '.join(protected)} records are never cut")
        for kind in request.cutoffs:
            check_kind(kind)
        encode_time(request.now)  # refuses naive times here, in the caller's thread
        future: Future[list[StoredRecord]] = Future()
        with self._cond:
            if self._failure is not None:
                raise AuditWriteError(f"audit store is broken: {self._failure}") from self._failure
            if self._closing:
                raise AuditWriteError("audit store is closed")
            submission = _Submission([], future, request)
            self._queue.append(submission)
            self._cond.notify()
        return future.result()[0], submission.cut_rows

    def cut_step(self, cutoffs: Mapping[str, datetime], max_rows: int) -> datetime | None:
        """A time before which at most about ``max_rows`` rows are due under ``cutoffs``, or
        None when no more than that are due in all: where to split a large cut.

        Any cutoffs no later than the given ones make a valid cut (each cut record cuts all
        it covers), so this only sizes the steps. Rows sharing one time are never split.
        """
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        where, params = _cut_filter(cutoffs)
        cursor = self._cursor()
        try:
            rows = cursor.execute(
                f"SELECT recorded_at FROM {TABLE} WHERE {where} "
                f"ORDER BY recorded_at LIMIT 1 OFFSET {int(max_rows)}",
                params,
            ).fetchall()
            if not rows:
                return None
            (earliest,) = cursor.execute(
                f"SELECT min(recorded_at) FROM {TABLE} WHERE {where}", params
            ).fetchone() or (None,)
        except duckdb.Error as exc:
            raise AuditError(f"audit query failed: {exc}") from exc
        finally:
            cursor.close()
        step = rows[0][0]
        if earliest is not None and step <= earliest:  # more than max_rows at one time
            step = earliest + timedelta(microseconds=1)
        return cast(datetime, step).replace(tzinfo=UTC)

    def due(self, cutoffs: Mapping[str, datetime]) -> dict[str, int]:
        """How many rows a cut with these cutoffs would cut now, per kind (nothing written)."""
        where, params = _cut_filter(cutoffs)
        counts = dict.fromkeys(sorted(cutoffs), 0)
        if not cutoffs:
            return counts
        cursor = self._cursor()
        try:
            rows = cursor.execute(
                f"SELECT kind, count(*) FROM {TABLE} WHERE {where} GROUP BY kind", params
            ).fetchall()
        except duckdb.Error as exc:
            raise AuditError(f"audit query failed: {exc}") from exc
        finally:
            cursor.close()
        counts.update({kind: int(n) for kind, n in rows})
        return counts

    def head(self) -> tuple[int, bytes]:
        """(number of committed records, hash of the last one or 32 zero bytes)."""
        return self._head

    def tree_head(self) -> TreeHead:
        """Size, chain head and Merkle root of the committed log, taken together."""
        return self._tree_head

    def stats(self) -> WriterStats:
        """Counters of the writer since open."""
        return self._stats

    def failure(self) -> AuditWriteError | None:
        """Why writes are refused right now (recovering, or records lost), or None."""
        return self._failure

    def watch(self, callback: Callable[[AuditWriteError | None], None]) -> None:
        """Call ``callback(failure())`` now, and again each time writes stop or resume.

        Called from the writer thread: it must be quick and must not call back into the store.
        """
        self._watchers.append(callback)
        callback(self._failure)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return  # closing, and everything submitted has been handled
                batch = self._take_batch()
            # Outside the condition: submitters keep queueing (the next batch) while this
            # one waits for its fsync.
            if not batch:
                continue
            try:
                if batch[0].cut is not None:
                    self._commit_cut(batch[0], batch[0].cut)
                else:
                    self._commit(batch)
            except BaseException as exc:
                # A bug in the writer must not leave callers waiting forever on futures.
                self._break(f"the writer failed unexpectedly: {exc!r}", exc)
                assert self._failure is not None
                self._fail(batch, self._failure)
            if self._failure is not None:
                self._recover()

    def _take_batch(self) -> list[_Submission]:
        batch: list[_Submission] = []
        rows = 0
        while self._queue and (
            not batch or rows + len(self._queue[0].records) <= self._max_batch_rows
        ):
            if batch and self._queue[0].cut is not None:
                break  # a cut commits on its own
            submission = self._queue.popleft()
            # A caller may cancel a future that is still waiting; once taken it can't be.
            if submission.future.set_running_or_notify_cancel():
                batch.append(submission)
                rows += len(submission.records)
                if submission.cut is not None:
                    break
        return batch

    def _commit(self, batch: list[_Submission]) -> None:
        if self._failure is not None:
            self._fail(batch, self._failure)
            return
        first, prev = self._head
        seq = first
        stored: list[list[StoredRecord]] = []
        for submission in batch:
            chained = []
            for record in submission.records:
                data = record.envelope(seq)
                digest = chain_hash(prev, data)
                chained.append(
                    StoredRecord(
                        seq,
                        record.kind,
                        record.recorded_at,
                        record.subject,
                        record.ref,
                        data,
                        prev,
                        digest,
                    )
                )
                prev, seq = digest, seq + 1
            stored.append(chained)
        rows = [record.as_row() for chained in stored for record in chained]
        started = time.perf_counter()
        try:
            self._write(rows, first)
        except AuditWriteError as exc:
            self._fail(batch, exc)
            return
        elapsed = time.perf_counter() - started
        for chained in stored:
            for done in chained:
                self._tree.append(done.hash)
        self._head = (seq, prev)
        self._tree_head = TreeHead(seq, prev, self._tree.root())
        old = self._stats
        self._stats = WriterStats(
            old.batches + 1, old.rows + len(rows), old.failed_batches, len(rows), elapsed
        )
        for submission, chained in zip(batch, stored, strict=True):
            submission.future.set_result(chained)
        for observe in self._commit_observers:
            try:
                observe(len(rows), elapsed)
            except Exception as exc:  # metrics never fail the writer
                log.warning("audit commit observer failed: %s", exc)

    def _commit_cut(self, submission: _Submission, request: CutRequest) -> None:
        if self._failure is not None:
            self._fail([submission], self._failure)
            return
        first, prev = self._head
        where, params = _cut_filter(request.cutoffs)
        try:
            # Before the transaction, on the writer's own connection: nothing else writes.
            found = self._con.execute(
                f"SELECT seq, kind, recorded_at, hash FROM {TABLE} WHERE seq < ? AND {where} "
                "ORDER BY seq",
                [first, *params],
            ).fetchall()
            cut_rows = [
                retention.CutRow(int(seq), kind, at.replace(tzinfo=UTC), bytes(digest))
                for seq, kind, at, digest in found
            ]
            body = retention.cut_body(
                request.cutoffs,
                cut_rows,
                retention_days=request.retention_days,
                requested_by=request.requested_by,
                now=request.now,
            )
            record = prepare(NewRecord(retention.CUT_KIND, request.now, None, None, body))
        except Exception as exc:
            self._fail([submission], AuditWriteError(f"retention cut not started: {exc}"))
            return
        data = record.envelope(first)
        digest = chain_hash(prev, data)
        stored = StoredRecord(
            first, record.kind, record.recorded_at, None, None, data, prev, digest
        )

        def empty_the_rows() -> None:
            if not cut_rows:
                return
            changed = self._con.execute(
                f"UPDATE {TABLE} SET record = ?, subject = NULL, ref = NULL "
                f"WHERE seq < ? AND {where}",
                [retention.CUT_RECORD, first, *params],
            ).fetchone()
            if changed is None or int(changed[0]) != len(cut_rows):
                raise AuditError(
                    f"the cut emptied {changed and changed[0]} rows, expected {len(cut_rows)}"
                )

        started = time.perf_counter()
        try:
            self._write([stored.as_row()], first, also=empty_the_rows)
        except AuditWriteError as exc:
            self._fail([submission], exc)
            return
        elapsed = time.perf_counter() - started
        self._tree.append(digest)
        self._head = (first + 1, digest)
        self._tree_head = TreeHead(first + 1, digest, self._tree.root())
        old = self._stats
        self._stats = WriterStats(old.batches + 1, old.rows + 1, old.failed_batches, 1, elapsed)
        log.info(
            "retention cut at seq %d: content of %d records removed (%s)",
            first,
            len(cut_rows),
            ", ".join(f"{k} {n}" for k, n in body["count_by_kind"].items()) or "none due",
        )
        submission.cut_rows = cut_rows
        submission.future.set_result([stored])
        if request.checkpoint:
            # Write the emptied rows into the file now rather than at some later commit (an
            # automatic checkpoint would then stall that commit instead). The cut itself is
            # durable already: a refused CHECKPOINT is left to DuckDB's automatic one, and if
            # it broke the database, the next commit fails and the store recovers as usual.
            try:
                self._con.execute("CHECKPOINT")
            except Exception as exc:
                log.warning("audit log %s: CHECKPOINT after a retention cut: %s", self._path, exc)

    def _write(
        self, rows: list[tuple[Any, ...]], first: int, *, also: Callable[[], None] | None = None
    ) -> None:
        """Commit ``rows`` (seqs from ``first``) in one transaction, or raise AuditWriteError.

        ``also`` runs inside the same transaction (a retention cut's UPDATE). Marks the
        store broken when it can no longer tell what is committed.
        """
        con = self._con
        try:
            con.execute("BEGIN TRANSACTION")
            self._append_rows(rows)
            if also is not None:
                also()
            # DuckDB fsyncs its WAL at COMMIT (fsync_mode left at its default, STANDARD):
            # once this returns, the batch survives a crash.
            con.execute("COMMIT")
        except Exception as exc:
            # 2.x has often aborted the transaction already; the count below decides.
            with contextlib.suppress(Exception):
                con.execute("ROLLBACK")
            landed = self._landed(first, exc)
            if landed:
                self._break(f"a failed commit left {landed} rows at seq >= {first}", exc)
            raise AuditWriteError(
                f"audit batch of {len(rows)} records at seq {first} was not committed: {exc}"
            ) from exc
        # Check, never assume: in DuckDB 2.x an error earlier in a transaction aborts it and
        # a later COMMIT returns without error, having committed nothing.
        landed = self._landed(first, None)
        if landed != len(rows):
            if landed:
                self._break(f"committed {landed} of {len(rows)} rows at seq >= {first}", None)
            raise AuditWriteError(
                f"COMMIT returned but {landed} of {len(rows)} records at seq {first} are in "
                "the table (the transaction had been aborted)"
            )

    def _append_rows(self, rows: list[tuple[Any, ...]]) -> None:
        # Kept across batches (creating one costs about as much as the COMMIT's own work);
        # dropped after any failure, since a failed flush leaves its buffer undefined.
        if self._appender is None:
            self._appender = self._con.appender(TABLE)
        try:
            self._appender.append_rows(rows)
            # Constraints are checked here, not at append: a row can be accepted, then fail.
            self._appender.flush()
        except BaseException:
            with contextlib.suppress(Exception):
                self._appender.clear()
            self._appender = None
            raise

    def _landed(self, first: int, cause: BaseException | None) -> int:
        try:
            row = self._con.execute(
                f"SELECT count(*) FROM {TABLE} WHERE seq >= ?", [first]
            ).fetchone()
        except Exception as exc:
            # The connection is unusable (closed, or the database invalidated): what is on
            # disk is unknown from here, so nothing more may be chained onto the head.
            self._break(f"cannot read the table back: {exc}", cause or exc)
            raise AuditWriteError(f"audit store is broken: {exc}") from (cause or exc)
        assert row is not None
        return int(row[0])

    def _break(self, reason: str, cause: BaseException | None) -> None:
        error = AuditWriteError(
            f"audit log {self._path}: {reason}; writes are refused until the store has "
            "reopened the file and re-read the head (it retries by itself)"
        )
        error.__cause__ = cause
        with self._cond:
            first = self._failure is None
            if first:
                self._failure = error
            waiting = list(self._queue)
            self._queue.clear()
        for submission in waiting:
            if submission.future.set_running_or_notify_cancel():
                submission.future.set_exception(error)
        if first:
            log.error("%s", error)
            self._tell(error)

    # -- in-process recovery (writer thread) -----------------------------------------------

    def _recover(self) -> None:
        """Reopen the file until the head it trusted is back, or records are found lost.

        Runs on the writer thread, so nothing commits meanwhile; submitters fail fast because
        ``_failure`` is set. The connection is replaced, never repaired: after a failed fsync
        or checkpoint DuckDB invalidates the whole database instance.
        """
        from audit import recovery  # it builds on this module

        if not self._recoverable:
            return
        self._drop_connections()
        quarantine: Quarantine | None = None
        copied = False
        wait, attempt = _RECOVERY_FIRST_WAIT, 0
        while True:
            attempt += 1
            try:
                if not copied:  # once per episode: later attempts must not pile up copies
                    quarantine = recovery.quarantine_wal(
                        self._path, "in-process recovery: a commit failed or could not be checked"
                    )
                    copied = True
                landed = self._reopen()
            except AuditCorrupt as exc:
                self._lost(recovery.refusal(self._path, quarantine, exc), exc)
                return
            except Exception as exc:
                log.warning(
                    "audit log %s: reopen attempt %d failed (%s); next in %.1fs",
                    self._path,
                    attempt,
                    exc,
                    wait,
                )
            else:
                size, head = self._head
                if quarantine is not None:
                    quarantine.verified(size, head)
                with self._cond:
                    self._failure = None
                log.warning(
                    "audit log %s: reopened after %d attempt(s); %d records, tail verified%s; "
                    "writes resume",
                    self._path,
                    attempt,
                    size,
                    f"; {landed} of them from batches reported as failed (the commit landed)"
                    if landed
                    else "",
                )
                self._tell(None)
                return
            with self._cond:
                if self._cond.wait_for(lambda: self._closing, timeout=wait):
                    return  # closing: the store stays broken and close() releases the file
            wait = min(wait * 2, _RECOVERY_MAX_WAIT)

    def _drop_connections(self) -> None:
        # Every connection goes: a cursor left open keeps the database instance alive, and
        # DuckDB would hand that same invalidated instance back on reopen. Closing the reader
        # closes the cursors made from it (scans and reader() connections then fail).
        with self._read_lock:
            self._appender = None
            for con in (self._reader, self._con):
                with contextlib.suppress(duckdb.Error):
                    con.close()

    def _reopen(self) -> int:
        """Check read-only, open for writing, re-read head and tree; return the records found
        after the trusted head. Raises AuditCorrupt when acknowledged records are gone."""
        from audit import recovery

        trusted = self._tree_head
        # Read-only first: should records be lost, the file has not been opened for writing,
        # so DuckDB has not checkpointed the (short) replay and dropped the WAL.
        checked = recovery.check_log(self._path, (trusted.size, trusted.chain_head))
        con = connect(self._path, read_only=False)
        try:
            head = _read_head(con, self._path)
            if head != checked:
                raise AuditCorrupt(
                    f"audit log {self._path}: {head[0]:,} records when reopened, "
                    f"{checked[0]:,} a moment earlier read-only"
                )
            tree = _read_tree(con, self._path, head, check=trusted)
            reader = con.cursor()
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.close()
            raise
        with self._read_lock:
            self._con, self._reader = con, reader
        self._tree = tree
        self._head = head
        self._tree_head = TreeHead(head[0], head[1], tree.root())
        return head[0] - trusted.size

    def _lost(self, message: str, cause: AuditCorrupt) -> None:
        error = AuditWriteError(f"{message} The store refuses all writes until restarted.")
        error.__cause__ = cause
        with self._cond:
            self._recoverable = False
            self._failure = error
        log.critical("%s", error)
        self._tell(error)

    def _tell(self, failure: AuditWriteError | None) -> None:
        for callback in list(self._watchers):
            try:
                callback(failure)
            except Exception:
                log.exception("audit store watcher failed")

    def _fail(self, batch: list[_Submission], error: AuditWriteError) -> None:
        old = self._stats
        self._stats = WriterStats(
            old.batches,
            old.rows,
            old.failed_batches + 1,
            old.last_batch_rows,
            old.last_commit_seconds,
        )
        for submission in batch:
            if not submission.future.done():
                submission.future.set_exception(error)

    # -- reading (cold paths) ------------------------------------------------------------

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._read_lock:
            if self._closed:
                raise AuditError("audit store is closed")
            try:
                return self._reader.cursor()
            except duckdb.Error as exc:  # closed for recovery, or invalidated
                raise AuditError(f"audit log {self._path} is being reopened: {exc}") from exc

    def _query(self, sql: str, params: Sequence[Any]) -> list[StoredRecord]:
        cursor = self._cursor()
        try:
            return [_stored(row) for row in cursor.execute(sql, list(params)).fetchall()]
        except duckdb.Error as exc:
            raise AuditError(f"audit query failed: {exc}") from exc
        finally:
            cursor.close()

    def scan(
        self, kinds: Collection[str] | None = None, since: datetime | None = None
    ) -> Iterator[StoredRecord]:
        """Committed records in seq order, optionally only some kinds / recorded since a time.

        Streams in pages of seq ranges up to the head at the time of the call, so memory
        stays bounded however long the log is.
        """
        filters = ""
        params: list[Any] = []
        if kinds is not None:
            wanted = sorted({check_kind(kind) for kind in kinds})
            if not wanted:
                return
            filters += f" AND kind IN ({', '.join('?' * len(wanted))})"
            params += wanted
        if since is not None:
            encode_time(since)  # refuses naive datetimes with a clear message
            filters += " AND recorded_at >= ?"
            params.append(since.astimezone(UTC).replace(tzinfo=None))
        end = self._head[0]
        cursor = self._cursor()
        sql = f"{_SELECT} WHERE seq >= ? AND seq < ?{filters} ORDER BY seq"
        try:
            for low in range(0, end, _SCAN_PAGE_ROWS):
                high = min(low + _SCAN_PAGE_ROWS, end)
                try:
                    rows = cursor.execute(sql, [low, high, *params]).fetchall()
                except duckdb.Error as exc:
                    raise AuditError(f"audit scan failed at seq {low}: {exc}") from exc
                for row in rows:
                    yield _stored(row)
        finally:
            cursor.close()

    def on_commit(self, observe: Callable[[int, float], None]) -> None:
        """Call observe(rows, seconds) after each commit, on the writer thread (keep it quick)."""
        self._commit_observers.append(observe)

    def scan_fields(
        self, shape: str, kinds: Collection[str]
    ) -> Iterator[tuple[int, str, str | None, dict[str, Any]]]:
        """(seq, kind, subject, fields) of the committed, uncut records of `kinds`, in seq order.

        `fields` is the record's JSON read through DuckDB's json_transform with `shape` (a JSON
        structure of the wanted keys and their types): one parse per record in DuckDB instead
        of json.loads of the whole record in Python. Keys the record lacks come back None.
        Streams in pages of seq ranges, like scan.
        """
        wanted = sorted({check_kind(kind) for kind in kinds})
        if not wanted:
            return
        end = self._head[0]
        cursor = self._cursor()
        sql = (
            f"SELECT seq, kind, subject, json_transform(record, ?) FROM {TABLE} "
            f"WHERE seq >= ? AND seq < ? AND record <> '' "
            f"AND kind IN ({', '.join('?' * len(wanted))}) ORDER BY seq"
        )
        try:
            for low in range(0, end, _SCAN_PAGE_ROWS * 4):
                high = min(low + _SCAN_PAGE_ROWS * 4, end)
                try:
                    rows = cursor.execute(sql, [shape, low, high, *wanted]).fetchall()
                except duckdb.Error as exc:
                    raise AuditError(f"audit scan failed at seq {low}: {exc}") from exc
                for seq, kind, subject, fields in rows:
                    yield int(seq), kind, subject, fields
        finally:
            cursor.close()

    def reader(self) -> duckdb.DuckDBPyConnection:
        """A new read-only-by-convention connection to the log, for compliance queries.

        The caller closes it. It shares the writer's database (DuckDB allows no second
        process on the file), sees committed records only, and must never write.
        """
        return self._cursor()

    def chain_hashes(self, size: int) -> list[bytes]:
        """The chain hashes of records 0..size-1 (the Merkle leaves), in seq order."""
        if not 0 <= size <= self._head[0]:
            raise ValueError(f"size {size} is not between 0 and {self._head[0]}")
        cursor = self._cursor()
        try:
            rows = cursor.execute(
                f"SELECT hash FROM {TABLE} WHERE seq < ? ORDER BY seq", [size]
            ).fetchall()
        except duckdb.Error as exc:
            raise AuditError(f"audit query failed: {exc}") from exc
        finally:
            cursor.close()
        return [bytes(row[0]) for row in rows]

    def get(self, seq: int) -> StoredRecord | None:
        """The record at ``seq``, or None."""
        found = self._query(f"{_SELECT} WHERE seq = ?", [seq])
        return found[0] if found else None

    def find(self, kind: str, ref: str) -> StoredRecord | None:
        """The latest record of ``kind`` with ``ref`` (a full scan: no indexes by design)."""
        found = self._query(
            f"{_SELECT} WHERE kind = ? AND ref = ? ORDER BY seq DESC LIMIT 1", [kind, ref]
        )
        return found[0] if found else None

    def find_all(self, kind: str, ref: str) -> list[StoredRecord]:
        """Every record of ``kind`` with ``ref``, in seq order."""
        return self._query(f"{_SELECT} WHERE kind = ? AND ref = ? ORDER BY seq", [kind, ref])

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is waiting, stop the writer and release the file. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._thread.join()
            with self._read_lock:
                self._closed = True
            for con in (self._reader, self._con):
                # Already closed underneath us is fine: the file is released either way.
                with contextlib.suppress(duckdb.Error):
                    con.close()
            with _open_paths_lock:
                _open_paths.discard(self._path)

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _cut_filter(cutoffs: Mapping[str, datetime]) -> tuple[str, list[Any]]:
    """SQL and parameters for the rows a cut with these cutoffs takes (not cut yet)."""
    if not cutoffs:
        return "false", []
    terms, params = [], []
    for kind, before in sorted(cutoffs.items()):
        terms.append("(kind = ? AND recorded_at < ?)")
        params += [kind, before.astimezone(UTC).replace(tzinfo=None)]
    return f"({' OR '.join(terms)}) AND record <> ?", [*params, retention.CUT_RECORD]


def _read_head(con: duckdb.DuckDBPyConnection, path: Path) -> tuple[int, bytes]:
    try:
        con.execute(SCHEMA)
        row = con.execute(
            f"SELECT count(*), min(seq), max(seq), arg_max(hash, seq) FROM {TABLE}"
        ).fetchone()
    except duckdb.Error as exc:
        raise AuditCorrupt(f"cannot read the head of audit log {path}: {exc}") from exc
    assert row is not None
    count, low, high, last = row
    if count == 0:
        return 0, GENESIS_HASH
    # A cheap start-up sanity check (the full one is verify_file): refuse to extend a log
    # whose seqs are not 0..count-1, rather than chain onto a head that is not the end.
    if low != 0 or high != count - 1 or not isinstance(last, bytes) or len(last) != 32:
        raise AuditCorrupt(
            f"audit log {path} has {count} records with seq {low}..{high}: not contiguous "
            "from 0; run verify on a copy before writing to it again"
        )
    return int(count), bytes(last)


def _read_tree(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    head: tuple[int, bytes],
    *,
    check: TreeHead | None = None,
) -> Frontier:
    """The Merkle frontier of the whole log, from the hash column alone (32 bytes a row).

    With ``check`` (what the store held before a reopen), the first ``check.size`` hashes must
    have ``check.root``: the acknowledged records came back exactly.
    """
    tree = Frontier()

    def _at_check() -> None:
        if check is not None and tree.size == check.size and tree.root() != check.root:
            raise AuditCorrupt(
                f"DATA LOSS: audit log {path}: the first {check.size:,} records read back do "
                "not have the Merkle root the store held (acknowledged records changed)"
            )

    try:
        cursor = con.execute(f"SELECT hash FROM {TABLE} ORDER BY seq")
        while rows := cursor.fetchmany(_SCAN_PAGE_ROWS * 16):
            for (digest,) in rows:
                _at_check()
                tree.append(bytes(digest))
    except duckdb.Error as exc:
        raise AuditCorrupt(f"cannot read the hashes of audit log {path}: {exc}") from exc
    _at_check()
    if tree.size != head[0]:
        raise AuditCorrupt(f"audit log {path}: read {tree.size} hashes of {head[0]} records")
    return tree


def _open_checked(path: Path) -> tuple[duckdb.DuckDBPyConnection, tuple[int, bytes], Frontier]:
    """Open ``path`` for writing; after an unclean shutdown copy the WAL aside and verify first."""
    from audit import recovery  # it builds on this module (and on audit.verify, which does too)

    quarantine: Quarantine | None = None
    try:
        quarantine = recovery.quarantine_wal(
            path, "found at open: the last process did not close the log cleanly"
        )
        # The whole chain, read-only, before DuckDB may checkpoint the replay and drop the
        # WAL: there is no trusted point to start from after a crash, and it only happens
        # then, at about half the cost of the state rebuild that follows every start.
        checked = recovery.check_log(path, None) if quarantine else None
        con = connect(path, read_only=False)
        try:
            head = _read_head(con, path)
            if checked is not None and head != checked:
                raise AuditCorrupt(
                    f"opened with {head[0]:,} records, but {checked[0]:,} verified read-only "
                    "a moment earlier"
                )
            tree = _read_tree(con, path, head)
        except BaseException:
            con.close()
            raise
    except AuditLocked:
        if quarantine is not None:
            quarantine.discard()  # the WAL of a live process, not one left by a crash
        raise
    except AuditError as exc:
        kind = AuditCorrupt if isinstance(exc, AuditCorrupt) else AuditError
        raise kind(recovery.refusal(path, quarantine, exc)) from exc
    if quarantine is not None:
        quarantine.verified(*head)
        log.warning(
            "audit log %s: opened after an unclean shutdown; all %s records verify; the WAL "
            "copy %s is kept (the newest %d verified copies are)",
            path,
            f"{head[0]:,}",
            quarantine.copy,
            recovery.KEEP_VERIFIED,
        )
    return con, head, tree


def _stored(row: tuple[Any, ...]) -> StoredRecord:
    seq, kind, recorded_at, subject, ref, record, prev_hash, digest = row
    return StoredRecord(
        seq=int(seq),
        kind=kind,
        recorded_at=recorded_at.replace(tzinfo=UTC),
        subject=subject,
        ref=ref,
        record=record.encode("utf-8"),
        prev_hash=bytes(prev_hash),
        hash=bytes(digest),
    )
