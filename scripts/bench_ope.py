"""How much exploration off-policy evaluation needs: coverage and width of the gate's intervals.

A fresh simulated world (a seed the tests do not use), the live model trained on its bootstrap
history, and a candidate (a bigger model of the same data). Each cell logs the world's contexts
afresh with the live policy at exploration rate ε (acceptance drawn from the truth), 20 times,
on N decisions, and values the candidate (at the catalog's own rate) with DR; it prints how often
the 95% interval covered the candidate's true value, the median half-width as a share of that
value, and the median half-width of the candidate − live difference, which is what the gate
reads.

    .venv/bin/python scripts/bench_ope.py [--seeds 20] [--out var/bench/ope.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from service import ope
from service.catalog import load_catalog
from service.logged import PolicyScores, from_history, policy_of, relog
from service.ranker import Models
from service.simulator import load_history, load_world, simulate, true_probabilities, true_value
from service.training import fit, training_rows_from_history

CATALOG = Path(__file__).resolve().parent.parent / "service" / "examples" / "catalog.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--world-seed", type=int, default=31)
    ap.add_argument("--out", type=Path, default=Path("var/bench/ope.json"))
    args = ap.parse_args()
    console = Console()
    started = time.perf_counter()
    catalog = load_catalog(CATALOG)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        simulate(catalog, root, customers=5000, history_tickets=30_000, seed=args.world_seed)
        history = load_history(root)
        world = load_world(root)
    rows = training_rows_from_history(history, catalog)
    live_t, cand_t = fit(*rows, seed=0), fit(*rows, iterations=300, depth=5, seed=1)
    live = Models("live", live_t.ranker, live_t.organic, live_t.card)
    cand = Models("candidate", cand_t.ranker, cand_t.organic, cand_t.card)
    base = from_history(history, catalog)
    accept, _ = true_probabilities(world.truth, base)
    target = policy_of(cand, base)
    deployed = catalog.policy.exploration_rate
    truth = true_value(target, base, accept)
    live_truth = true_value(policy_of(live, base), base, accept)
    console.print(
        f"world seed {args.world_seed}: {len(base):,} decisions; true value per decision: "
        f"live {live_truth / 100:.2f}, candidate {truth / 100:.2f} "
        f"({truth / live_truth - 1:+.1%}); candidate valued at ε = {deployed}"
    )
    table = Table(title=f"DR on logged traffic, {args.seeds} seeds per cell")
    for col in ("logging ε", "decisions", "covered", "half-width", "diff half-width", "s/seed"):
        table.add_column(col, justify="right")
    results = []
    for epsilon in (0.05, 0.10, 0.20):
        logging = policy_of(live, base, epsilon=epsilon)
        live_at = policy_of(live, base)
        for n in (5_000, 15_000, 30_000):
            covered, half, diff = 0, [], []
            t0 = time.perf_counter()
            for seed in range(args.seeds):
                rng = np.random.default_rng(seed)
                keep = np.zeros(len(base), dtype=bool)
                keep[rng.choice(len(base), n, replace=False)] = True
                sub = base.select(keep)
                rows_kept = keep[base.row_decision]
                sub_accept = accept[rows_kept]
                logged = relog(sub, _sub(logging, keep, rows_kept), sub_accept, rng)
                q = ope.reward_model(logged, seed=seed)
                cand_sub, live_sub = _sub(target, keep, rows_kept), _sub(live_at, keep, rows_kept)
                value = ope.policy_value(logged, cand_sub, q)
                true_here = true_value(cand_sub, sub, sub_accept)
                covered += value.dr.covers(true_here)
                half.append(value.dr.half_width / true_here)
                diff.append(ope.compare(logged, live_sub, cand_sub, q).relative_dr().half_width)
            per_seed = (time.perf_counter() - t0) / args.seeds
            cell = {
                "epsilon": epsilon,
                "decisions": n,
                "covered": covered,
                "seeds": args.seeds,
                "median_half_width": round(statistics.median(half), 4),
                "median_difference_half_width": round(statistics.median(diff), 4),
                "seconds_per_seed": round(per_seed, 2),
            }
            results.append(cell)
            table.add_row(
                f"{epsilon:.2f}",
                f"{n:,}",
                f"{covered}/{args.seeds}",
                f"±{cell['median_half_width']:.1%}",
                f"±{cell['median_difference_half_width']:.1%}",
                f"{per_seed:.1f}",
            )
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "world_seed": args.world_seed,
                "true_value_live": live_truth,
                "true_value_candidate": truth,
                "cells": results,
            },
            indent=2,
        )
    )
    console.print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")


def _sub(policy: PolicyScores, keep: np.ndarray, rows_kept: np.ndarray) -> PolicyScores:
    return PolicyScores(
        policy.p_accept[rows_kept],
        policy.p_anyway[rows_kept],
        policy.value[rows_kept],
        policy.p[rows_kept],
        policy.p_none[keep],
    )


if __name__ == "__main__":
    main()
