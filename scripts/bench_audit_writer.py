"""Writer benchmark: many concurrent writers, each waiting until its record is durable.

Not through Decide: threads call AuditStore.append() with one ~1 KB record each and wait for
the group commit (one WAL fsync per batch) before sending the next. Prints, per writer
count: records/s, mean batch size, commits/s, append latency p50/p99, and the floor (one
fsync of a small file on the same disk).

    .venv/bin/python scripts/bench_audit_writer.py --writers 8 32 64 128 --seconds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from audit.records import NewRecord
from audit.store import AuditStore

BODY = {
    "decision_id": "d_" + "0" * 24,
    "outcome": "declined",
    "decline_reason": "not_interested",
    "agent_id": "agent-42",
    "payload": "x" * 900,
}


def fsync_floor(directory: Path, n: int = 200) -> float:
    """Median seconds of write(4 KB) + fsync on the benchmark's disk."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times)


def run(directory: Path, writers: int, seconds: float) -> dict[str, float]:
    path = directory / f"bench-{writers}.duckdb"
    store = AuditStore.open(path, max_batch_rows=4096)
    record = NewRecord("outcome", datetime.now(UTC), "p_" + "a" * 26, "d_bench", BODY)
    latencies: list[list[float]] = [[] for _ in range(writers)]
    stop = threading.Event()

    def writer(mine: list[float]) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            store.append([record])
            mine.append(time.perf_counter() - started)

    threads = [threading.Thread(target=writer, args=(latencies[i],)) for i in range(writers)]
    before = store.stats()
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    after = store.stats()
    store.close()
    rows = after.rows - before.rows
    batches = after.batches - before.batches
    flat = sorted(x for mine in latencies for x in mine)
    return {
        "writers": writers,
        "records_per_s": rows / elapsed,
        "commits_per_s": batches / elapsed,
        "mean_batch": rows / batches if batches else 0.0,
        "p50_ms": flat[len(flat) // 2] * 1e3,
        "p99_ms": flat[int(len(flat) * 0.99)] * 1e3,
        "cpu_s_per_1k": 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, nargs="+", default=[8, 32, 64, 128])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3, help="runs per writer count")
    parser.add_argument("--dir", type=Path, default=None, help="directory on the disk to test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir or Path("var")) as tmp:
        directory = Path(tmp)
        floor = fsync_floor(directory)
        print(f"floor: write 4 KB + fsync on {directory}: median {floor * 1e3:.2f} ms")
        print(
            f"{'writers':>7} {'records/s':>10} {'commits/s':>9} {'batch':>6} "
            f"{'p50 ms':>7} {'p99 ms':>7}   (median of {args.runs} runs of {args.seconds:g} s)"
        )
        for writers in args.writers:
            results = []
            for run_no in range(args.runs):
                cpu = time.process_time()
                result = run(directory, writers, args.seconds)
                result["cpu_s_per_1k"] = (time.process_time() - cpu) / max(
                    result["records_per_s"] * args.seconds / 1000, 1e-9
                )
                results.append(result)
                (directory / f"bench-{writers}.duckdb").unlink()
                del run_no
            med = {k: statistics.median(r[k] for r in results) for k in results[0]}
            spread = f"{min(r['records_per_s'] for r in results):,.0f}–" + (
                f"{max(r['records_per_s'] for r in results):,.0f}"
            )
            print(
                f"{writers:>7} {med['records_per_s']:>10,.0f} {med['commits_per_s']:>9,.0f} "
                f"{med['mean_batch']:>6.1f} {med['p50_ms']:>7.2f} {med['p99_ms']:>7.2f}   "
                f"range {spread} rec/s, CPU {med['cpu_s_per_1k'] * 1e3:.0f} ms per 1k records"
            )


if __name__ == "__main__":
    main()
