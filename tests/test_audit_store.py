"""The group-commit writer and cold reads of audit/store.py, against real DuckDB files."""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from audit import store as store_module
from audit.errors import AuditCorrupt, AuditLocked, AuditWriteError
from audit.records import GENESIS_HASH, NewRecord, StoredRecord, chain_hash
from audit.store import AuditStore
from audit.verify import verify_file

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def rec(n: int, kind: str = "decision", ref: str | None = None, **body: Any) -> NewRecord:
    return NewRecord(kind, T0 + timedelta(seconds=n), "p_subject", ref, {"n": n, **body})


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "audit.duckdb"


@pytest.fixture
def store(path: Path) -> Iterator[AuditStore]:
    with AuditStore.open(path) as s:
        yield s


def assert_chained(records: list[StoredRecord], first: int, prev: bytes) -> None:
    for offset, stored in enumerate(records):
        assert stored.seq == first + offset
        assert stored.prev_hash == prev
        assert stored.hash == chain_hash(prev, stored.record)
        prev = stored.hash


def table_count(path: Path) -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        row = con.execute("SELECT count(*) FROM audit_records").fetchone()
        assert row is not None
        return int(row[0])
    finally:
        con.close()


def test_records_get_contiguous_seqs_and_link_into_a_chain(store: AuditStore) -> None:
    first = store.append([rec(0), rec(1), rec(2)])
    second = store.append([rec(3), rec(4)])
    assert_chained(first + second, 0, GENESIS_HASH)
    assert store.head() == (5, second[-1].hash)
    assert store.get(3) == second[0]
    assert store.get(5) is None
    assert second[0].recorded_at == T0 + timedelta(seconds=3)
    assert second[0].body == {"n": 3}


def test_concurrent_submissions_land_exactly_once_and_contiguously(
    store: AuditStore, path: Path
) -> None:
    threads, per_thread, per_submission = 16, 50, 5
    results: dict[tuple[int, int], list[StoredRecord]] = {}
    lock = threading.Lock()

    def writer(t: int) -> None:
        for s in range(per_thread // per_submission):
            batch = [rec(i, t=t, s=s) for i in range(per_submission)]
            stored = store.append(batch)
            with lock:
                results[(t, s)] = stored

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()

    total = threads * per_thread
    seqs = sorted(r.seq for stored in results.values() for r in stored)
    assert seqs == list(range(total))
    for (t, s), stored in results.items():
        # one submission: contiguous, in order, and the records it was given
        assert [r.seq for r in stored] == list(range(stored[0].seq, stored[0].seq + 5))
        assert [r.body for r in stored] == [{"n": i, "t": t, "s": s} for i in range(5)]
    assert store.head()[0] == total
    stats = store.stats()
    assert stats.rows == total
    # grouping happened: fewer transactions than submissions
    assert stats.batches < len(results)
    scanned = list(store.scan())
    assert [r.seq for r in scanned] == list(range(total))
    store.close()
    report = verify_file(path)
    assert report.ok, report.problem
    assert report.count == total


def test_reopen_restores_the_head_and_continues_the_chain(path: Path) -> None:
    with AuditStore.open(path) as s:
        before = s.append([rec(0), rec(1)])
    with AuditStore.open(path) as s:
        assert s.head() == (2, before[-1].hash)
        after = s.append([rec(2)])
    assert_chained(before + after, 0, GENESIS_HASH)
    assert verify_file(path).count == 3


def test_an_unencodable_record_is_refused_at_submit_and_nothing_is_queued(
    store: AuditStore,
) -> None:
    bad = NewRecord("decision", T0, None, None, {"inputs": {"now": datetime.now(UTC)}})
    with pytest.raises(TypeError, match=r"body\.inputs\.now"):
        store.submit([rec(0), bad])
    assert store.head() == (0, GENESIS_HASH)
    assert store.append([rec(1)])[0].seq == 0


def _wrap_append(store: AuditStore, monkeypatch: pytest.MonkeyPatch, after: Any) -> list[int]:
    """Replace the store's append step by: real append, then ``after(rows)``; once only."""
    real = store._append_rows
    calls: list[int] = []

    def wrapped(rows: list[tuple[Any, ...]]) -> None:
        real(rows)
        calls.append(len(rows))
        if len(calls) == 1:
            after(rows)

    monkeypatch.setattr(store, "_append_rows", wrapped)
    return calls


def test_a_failed_commit_fails_its_futures_and_keeps_the_head(
    store: AuditStore, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    committed = store.append([rec(0), rec(1)])
    head = store.head()

    def explode(rows: list[tuple[Any, ...]]) -> None:
        raise RuntimeError("simulated failure after the rows were flushed")

    _wrap_append(store, monkeypatch, explode)
    future = store.submit([rec(2), rec(3)])
    with pytest.raises(AuditWriteError, match="was not committed"):
        future.result(timeout=10)
    assert store.head() == head
    assert [r.seq for r in store.scan()] == [0, 1]  # the flushed rows were rolled back
    assert store.stats().failed_batches == 1

    nxt = store.append([rec(4)])
    assert_chained(committed + nxt, 0, GENESIS_HASH)
    store.close()
    report = verify_file(path)
    assert report.ok and report.count == 3


def test_a_real_duckdb_constraint_error_rolls_back_and_the_writer_recovers(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append([rec(0)])
    real = store._append_rows
    broken_once: list[bool] = []

    def null_record(rows: list[tuple[Any, ...]]) -> None:
        if not broken_once:
            broken_once.append(True)
            rows = [*rows[:-1], (*rows[-1][:5], None, *rows[-1][6:])]  # record NOT NULL
        real(rows)

    monkeypatch.setattr(store, "_append_rows", null_record)
    with pytest.raises(AuditWriteError, match="NOT NULL"):
        store.append([rec(1), rec(2)])
    assert store.head()[0] == 1
    assert [r.seq for r in store.append([rec(3)])] == [1]
    assert [r.body["n"] for r in store.scan()] == [0, 3]


def test_a_silently_aborted_transaction_is_not_acknowledged(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB 2.x: after an error inside a transaction, COMMIT returns and commits nothing."""
    store.append([rec(0)])

    def swallowed_error(rows: list[tuple[Any, ...]]) -> None:
        # The bug being simulated: an error swallowed inside the transaction.
        with contextlib.suppress(duckdb.Error):
            store._con.execute("SELECT no_such_column")

    _wrap_append(store, monkeypatch, swallowed_error)
    with pytest.raises(AuditWriteError, match="COMMIT returned but 0 of 1"):
        store.append([rec(1)])
    assert store.head()[0] == 1
    assert store.append([rec(2)])[0].seq == 1


def test_a_connection_closed_underneath_breaks_the_store_and_later_submits_fail_fast(
    store: AuditStore,
) -> None:
    store.append([rec(0)])
    head = store.head()
    store._con.close()
    with pytest.raises(AuditWriteError):
        store.submit([rec(1)]).result(timeout=10)
    assert store.head() == head
    started = time.monotonic()
    with pytest.raises(AuditWriteError, match="broken"):
        store.submit([rec(2)])
    assert time.monotonic() - started < 1
    store.close()
    store.close()


def test_close_commits_what_is_waiting_then_refuses_more(path: Path) -> None:
    s = AuditStore.open(path)
    futures = [s.submit([rec(i)]) for i in range(200)]
    s.close()
    assert all(f.done() for f in futures)
    assert sorted(f.result()[0].seq for f in futures) == list(range(200))
    with pytest.raises(AuditWriteError, match="closed"):
        s.submit([rec(0)])
    s.close()  # idempotent
    assert table_count(path) == 200


def test_a_cancelled_waiting_submission_is_not_written(path: Path) -> None:
    s = AuditStore.open(path)
    release = threading.Event()
    real = s._append_rows

    def slow(rows: list[tuple[Any, ...]]) -> None:
        release.wait(10)
        real(rows)

    s._append_rows = slow  # type: ignore[method-assign]
    first = s.submit([rec(0)])
    time.sleep(0.05)  # the writer has taken `first` and is blocked in it
    cancelled: Future[list[StoredRecord]] = s.submit([rec(1)])
    assert cancelled.cancel()
    release.set()
    assert first.result(timeout=10)[0].seq == 0
    assert s.append([rec(2)])[0].seq == 1
    s.close()


def test_a_second_process_gets_audit_locked_naming_the_service(path: Path) -> None:
    with AuditStore.open(path) as s:
        s.append([rec(0)])
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, duckdb
                con = duckdb.connect({str(path)!r})
                print("ready", flush=True)
                sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(AuditLocked, match=r"offerdesk service .*PID \d+") as locked:
            AuditStore.open(path)
        assert "cannot be verified or queried from here" in str(locked.value)
        with pytest.raises(AuditLocked, match="offerdesk service"):
            verify_file(path)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
    with AuditStore.open(path) as s:  # released with the holder
        assert s.head()[0] == 1


def test_the_same_file_cannot_be_opened_twice_in_one_process(store: AuditStore, path: Path) -> None:
    with pytest.raises(AuditLocked, match="fork the chain"):
        AuditStore.open(path)


def test_a_log_with_a_gap_is_refused_at_open(path: Path) -> None:
    with AuditStore.open(path) as s:
        s.append([rec(i) for i in range(5)])
    con = duckdb.connect(str(path))
    con.execute("DELETE FROM audit_records WHERE seq = 2")
    con.close()
    with pytest.raises(AuditCorrupt, match="not contiguous"):
        AuditStore.open(path)
    # and the refusal released the file
    assert table_count(path) == 4


def test_scan_streams_in_seq_order_filtered_by_kind_and_time(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "_SCAN_PAGE_ROWS", 3)  # many pages
    kinds = ["decision", "outcome", "consent"]
    store.append([rec(i, kind=kinds[i % 3]) for i in range(20)])
    assert [r.seq for r in store.scan()] == list(range(20))
    outcomes = list(store.scan(kinds=["outcome", "consent"]))
    assert [r.seq for r in outcomes] == [i for i in range(20) if i % 3]
    recent = list(store.scan(kinds={"decision"}, since=T0 + timedelta(seconds=10)))
    assert [r.seq for r in recent] == [12, 15, 18]
    assert list(store.scan(kinds=[])) == []
    with pytest.raises(ValueError, match="naive"):
        list(store.scan(since=datetime(2026, 1, 1)))


def test_find_returns_the_latest_record_with_a_ref(store: AuditStore) -> None:
    store.append([rec(0, ref="r1"), rec(1, kind="outcome", ref="r1"), rec(2, ref="r1")])
    store.append([rec(3, ref="r2")])
    found = store.find("decision", "r1")
    assert found is not None and found.seq == 2
    assert [r.seq for r in store.find_all("decision", "r1")] == [0, 2]
    assert store.find("decision", "nope") is None


def test_reads_run_alongside_the_writer(store: AuditStore) -> None:
    stop = threading.Event()
    seen: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            seen.append(sum(1 for _ in store.scan()))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(100):
        store.append([rec(i)])
    stop.set()
    t.join()
    assert seen == sorted(seen)  # reads see a growing, committed prefix
    assert store.head()[0] == 100


def test_group_commit_throughput(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 threads, one record per submission: how many rows per second, in what batches.

    Prints its figures (run with -s); asserts only that grouping happened and the file
    verifies, since timings depend on the machine.
    """
    threads, per_thread = 8, 150
    s = AuditStore.open(path)
    batches: list[tuple[int, float]] = []
    real_write = s._write

    def timed(rows: list[tuple[Any, ...]], first: int) -> None:
        started = time.perf_counter()
        real_write(rows, first)
        batches.append((len(rows), time.perf_counter() - started))

    monkeypatch.setattr(s, "_write", timed)

    def writer(t: int) -> None:
        for i in range(per_thread):
            s.append([rec(i, t=t)])

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    s.close()

    sizes = [n for n, _ in batches]
    commit_ms = sorted(seconds * 1000 for _, seconds in batches)
    print(
        f"\ngroup commit, {threads} threads x {per_thread}: "
        f"{threads * per_thread / elapsed:.0f} rows/s, {len(batches)} batches, "
        f"batch size median {statistics.median(sizes)} max {max(sizes)}, "
        f"commit ms median {statistics.median(commit_ms):.2f} "
        f"p99 {commit_ms[int(len(commit_ms) * 0.99)]:.2f}"
    )
    assert sum(sizes) == threads * per_thread
    assert max(sizes) > 1
    assert verify_file(path).count == threads * per_thread
