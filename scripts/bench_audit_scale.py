"""How the audit log's cold paths grow from 10k to 1M records: verify, start-up, why, proofs.

Builds each log once with scripts/build_big_log.py (cached under var/bench/, reused while
it exists), signs a checkpoint every 1,000 records with a throwaway key, then times:
  verify      verify_file against every checkpoint (the single streaming pass)
  open        AuditStore.open: head, and the Merkle frontier from the hash column
  why         audit.why.why() for one customer (median over 20 customers)
  prove       chain hashes + one inclusion proof against the newest checkpoint
Prints medians (and the range of verify) of --runs runs and the growth from one size to the
next. Two record mixes:
  builder     build_big_log as it is: ~72% decisions, ~4.0 KB/record
  service     what the service writes: every decision gets an outcome, consent re-checks;
              ~38% decisions, ~2.2 KB/record
--rss also runs one verify per log in a child process and reports its peak RSS.

    .venv/bin/python scripts/bench_audit_scale.py --records 10000 100000 1000000 --runs 3
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))

import build_big_log
from build_big_log import build

from audit.checkpoint import Checkpoint, CheckpointLog, KeyRing, sign
from audit.merkle import Frontier, inclusion_proof
from audit.store import SCHEMA, AuditStore
from audit.verify import verify_file
from audit.why import why

SEAL_EVERY = 1000
# Records per decision each mix writes (measured on the built logs: 97,646 records from
# 71,942 decisions for the builder, 94,647 from 38,022 for the service mix).
RECORDS_PER_DECISION = {"builder": 1.357, "service": 2.65}
PATHS = ("verify", "open", "why", "prove")


class _ServiceMix(build_big_log._Builder):
    """The builder's records, plus what the service also writes around each decision.

    Every decision gets an outcome (the builder only logs one for 60% of offers) and a
    consent re-check follows two in three, so decisions are ~38% of the records, as
    in the service's own logs. Only the mix changes; record shapes stay the builder's.
    """

    def records(self, decisions: int, start: datetime, step: Any) -> Iterator[Any]:
        pending: tuple[Any, ...] | None = None  # the last decision, until it has an outcome
        for kind, at, subject, ref, body in super().records(decisions, start, step):
            if kind == "decision":
                yield from self._follow_up(pending)
                pending = (at, subject, ref, body)
            elif kind == "outcome":
                pending = None
            yield kind, at, subject, ref, body
        yield from self._follow_up(pending)

    def _follow_up(self, pending: tuple[Any, ...] | None) -> Iterator[Any]:
        if pending is None:
            return
        at, subject, ref, body = pending
        outcome = {
            "agent_id": body["agent_id"],
            "decision_id": ref,
            "decision_seq": -1,  # patched by build()
            "decline_reason": None,
            "has_note": False,
            "occurred_at": build_big_log.encode_time(at),
            "outcome": "not_presented",
        }
        yield "outcome", at, subject, ref, outcome
        if self.rng.random() < 0.65:
            consent = {
                "marketing_consent": body["inputs"]["customer"]["marketing_consent"],
                "observed_at": build_big_log.encode_time(at),
                "source": "profile_source",
            }
            yield "consent", at, subject, None, consent


def prepare(directory: Path, records: int, mix: str) -> tuple[Path, list[Checkpoint]]:
    # The schema is part of the name: a log cached under an older one is not what a fresh
    # service writes (e.g. the record column's compression).
    tag = hashlib.sha256(SCHEMA.encode()).hexdigest()[:8]
    name = f"log-{records}" if mix == "builder" else f"log-{mix}-{records}"
    name = f"{name}-{tag}"
    path = directory / f"{name}.duckdb"
    checkpoints = directory / f"{name}.checkpoints.jsonl"
    keys = KeyRing.open(directory / "keys", "offerdesk.bench/log")
    if not path.exists():
        started = time.perf_counter()
        builder = _ServiceMix if mix == "service" else build_big_log._Builder
        # build() has no mix option; swap the builder class it instantiates for this call.
        with mock.patch.object(build_big_log, "_Builder", builder):
            built = build(
                path,
                decisions=max(1, int(records / RECORDS_PER_DECISION[mix])),
                customers=max(10, records // 25),
            )
        print(f"built {built:,} records in {time.perf_counter() - started:.1f} s → {path}")
        checkpoints.unlink(missing_ok=True)
    if not checkpoints.exists():
        con = duckdb.connect(str(path), read_only=True)
        hashes = [
            bytes(r[0])
            for r in con.execute("SELECT hash FROM audit_records ORDER BY seq").fetchall()
        ]
        con.close()
        tree, out = Frontier(), CheckpointLog(checkpoints)
        for digest in hashes:
            tree.append(digest)
            if tree.size % SEAL_EVERY == 0 or tree.size == len(hashes):
                checkpoint = Checkpoint(
                    "offerdesk.bench/log", tree.size, tree.root(), digest, datetime.now(UTC)
                )
                out.append(sign(checkpoint, keys.active()))
    signed = CheckpointLog.read(checkpoints, keys.verifier_keys())
    return path, [s.checkpoint for s in signed]


def measure(
    path: Path, checkpoints: list[Checkpoint], runs: int, paths: set[str]
) -> dict[str, Any]:
    results: dict[str, list[float]] = {name: [] for name in PATHS}
    con = duckdb.connect(str(path), read_only=True)
    count, size = con.execute(  # type: ignore[misc]
        "SELECT count(*), sum(strlen(record)) FROM audit_records"
    ).fetchone()
    subjects = [
        r[0]
        for r in con.execute(
            "SELECT DISTINCT subject FROM audit_records WHERE kind = 'decision' "
            "AND subject IS NOT NULL ORDER BY subject LIMIT 500"
        ).fetchall()
    ]
    con.close()
    rng = random.Random(1)
    for _ in range(runs):
        if "verify" in paths:
            started = time.perf_counter()
            report = verify_file(path, checkpoints)
            results["verify"].append(time.perf_counter() - started)
            assert report.ok and report.count == count, report.problem
            assert report.checkpoints == len(checkpoints), report

        if paths & {"open", "prove"}:
            started = time.perf_counter()
            store = AuditStore.open(path)
            results["open"].append(time.perf_counter() - started)
            try:
                started = time.perf_counter()
                hashes = store.chain_hashes(checkpoints[-1].size)
                inclusion_proof(rng.randrange(len(hashes)), len(hashes), hashes)
                results["prove"].append(time.perf_counter() - started)
            finally:
                store.close()

        if "why" in paths:
            con = duckdb.connect(str(path), read_only=True)
            try:
                timings = []
                for subject in rng.sample(subjects, min(20, len(subjects))):
                    started = time.perf_counter()
                    why(con, [subject], None, None, None)
                    timings.append(time.perf_counter() - started)
                results["why"].append(statistics.median(timings))
            finally:
                con.close()
    row: dict[str, Any] = {
        name: statistics.median(values) if values else float("nan")
        for name, values in results.items()
    }
    row["records"] = count
    row["bytes"] = size
    row["verify_runs"] = results["verify"]
    return row


def peak_rss_of_verify(path: Path, checkpoints_path: Path) -> float:
    """Peak RSS (MiB) of a fresh interpreter that reads the checkpoints and verifies once."""
    # VmHWM, not ru_maxrss: Linux carries a parent's ru_maxrss into a child across exec.
    code = (
        "from pathlib import Path\n"
        "from audit.checkpoint import CheckpointLog, KeyRing\n"
        "from audit.verify import verify_file\n"
        f"keys = KeyRing.open(Path({str(checkpoints_path.parent / 'keys')!r}), "
        "'offerdesk.bench/log')\n"
        f"signed = CheckpointLog.read(Path({str(checkpoints_path)!r}), keys.verifier_keys())\n"
        f"report = verify_file(Path({str(path)!r}), [s.checkpoint for s in signed])\n"
        "assert report.ok, report.problem\n"
        "status = Path('/proc/self/status').read_text().split('VmHWM:')[1]\n"
        "print(int(status.split()[0]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    return int(out[-1]) / 1024  # kB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("var/bench"))
    parser.add_argument(
        "--mix", nargs="+", choices=sorted(RECORDS_PER_DECISION), default=["builder"]
    )
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--rss", action="store_true", help="peak RSS of one verify per log")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    for mix in args.mix:
        rows = []
        for records in args.records:
            path, checkpoints = prepare(args.dir, records, mix)
            row = measure(path, checkpoints, args.runs, set(args.paths))
            if args.rss:
                row["rss"] = peak_rss_of_verify(
                    path, path.with_name(path.stem + ".checkpoints.jsonl")
                )
            rows.append(row)
        report(mix, rows, args.runs)


def report(mix: str, rows: list[dict[str, Any]], runs: int) -> None:
    print(
        f"\n{mix} mix: median of {runs} runs (verify: median [min–max]); "
        f"checkpoints every {SEAL_EVERY:,} records"
    )
    print(
        f"{'records':>10} {'KB/rec':>6} {'verify s':>20} {'rss MiB':>8} {'open s':>7} "
        f"{'why ms':>7} {'prove s':>8}  growth"
    )
    previous = None
    for row in rows:
        growth = ""
        if previous is not None:
            factor = row["records"] / previous["records"]
            growth = (
                f"×{factor:.0f} records: verify ×{row['verify'] / previous['verify']:.1f}, "
                f"why ×{row['why'] / previous['why']:.1f}"
            )
        runs_ = row["verify_runs"] or [float("nan")]
        verify = f"{row['verify']:.2f} [{min(runs_):.2f}–{max(runs_):.2f}]"
        print(
            f"{int(row['records']):>10,} {row['bytes'] / row['records'] / 1e3:>6.2f} "
            f"{verify:>20} {row.get('rss', float('nan')):>8.0f} {row['open']:>7.2f} "
            f"{row['why'] * 1e3:>7.1f} {row['prove']:>8.2f}  {growth}"
        )
        previous = row


if __name__ == "__main__":
    main()
