"""What a retention cut costs on a big log: the cut itself, how long it holds writers, and
verify afterwards.

Copies a log built by scripts/bench_audit_scale.py (var/bench/log-N.duckdb, 365 days of
records ending when it was built), then on the copy, with one writer thread appending ~1 KB
records and waiting for each to be durable (as Decide does):
  first cut   decisions and outcomes older than --days (a backlog: about 365 - days days)
  daily cut   the same a day later (what the periodic job does each day)
  empty cut   again at once: nothing due, the scan alone
Cuts go through service.retention.cut (steps of STEP_ROWS rows), or with --one-step
straight to the store in one transaction.
and prints each cut's time, the time until the writer is free again (the cut, then DuckDB's
CHECKPOINT that follows a cut which emptied rows), the rows it cut, and the writer's append
latency p50 / max meanwhile (max = how long writers stalled). Then verifies the cut log against its
checkpoints and prints that time beside the uncut log's.

    .venv/bin/python scripts/bench_retention.py --records 1000000 --days 335
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from audit import retention
from audit.checkpoint import CheckpointLog, KeyRing
from audit.records import NewRecord
from audit.store import AuditStore, CutRequest
from audit.verify import verify_file
from service import retention as service_retention
from service.catalog import load_catalog
from service.cli import EXAMPLE_CATALOG

BODY = {"decision_id": "d_" + "0" * 24, "outcome": "declined", "payload": "x" * 900}


class Writer:
    """One thread appending records one at a time, noting each append's latency."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store
        self.latencies: list[tuple[float, float]] = []  # (started, seconds)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            self.store.append([NewRecord("outcome", datetime.now(UTC), None, "r_x", BODY)])
            self.latencies.append((started, time.perf_counter() - started))

    def during(self, begin: float, end: float) -> list[float]:
        return [s for t, s in self.latencies if t + s >= begin and t <= end]


def latest_end(path: Path) -> datetime:
    con = duckdb.connect(str(path), read_only=True)
    try:
        (end,) = con.execute("SELECT max(recorded_at) FROM audit_records").fetchone()  # type: ignore[misc]
    finally:
        con.close()
    return end.replace(tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=335)
    parser.add_argument("--dir", type=Path, default=Path("var/bench"))
    parser.add_argument("--step-rows", type=int, default=service_retention.STEP_ROWS)
    parser.add_argument(
        "--one-step", action="store_true", help="one transaction per cut (no steps)"
    )
    args = parser.parse_args()
    source = args.dir / f"log-{args.records}.duckdb"
    checkpoints_path = source.with_name(source.stem + ".checkpoints.jsonl")
    if not source.exists():
        raise SystemExit(f"{source} missing: run scripts/bench_audit_scale.py first")
    keys = KeyRing.open(args.dir / "keys", "offerdesk.bench/log")
    signed = [s.checkpoint for s in CheckpointLog.read(checkpoints_path, keys.verifier_keys())]
    copy = args.dir / f"retention-{args.records}.duckdb"
    copy.unlink(missing_ok=True)
    shutil.copy(source, copy)

    started = time.perf_counter()
    uncut = verify_file(copy, signed)
    uncut_seconds = time.perf_counter() - started
    assert uncut.ok, uncut.problem

    # The log's own clock: its last record was written "now" when it was built.
    now = latest_end(copy) + timedelta(minutes=1)
    store = AuditStore.open(copy)
    writer = Writer(store)
    writer.thread.start()
    time.sleep(1.0)
    periods = {"decision": args.days, "outcome": args.days}
    contact = load_catalog(EXAMPLE_CATALOG).policy.contact
    print(f"log of {uncut.count:,} records; periods {periods}")
    print(
        f"{'cut':>10} {'cut s':>8} {'+ckpt s':>11} {'rows cut':>9} {'writer p50 ms':>14} "
        f"{'writer max ms':>14}"
    )
    for name, at in (("first", now), ("daily", now + timedelta(days=1)), ("empty", None)):
        at = at or now + timedelta(days=1, seconds=1)
        begin = time.perf_counter()
        if args.one_step:
            request = CutRequest(retention.cutoffs(periods, at), periods, "bench", at)
            cut = len(store.cut(request)[1])
        else:
            cut = service_retention.cut(
                store, periods, "bench", at, contact, step_rows=args.step_rows
            ).count
        end = time.perf_counter()
        # The writer thread runs DuckDB's CHECKPOINT after a cut that emptied rows: an append
        # queued now returns once that is done too.
        store.append([NewRecord("outcome", datetime.now(UTC), None, "r_marker", BODY)])
        free = time.perf_counter()
        time.sleep(0.2)
        seen = writer.during(begin, free)
        p50 = statistics.median(seen) * 1e3 if seen else float("nan")
        worst = max(seen) * 1e3 if seen else float("nan")
        print(
            f"{name:>10} {end - begin:>8.2f} {free - begin:>11.2f} {cut:>9,} "
            f"{p50:>14.1f} {worst:>14.1f}"
        )
    writer.stop.set()
    writer.thread.join()
    before = [s for _, s in writer.latencies]
    print(
        f"writer appends: {len(before):,}, "
        f"p50 {statistics.median(before) * 1e3:.1f} ms over the run"
    )
    store.close()

    started = time.perf_counter()
    report = verify_file(copy, signed)
    cut_seconds = time.perf_counter() - started
    assert report.ok, report.problem
    print(
        f"verify: {uncut_seconds:.2f} s before the cuts, {cut_seconds:.2f} s after "
        f"({report.count:,} records, {report.checkpoints} checkpoints)"
    )
    copy.unlink()


if __name__ == "__main__":
    main()
