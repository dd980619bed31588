"""Time `audit.why.why` for one customer on a log (build one with scripts/build_big_log.py).

Opens the log as `offerdesk audit why` does (read-only attach, views installed), picks
customers at random among those with decisions, and prints the median and spread of
several runs. Reads only.

    .venv/bin/python scripts/bench_why.py /tmp/big.duckdb --runs 15
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from audit.views import open_source
from audit.why import why


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="DuckDB audit file or Parquet export")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    con = open_source(args.log)
    (decisions,) = con.execute(
        "SELECT count(*) FROM audit_records WHERE kind = 'decision'"
    ).fetchone() or (0,)
    subjects = [
        s
        for (s,) in con.execute(
            "SELECT DISTINCT subject FROM audit_records "
            "WHERE kind = 'decision' AND subject IS NOT NULL"
        ).fetchall()
    ]
    rng = random.Random(args.seed)
    why(con, [rng.choice(subjects)])  # warm: first touch of the file
    seconds, found = [], []
    for _ in range(args.runs):
        subject = rng.choice(subjects)
        started = time.perf_counter()
        answer = why(con, [subject])
        seconds.append(time.perf_counter() - started)
        found.append(len(answer))
    ms = sorted(s * 1000 for s in seconds)
    print(
        f"{args.log}: {decisions:,} decisions; why() for one customer "
        f"({statistics.median(found):.0f} decisions each): median {statistics.median(ms):.1f} ms, "
        f"min {ms[0]:.1f}, max {ms[-1]:.1f} over {args.runs} customers"
    )
    con.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
