"""`offerdesk train --from-audit`, `evaluate`, `promote` and `rollback`: the model's life cycle.

Reads the audit log offline, or — while the service holds it (DuckDB allows one process per
file) — a sealed export the running service makes through its audit API. Exit codes: 0 done
(evaluate: the gate supports the candidate), 1 refused or not supported, 2 bad input.
"""

from __future__ import annotations

import getpass
import io
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from audit.errors import AuditError, AuditLocked
from service.cli import ConfigOpt, DataDirOpt, _settings, app, console, err, time_window
from service.errors import ModelError
from service.settings import Settings

SinceOpt = Annotated[str | None, typer.Option(help="Decisions from this date or time (UTC).")]
UntilOpt = Annotated[str | None, typer.Option(help="Decisions before this date or time (UTC).")]
WithHistoryOpt = Annotated[
    bool, typer.Option(help="Also value on the bootstrap history (the old process's logs).")
]
AuditOpt = Annotated[
    Path | None,
    typer.Option(help="The audit log or an export of it (default: the data dir's log)."),
]


def readable_log(settings: Settings, audit: Path | None) -> Path:
    """The log to read: `audit`, the data dir's file, or — while the service holds that file —
    a sealed export of it made by the running service."""
    from audit.views import open_source

    path = audit or settings.audit_path
    try:
        open_source(path).close()
        return path
    except AuditLocked:
        if audit is not None:
            raise
        from service.audit_commands import live_segment

        return live_segment(settings)


# -- train --from-audit -------------------------------------------------------------------------


def reliability_svg(card: dict[str, Any]) -> bytes:
    """The ranker's and organic model's reliability curves on the validation rows, as SVG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    for ax, name in zip(axes, ("ranker", "organic"), strict=True):
        m = card["metrics"][name]
        curve = m["reliability"]
        top = max(max(b["predicted"] for b in curve), max(b["observed"] for b in curve)) * 1.1
        ax.plot([0, top], [0, top], color="#999", lw=1, ls="--", label="perfect")
        ax.plot(
            [b["predicted"] for b in curve],
            [b["observed"] for b in curve],
            marker="o",
            color="#1f5fa8",
            label="model",
        )
        ax.set_title(f"{name}: AUC {m['auc']:.3f}, ECE {m['ece']:.4f}", fontsize=10)
        ax.set_xlabel("predicted probability (bin mean)")
        ax.set_ylabel("observed rate")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg")
    plt.close(fig)
    return out.getvalue().encode()


def train_from_audit(
    settings: Settings,
    *,
    catalog: Path | None,
    audit: Path | None,
    since: str | None,
    until: str | None,
    history: bool,
    weighting: str,
    iterations: int | None,
    depth: int | None,
    activate: bool,
) -> str:
    """Rows from the log (and the bootstrap history), both models fitted, stored with a card."""
    from service import training
    from service.cli import _load_catalog_or_exit, fit_with_progress, print_metrics
    from service.logged import from_audit, organic_from_audit
    from service.registry import Registry
    from service.simulator import load_history

    if weighting not in ("propensity", "none"):
        err.print(f"[red]--weighting:[/red] 'propensity' or 'none', not {weighting!r}")
        raise typer.Exit(2)
    registry = Registry(settings.registry_dir)
    try:
        cat = (
            _load_catalog_or_exit(catalog)
            if catalog
            else registry.load_catalog(registry.active().catalog)
        )
    except ModelError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None
    start, end = time_window(("--since", since), ("--until", until))
    try:
        path = readable_log(settings, audit)
        with console.status("reading logged decisions, outcomes and conversions…"):
            logged, window = from_audit(path, cat, since=start, until=end)
            labels, open_window = organic_from_audit(path, cat, since=start, until=end)
    except (AuditError, ValueError) as e:
        err.print(f"[red]cannot read the audit log:[/red] {e}")
        raise typer.Exit(2) from None
    ranker_parts = [training.ranker_rows_from_logged(logged)]
    organic_parts = [training.organic_rows_from_labels(labels, cat)]
    sources: dict[str, Any] = {
        "audit": {
            "log": str(path),
            **window.document(),
            "ranker_rows": len(ranker_parts[0]),
            "organic_decisions": len(labels),
            "organic_rows": len(organic_parts[0]),
            "organic_window_still_open_skipped": open_window,
        }
    }
    hist_path = settings.profile_dir / "history.parquet"
    if history and hist_path.exists():
        r_h, o_h = training.training_rows_from_history(load_history(settings.profile_dir), cat)
        ranker_parts.insert(0, r_h)
        organic_parts.insert(0, o_h)
        sources["history"] = {
            "file": str(hist_path),
            "ranker_rows": len(r_h),
            "organic_rows": len(o_h),
        }
    ranker_rows = training.TrainingRows.concat([p for p in ranker_parts if len(p)] or ranker_parts)
    organic_rows = training.TrainingRows.concat(
        [p for p in organic_parts if len(p)] or organic_parts
    )
    _show_sources(sources, weighting)
    kwargs = {k: v for k, v in (("iterations", iterations), ("depth", depth)) if v is not None}
    data = {
        "sources": sources,
        "filters": "treated decisions made with this catalog; ranker: offers shown with an "
        "accepted or declined outcome; organic: decisions whose 30-day window is over, "
        "offers not shown, purchases not within 30 days of an acceptance of that product",
    }
    try:
        trained = fit_with_progress(
            ranker_rows, organic_rows, weighting=weighting, refit=True, data=data, **kwargs
        )
    except ValueError as e:
        err.print(f"[red]cannot train:[/red] {e}")
        raise typer.Exit(1) from None
    version = registry.save_models(
        trained.ranker,
        trained.organic,
        trained.card,
        files={"reliability.svg": reliability_svg(trained.card)},
    )
    registry.save_catalog(cat.source)
    print_metrics(trained.card)
    _show_take_rates(trained.card)
    console.print(f"model {version} stored in {settings.registry_dir}")
    console.print(
        f"  card: {settings.registry_dir / 'models' / version / 'card.json'}; chart: "
        f"{settings.registry_dir / 'models' / version / 'reliability.svg'}"
    )
    if activate:
        registry.activate(model=version, catalog=cat.version, note={"action": "train --activate"})
        console.print("  active now (no gate was run: --activate)")
    else:
        console.print(f"  next: offerdesk evaluate --candidate {version}")
    return version


def _show_sources(sources: dict[str, Any], weighting: str) -> None:
    a = sources["audit"]
    console.print(
        f"audit log: {a['treated_decisions']:,} treated decisions "
        f"({a['first_decision'] or '-'} to {a['last_decision'] or '-'}), "
        f"{a['ranker_rows']:,} offers with an outcome, {a['organic_rows']:,} organic rows "
        f"from {a['organic_decisions']:,} decisions; skipped: {a['holdout_skipped']:,} "
        f"holdout (no offer shown), {a['other_catalog_skipped']:,} other catalog, "
        f"{a['offers_without_outcome_skipped']:,} offers without an outcome, "
        f"{a['organic_window_still_open_skipped']:,} decisions whose 30-day window is open"
    )
    if "history" in sources:
        h = sources["history"]
        console.print(
            f"bootstrap history: {h['ranker_rows']:,} ranker rows, {h['organic_rows']:,} "
            "organic rows"
        )
    console.print(f"weighting: {weighting}")


def _show_take_rates(card: dict[str, Any]) -> None:
    by_offer = card["metrics"]["ranker"].get("by_offer", {})
    table = Table(title="take rate on the validation rows (newest 20%)")
    for col in ("offer", "rows", "observed", "predicted"):
        table.add_column(col, justify="left" if col == "offer" else "right")
    for offer, m in by_offer.items():
        table.add_row(offer, f"{m['rows']:,}", f"{m['observed']:.1%}", f"{m['predicted']:.1%}")
    console.print(table)


# -- evaluate, promote, rollback ----------------------------------------------------------------


def _evaluate(
    settings: Settings,
    candidate: str,
    audit: Path | None,
    since: str | None,
    until: str | None,
    with_history: bool,
) -> Any:
    from service.promotion import evaluate
    from service.registry import Registry

    registry = Registry(settings.registry_dir)
    start, end = time_window(("--since", since), ("--until", until))
    try:
        path = readable_log(settings, audit)
        with console.status("valuing the candidate and the live model on logged decisions…"):
            return evaluate(
                registry,
                path,
                candidate,
                settings.promotion,
                since=start,
                until=end,
                history=settings.profile_dir if with_history else None,
            )
    except ModelError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    except (AuditError, ValueError) as e:
        err.print(f"[red]cannot evaluate:[/red] {e}")
        raise typer.Exit(2) from None


def _scale(evaluation: Any, settings: Settings) -> float:
    from service.registry import Registry

    return float(10 ** Registry(settings.registry_dir).load_catalog(evaluation.catalog).exponent)


def _show(evaluation: Any, scale: float) -> None:
    doc = evaluation.document(scale)
    v = doc["value_per_decision"]
    w = doc["window"]
    console.print(
        f"live {doc['live_model']} vs candidate {doc['candidate_model']} on {v['decisions']:,} "
        f"treated decisions of {v['customers']:,} customers ({w['treated_decisions']:,} "
        f"from the audit log, {w['history_decisions']:,} from the bootstrap history)"
    )
    table = Table(title="accepted margin per decision (95% CI, clustered by customer)")
    for col in ("estimator", "live", "candidate"):
        table.add_column(col, justify="left" if col == "estimator" else "right")

    def fmt(i: dict[str, float]) -> str:
        return f"{i['value']:,.2f} [{i['low']:,.2f}, {i['high']:,.2f}]"

    for name in ("ips", "snips", "dr"):
        table.add_row(name.upper(), fmt(v["live"][name]), fmt(v["candidate"][name]))
    table.add_row("observed (logged, exploration included)", fmt(v["observed"]), "")
    console.print(table)
    rel = v["relative_dr"]
    console.print(
        f"difference (DR, candidate − live): {fmt(v['difference_dr'])} per decision = "
        f"{rel['value']:+.1%} [{rel['low']:+.1%}, {rel['high']:+.1%}]"
    )
    console.print(
        f"candidate's choices without logged support: {v['candidate']['unsupported']:.2%}; "
        f"effective decisions (IPS weights): {v['candidate']['effective_decisions']:,.0f}"
    )
    for who in ("candidate", "live"):
        lat = doc["latency_ms"][who]
        console.print(
            f"{who} model work per decision (fastest of 3, {lat['decisions']} decisions): "
            f"scoring p50 {lat['score_p50']:.2f} ms, p99 {lat['score_p99']:.2f} ms; "
            f"exact SHAP p50 {lat['explain_p50']:.2f} ms, p99 {lat['explain_p99']:.2f} ms"
        )
    if evaluation.supported:
        console.print("[green]✓ the gate supports this candidate[/green]")
    else:
        console.print("[red]✗ the gate does not support this candidate:[/red]")
        for f in evaluation.findings:
            console.print(f"  - {f}")


@app.command()
def evaluate(
    candidate: Annotated[str, typer.Option(help="Model version to judge (mdl-…).")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    audit: AuditOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    with_history: WithHistoryOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the evaluation as JSON.")] = False,
) -> None:
    """Off-policy value of a candidate model against the live one, on logged traffic."""
    settings = _settings(config, data_dir)
    evaluation = _evaluate(settings, candidate, audit, since, until, with_history)
    scale = _scale(evaluation, settings)
    if as_json:
        typer.echo(json.dumps(evaluation.document(scale), indent=2))
    else:
        _show(evaluation, scale)
    raise typer.Exit(0 if evaluation.supported else 1)


@app.command()
def promote(
    model: Annotated[str, typer.Argument(help="Model version to make active (mdl-…).")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    audit: AuditOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    with_history: WithHistoryOpt = False,
    force: Annotated[
        str | None,
        typer.Option(
            help="Promote even if the gate does not support it; the reason is recorded in the "
            "registry and the audit log's deployment record."
        ),
    ] = None,
) -> None:
    """Run the gate and make MODEL active; the running service switches without a restart."""
    from service.promotion import promote as run
    from service.registry import Registry

    settings = _settings(config, data_dir)
    evaluation = _evaluate(settings, model, audit, since, until, with_history)
    scale = _scale(evaluation, settings)
    _show(evaluation, scale)
    try:
        active = run(
            Registry(settings.registry_dir),
            evaluation,
            scale=scale,
            force=force,
            by=getpass.getuser(),
        )
    except ValueError as e:
        err.print(f"[red]not promoted:[/red] {e}")
        if not evaluation.supported:
            err.print("  (override with --force 'the reason', which is recorded)")
        raise typer.Exit(1) from None
    console.print(
        f"[green]✓ {active.model} is active[/green]"
        + (" (gate overridden: recorded)" if not evaluation.supported else "")
        + f"; a running service switches within {settings.reload_poll_seconds:g} s"
    )


@app.command()
def rollback(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    reason: Annotated[str, typer.Option(help="Why (recorded).")] = "",
) -> None:
    """Return to the model and catalog that were active before the current ones."""
    from service.promotion import rollback as run
    from service.registry import Registry

    settings = _settings(config, data_dir)
    registry = Registry(settings.registry_dir)
    try:
        current = registry.active()
        active = run(registry, reason=reason, by=getpass.getuser())
    except ModelError as e:
        err.print(f"[red]cannot roll back:[/red] {e}")
        raise typer.Exit(1) from None
    console.print(
        f"[green]✓ rolled back from {current.model} to {active.model}[/green] "
        f"(catalog {active.catalog}); a running service switches within "
        f"{settings.reload_poll_seconds:g} s"
    )
