"""Scale curves: how a decision's latency, throughput and size grow with the catalog and the log.

Three curves, each through a real Desk on a real DuckDB log (a decision plus its durable write;
the gRPC hop is constant and measured by scripts/bench.py), one decision after another:
  offers      10 → 100 → 1,000 offers of 3 variants (rules: 50, or one trigger per offer)
  rules       10 → 50 → 100 → 500 rules on 10 offers (padding guardrails that always pass)
  log size    0 → 100k → 1M records already in the log: service start-up (open, contact-state
              rebuild, first checkpoint), `audit verify`, and decisions on top of it
Catalogs come from service.catalog_synth; logs from scripts/build_big_log.py (built once, cached
under var/bench/ by bench_audit_scale.prepare). One model serves every catalog: trained on a
simulated world of the example catalog, it meets unseen offer ids as unknown categories, which
costs what a known one does. Prints a table with the growth from each point to the next, and
saves the figures (JSON) and a chart (SVG).

    .venv/bin/python scripts/bench_scale.py [--quick] [--log-sizes 0 100000 1000000]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from audit.verify import verify_file
from service import validation
from service.catalog import load_catalog, parse_catalog
from service.catalog_synth import synthetic_catalog
from service.demo import decide_request
from service.registry import Registry
from service.server import decision_response, start
from service.settings import load_settings
from service.simulator import load_history, load_world, simulate, ticket_stream
from service.training import fit, training_rows_from_history

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "service" / "examples" / "catalog.yaml"
BENCH_DIR = ROOT / "var" / "bench"


def _p(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))]


class Bench:
    def __init__(self, work: Path, quick: bool) -> None:
        self.work = work
        self.quick = quick
        self.base = work / "base"
        catalog = load_catalog(EXAMPLE)
        customers, tickets = (1500, 6000) if quick else (4000, 16000)
        simulate(catalog, self.base / "profiles", customers=customers, history_tickets=tickets)
        trained = fit(
            *training_rows_from_history(load_history(self.base / "profiles"), catalog),
            iterations=200,
            depth=4,
        )
        self.registry = Registry(self.base / "registry")
        self.model = self.registry.save_models(trained.ranker, trained.organic, trained.card)
        self.world = load_world(self.base / "profiles")
        self.point = 0

    def data_dir(self, catalog_yaml: bytes) -> Path:
        """A fresh data dir: profiles, the one model, this catalog active, an empty log."""
        self.point += 1
        d = self.work / f"point-{self.point}"
        shutil.copytree(self.base / "profiles", d / "profiles")
        shutil.copytree(self.base / "registry", d / "registry")
        registry = Registry(d / "registry")
        version = registry.save_catalog(catalog_yaml)
        registry.activate(model=self.model, catalog=version)
        return d

    def decisions(self, d: Path, n: int, tag: str) -> dict[str, Any]:
        """Start the service on `d`, decide `n` tickets one after another; figures."""
        settings = load_settings(None, data_dir=d, listen="127.0.0.1:0")
        t0 = time.perf_counter()
        running = start(settings)
        startup = time.perf_counter() - t0
        try:
            desk = running.desk
            catalog = desk.deployment.catalog
            stream = ticket_stream(self.world, catalog, seed=97, start=datetime.now(UTC))
            latencies, record_sizes, response_sizes, offered = [], [], [], 0
            began = time.perf_counter()
            for i, ev in enumerate(islice(stream, n + 5)):
                now = datetime.now(UTC)
                ev = {**ev, "resolved_at": now - timedelta(seconds=1)}
                ev["ticket_id"] = f"{ev['ticket_id']}-{tag}"
                cmd = validation.decide_command(
                    decide_request(ev),
                    now=now,
                    tags=catalog.spec.ticket_tags,
                    fields=catalog.spec.ticket_fields,
                )
                t = time.perf_counter()
                committed = desk.decide(cmd, now=now, trace_id="0" * 32)
                elapsed = time.perf_counter() - t
                if i < 5:  # warm-up
                    began = time.perf_counter()
                    continue
                latencies.append(elapsed * 1000)
                record_sizes.append(len(committed.record.record))
                response_sizes.append(
                    decision_response(committed.record.seq, committed.body, None).ByteSize()
                )
                offered += committed.body["kind"] == "offer"
            wall = time.perf_counter() - began
        finally:
            running.stop()
        return {
            "decisions": n,
            "offered": offered,
            "p50_ms": round(statistics.median(latencies), 3),
            "p99_ms": round(_p(latencies, 0.99), 3),
            "per_second": round(n / wall, 1),
            "record_bytes_p50": int(statistics.median(record_sizes)),
            "record_bytes_max": max(record_sizes),
            "response_bytes_max": max(response_sizes),
            "startup_s": round(startup, 3),
        }


def catalog_curves(bench: Bench, console: Console) -> dict[str, list[dict[str, Any]]]:
    n = 60 if bench.quick else 300
    curves: dict[str, list[dict[str, Any]]] = {"offers": [], "rules": []}
    for offers in (10, 100) if bench.quick else (10, 100, 1000):
        rules = max(50, offers)
        yaml_bytes = synthetic_catalog(offers, rules)
        parse_catalog(yaml_bytes, "bench")  # fails here, not inside the service
        row = bench.decisions(
            bench.data_dir(yaml_bytes), n if offers < 1000 else n // 3, f"o{offers}"
        )
        curves["offers"].append({"offers": offers, "rules": rules, **row})
        console.print(f"  offers {offers:>5}, rules {rules:>4}: {row}")
    for rules in (10, 100) if bench.quick else (10, 50, 100, 500):
        row = bench.decisions(bench.data_dir(synthetic_catalog(10, rules)), n, f"r{rules}")
        curves["rules"].append({"offers": 10, "rules": rules, **row})
        console.print(f"  offers    10, rules {rules:>4}: {row}")
    return curves


def log_curve(bench: Bench, sizes: list[int], console: Console) -> list[dict[str, Any]]:
    from bench_audit_scale import prepare

    rows = []
    catalog = synthetic_catalog(20, 50)
    for size in sizes:
        d = bench.data_dir(catalog)
        if size:
            t0 = time.perf_counter()
            cached, _ = prepare(BENCH_DIR, size, "builder")
            built = time.perf_counter() - t0
            shutil.copyfile(cached, d / "audit.duckdb")
        else:
            built = 0.0
        t0 = time.perf_counter()
        report = verify_file(d / "audit.duckdb") if size else None
        verify_s = time.perf_counter() - t0
        row = bench.decisions(d, 60 if bench.quick else 200, f"l{size}")
        rows.append(
            {
                "records": size,
                "verify_s": round(verify_s, 3) if report else 0.0,
                "verified": bool(report.ok) if report else True,
                "prepare_s": round(built, 1),
                **row,
            }
        )
        console.print(f"  log {size:>9,} records: {rows[-1]}")
        shutil.rmtree(d)
    return rows


def growth(rows: list[dict[str, Any]], x: str, ys: tuple[str, ...]) -> list[str]:
    """Per step: how much x grew, and how much each y grew."""
    out = []
    for a, b in pairwise(rows):
        if not a[x]:
            continue
        parts = [f"{x} ×{b[x] / a[x]:g}"]
        for y in ys:
            if a[y]:
                parts.append(f"{y} ×{b[y] / a[y]:.2f}")
        out.append(", ".join(parts))
    return out


def chart(curves: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (name, x) in zip(
        axes, (("offers", "offers"), ("rules", "rules"), ("log", "records")), strict=True
    ):
        rows = curves.get(name) or []
        xs = [r[x] for r in rows]
        ax.plot(xs, [r["p50_ms"] for r in rows], marker="o", label="p50")
        ax.plot(xs, [r["p99_ms"] for r in rows], marker="o", label="p99")
        if name != "log":
            ax.set_xscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel("decision + durable write (ms)")
        ax.set_title(f"by {x}", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg")
    plt.close(fig)
    return out.getvalue().encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="Small points only (a smoke run).")
    ap.add_argument("--log-sizes", type=int, nargs="*", default=None)
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "scale.json")
    args = ap.parse_args()
    console = Console()
    started = time.perf_counter()
    sizes = args.log_sizes
    if sizes is None:
        sizes = [0, 10_000] if args.quick else [0, 100_000, 1_000_000]
    with tempfile.TemporaryDirectory(prefix="offerdesk-scale-") as tmp:
        console.rule("setup: a simulated world and one model")
        bench = Bench(Path(tmp), args.quick)
        console.rule("catalog size")
        curves: dict[str, Any] = catalog_curves(bench, console)
        console.rule("log size")
        curves["log"] = log_curve(bench, sizes, console)
    table = Table(title="scale curves: one decision and its durable write, through the Desk")
    for col in (
        "curve",
        "point",
        "p50 ms",
        "p99 ms",
        "per s",
        "record B (max)",
        "reply B (max)",
        "start s",
        "verify s",
    ):
        table.add_column(col, justify="right")
    for name, x in (("offers", "offers"), ("rules", "rules"), ("log", "records")):
        for r in curves[name]:
            table.add_row(
                name,
                f"{r[x]:,}",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['per_second']:.0f}",
                f"{r['record_bytes_max']:,}",
                f"{r['response_bytes_max']:,}",
                f"{r['startup_s']:.2f}",
                f"{r.get('verify_s', 0):.2f}" if name == "log" else "",
            )
    console.print(table)
    for name, x, ys in (
        ("offers", "offers", ("p50_ms", "record_bytes_max", "response_bytes_max")),
        ("rules", "rules", ("p50_ms",)),
        ("log", "records", ("p50_ms", "startup_s", "verify_s")),
    ):
        for line in growth(curves[name], x, ys):
            console.print(f"  {name}: {line}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(curves, indent=2))
    svg = args.out.with_suffix(".svg")
    svg.write_bytes(chart(curves))
    console.print(f"wrote {args.out} and {svg} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
