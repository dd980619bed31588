"""The `offerdesk` command: serve, simulate, train, demo, catalog check, audit verify.

Builds the settings once and passes them down; prints for people with rich, exits non-zero on
any failure with a message that says what to do next.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from service.catalog import Catalog
from service.settings import Settings, load_settings

app = typer.Typer(
    help="offerdesk: one offer card (or none) per resolved ticket, with reasons "
    "and a provable audit log.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
catalog_app = typer.Typer(help="Check offer catalogs.", no_args_is_help=True)
audit_app = typer.Typer(help="Verify and inspect the audit log.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
report_app = typer.Typer(help="Reports for the people who own the revenue.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(report_app, name="report")
console = Console()
err = Console(stderr=True)

EXAMPLE_CATALOG = Path(__file__).parent / "examples" / "catalog.yaml"

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Settings YAML file.", exists=True, dir_okay=False)
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory (default ./var).")
]


def _settings(config: Path | None, data_dir: Path | None, **extra: object) -> Settings:
    overrides: dict[str, object] = {k: v for k, v in extra.items() if v is not None}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    try:
        return load_settings(config, **overrides)
    except Exception as e:
        err.print(f"[red]settings:[/red] {e}")
        raise typer.Exit(2) from None


def time_window(
    since: tuple[str, str | None], until: tuple[str, str | None]
) -> tuple[datetime | None, datetime | None]:
    """Two (option name, text) bounds parsed as dates or ISO times (UTC unless they name an
    offset); a bad one, or an `until` not after `since`, exits 2 naming the option."""
    from rich.markup import escape

    from service.replay import parse_time

    parsed: list[datetime | None] = []
    for option, text in (since, until):
        try:
            parsed.append(None if text is None else parse_time(text))
        except ValueError as e:
            err.print(f"[red]{option}:[/red] {escape(str(e))}")
            raise typer.Exit(2) from None
    low, high = parsed
    if low is not None and high is not None and low >= high:
        err.print(
            f"[red]{until[0]}:[/red] {escape(str(until[1]))} is not after {since[0]} "
            f"{escape(str(since[1]))}"
        )
        raise typer.Exit(2)
    return low, high


@app.command()
def serve(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    listen: Annotated[str | None, typer.Option(help="HOST:PORT to listen on.")] = None,
) -> None:
    """Run the gRPC service (loopback by default) until SIGINT/SIGTERM."""
    from service.errors import OfferDeskError
    from service.server import serve as run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = _settings(config, data_dir, listen=listen)
    try:
        run(settings)
    except (OfferDeskError, ValueError, OSError) as e:
        err.print(f"[red]cannot start:[/red] {e}")
        raise typer.Exit(1) from None


@app.command()
def gateway(
    config: Annotated[
        Path | None,
        typer.Option(help="Gateway settings (YAML): adapters, secrets, service address."),
    ] = None,
    listen: Annotated[str | None, typer.Option(help="HOST:PORT to listen on.")] = None,
) -> None:
    """Run the HTTP gateway for helpdesk webhooks (loopback by default); it calls the service
    over gRPC. See docs/adapters/."""
    from pydantic import ValidationError

    from console_adapters.gateway import load
    from console_adapters.gateway import serve as run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = load(config, **({"listen": listen} if listen else {}))
        if not settings.adapters():
            raise ValueError("no adapter is configured (zendesk or generic): see docs/adapters/")
        run(settings)
    except (ValidationError, ValueError, OSError) as e:
        err.print(f"[red]cannot start:[/red] {e}")
        raise typer.Exit(1) from None


@app.command()
def simulate(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    catalog: Annotated[
        Path, typer.Option(help="Catalog the world is built for.")
    ] = EXAMPLE_CATALOG,
    customers: Annotated[int, typer.Option(min=1)] = 5000,
    tickets: Annotated[int, typer.Option(help="Bootstrap history tickets.", min=1)] = 30_000,
    seed: int = 7,
) -> None:
    """Write a simulated customer base, identity map and bootstrap history (Parquet)."""
    from service.simulator import simulate as run

    settings = _settings(config, data_dir)
    cat = _load_catalog_or_exit(catalog)
    with console.status("simulating customers and history…"):
        s = run(cat, settings.profile_dir, customers=customers, history_tickets=tickets, seed=seed)
    console.print(
        f"simulated {s.customers:,} customers, {s.history_rows:,} past tickets, "
        f"{s.offers_shown:,} offers shown (take rate {s.acceptance_rate:.1%}) "
        f"in {s.seconds:.1f}s → {settings.profile_dir}"
    )


@app.command()
def play(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    tickets: Annotated[int, typer.Option(min=1, help="Resolved tickets to play.")] = 3000,
    days: Annotated[float, typer.Option(min=0.01, help="Simulated days they spread over.")] = 45,
    seed: int = 11,
) -> None:
    """Play simulated weeks of production into the data dir's audit log (service stopped):
    decisions, agents' answers and billing's conversions by the simulator's truth, on a
    simulated clock ending now. For trying retraining, evaluation and the lift report."""
    from datetime import UTC, datetime, timedelta

    from rich.progress import Progress

    from service.errors import OfferDeskError
    from service.server import start
    from service.simulator import load_world
    from service.traffic import play as run

    settings = _settings(config, data_dir, listen="127.0.0.1:0")
    try:
        running = start(settings)
        world = load_world(settings.profile_dir)
    except (OfferDeskError, OSError, ValueError) as e:
        err.print(f"[red]cannot start:[/red] {e}")
        raise typer.Exit(1) from None
    try:
        with Progress(console=console) as bar:
            task = bar.add_task("playing tickets", total=tickets)
            summary = run(
                running.desk,
                world,
                tickets=tickets,
                start=datetime.now(UTC) - timedelta(days=days),
                days=days,
                seed=seed,
                progress=lambda done, total: bar.update(task, completed=done),
            )
    finally:
        running.stop()
    console.print(
        f"{summary.decisions:,} decisions, {summary.offers:,} offers "
        f"({summary.accepted:,} accepted), {summary.prompted_conversions:,} prompted and "
        f"{summary.organic_conversions:,} organic conversions → {settings.audit_path}"
    )


@app.command()
def train(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    catalog: Annotated[
        Path | None,
        typer.Option(
            help="Catalog to train with (default: the example catalog; with --from-audit, the "
            "active one, which the logged decisions were made with)."
        ),
    ] = None,
    iterations: Annotated[int | None, typer.Option(min=1)] = None,
    depth: Annotated[int | None, typer.Option(min=1, max=10)] = None,
    activate: Annotated[
        bool | None,
        typer.Option(
            help="Make the new model active (default: yes for the bootstrap model; no with "
            "--from-audit, which goes through `offerdesk promote`)."
        ),
    ] = None,
    from_audit: Annotated[
        bool,
        typer.Option(
            "--from-audit",
            help="Train from the audit log's decisions, outcomes and conversions "
            "(docs/retraining.md).",
        ),
    ] = False,
    audit: Annotated[
        Path | None, typer.Option(help="With --from-audit: the log (default: the data dir's).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="With --from-audit: decisions from this date or time.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="With --from-audit: decisions before this date or time.")
    ] = None,
    history: Annotated[
        bool,
        typer.Option(
            help="With --from-audit: add the bootstrap history's rows (the old process's log)."
        ),
    ] = True,
    weighting: Annotated[
        str,
        typer.Option(
            help="With --from-audit: 'none' (default: the explored rows and the logged inputs "
            "handle selection; docs/retraining.md) or 'propensity' (1/propensity, capped)."
        ),
    ] = "none",
) -> None:
    """Train the acceptance and organic-purchase models: on the simulator's bootstrap history,
    or with --from-audit on what the service logged."""
    settings = _settings(config, data_dir)
    if from_audit:
        from service.model_commands import train_from_audit

        train_from_audit(
            settings,
            catalog=catalog,
            audit=audit,
            since=since,
            until=until,
            history=history,
            weighting=weighting,
            iterations=iterations,
            depth=depth,
            activate=bool(activate),
        )
        return
    cat = _load_catalog_or_exit(catalog or EXAMPLE_CATALOG)
    active = True if activate is None else activate
    version = train_default(settings, cat, iterations=iterations, depth=depth, activate=active)
    console.print(
        f"model {version} stored in {settings.registry_dir}" + (" and active" if active else "")
    )


def fit_with_progress(ranker_rows: Any, organic_rows: Any, **kwargs: Any) -> Any:
    """service.training.fit with a progress bar per model."""
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from service import training

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(f"training {name}", total=total)
            bar.update(tasks[name], completed=done)

        return training.fit(ranker_rows, organic_rows, progress=progress, **kwargs)


def print_metrics(card: dict[str, Any]) -> None:
    for name, m in card.get("metrics", {}).items():
        console.print(
            f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float))
        )


def train_default(
    settings: Settings,
    cat: Catalog,
    *,
    iterations: int | None = None,
    depth: int | None = None,
    activate: bool = True,
    seed: int = 0,
) -> str:
    """Train from data_dir/profiles/history.parquet, store in the registry, optionally activate."""
    from service import training
    from service.registry import Registry
    from service.simulator import load_history

    if not (settings.profile_dir / "history.parquet").exists():
        err.print(f"[red]no history at {settings.profile_dir}[/red]: run `offerdesk simulate`")
        raise typer.Exit(1)
    ranker_rows, organic_rows = training.training_rows_from_history(
        load_history(settings.profile_dir), cat
    )
    kwargs = {k: v for k, v in (("iterations", iterations), ("depth", depth)) if v is not None}
    trained = fit_with_progress(
        ranker_rows,
        organic_rows,
        seed=seed,
        data={"sources": {"history": str(settings.profile_dir / "history.parquet")}},
        **kwargs,
    )
    registry = Registry(settings.registry_dir)
    version = registry.save_models(trained.ranker, trained.organic, trained.card)
    registry.save_catalog(cat.source)
    if activate:
        registry.activate(model=version, catalog=cat.version, note={"action": "bootstrap"})
    print_metrics(trained.card)
    return version


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="Demo data directory (wiped first).")] = Path(
        "var/demo"
    ),
    tickets: Annotated[int, typer.Option(min=10, max=5000)] = 300,
) -> None:
    """Simulate, train, serve on loopback and play a few hundred tickets through it."""
    from service.demo import run

    recording = Console(record=True)
    code = run(data_dir, tickets, recording)
    recording.save_svg(str(data_dir / "demo.svg"), title="offerdesk demo")
    raise typer.Exit(code)


@catalog_app.command("check")
def catalog_check(file: Annotated[Path, typer.Argument(help="Catalog YAML file.")]) -> None:
    """Validate a catalog: schema, CEL syntax, and every rule run on typed sample contexts."""
    from service.catalog import check_catalog

    cat = _load_catalog_or_exit(file)
    problems = check_catalog(cat)
    if problems:
        for p in problems:
            err.print(f"[red]✗[/red] {file}: {p}")
        raise typer.Exit(1)
    n_rules = len(cat.rules())
    console.print(
        f"[green]✓[/green] {file}: {len(cat.offers)} offers, "
        f"{sum(len(o.variants) for o in cat.offers)} variants, {n_rules} rules; "
        f"version {cat.version}"
    )


@audit_app.command("verify")
def audit_verify(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="Audit DuckDB file, Parquet export or export segment directory "
            "(default: the data dir's log)."
        ),
    ] = None,
    checkpoints: Annotated[
        Path | None,
        typer.Option(help="Signed checkpoint file (default: the data dir's, or the segment's)."),
    ] = None,
    pubkey: Annotated[
        Path | None,
        typer.Option(help="Public keys, one per line (default: the data dir's, or the segment's)."),
    ] = None,
    deep: Annotated[
        bool, typer.Option(help="Also re-check every record's canonical form row by row.")
    ] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Check the hash chain and every signed checkpoint; name the first bad record or
    checkpoint (exit 1)."""
    from audit.errors import AuditError, AuditLocked
    from audit.verify import verify_file
    from service.audit_commands import checkpoints_for, live_segment, segment_inputs

    settings = _settings(config, data_dir)
    target = path or settings.audit_path
    if target.is_dir():
        target, checkpoints, pubkey = segment_inputs(target, checkpoints, pubkey)
    if not target.exists():
        err.print(f"[red]{target}: no such file[/red]")
        raise typer.Exit(2)
    signed = checkpoints_for(settings, checkpoints, pubkey)
    try:
        report = verify_file(target, [s.checkpoint for s in signed], deep=deep)
    except AuditLocked:
        # The service holds the file: verify a sealed segment it exports for us instead.
        segment = live_segment(settings)
        target, checkpoints, pubkey = segment_inputs(segment, None, None)
        signed = checkpoints_for(settings, checkpoints, pubkey)
        report = verify_file(target, [s.checkpoint for s in signed], deep=deep)
    except (AuditError, ValueError, OSError) as e:
        err.print(f"[red]✗[/red] {target}: cannot read as an audit log: {e}")
        raise typer.Exit(2) from None
    if not report.ok:
        err.print(f"[red]✗[/red] {target}: {report.problem}")
        raise typer.Exit(1)
    console.print(
        f"[green]✓[/green] {target}: {report.count:,} records, chain intact; "
        f"head {report.head_hash.hex()}"
    )
    if signed:
        unsealed = report.count - report.sealed
        console.print(
            f"[green]✓[/green] {report.checkpoints} signed checkpoints match; the newest seals "
            f"{report.sealed:,} records"
            + (f" ({unsealed:,} after it rest on the chain alone)" if unsealed else "")
        )
    else:
        console.print(
            "[yellow]no signed checkpoints[/yellow]: a cut-off tail or a log re-chained as a "
            "whole would pass; pass --checkpoints and --pubkey"
        )


# -- audit why / audit query: the questions compliance asks (docs/compliance.md) ----------------

DbOpt = Annotated[
    Path | None,
    typer.Option("--db", metavar="PATH", help="Audit DuckDB file (default: the data dir's log)."),
]
ExportOpt = Annotated[
    Path | None,
    typer.Option(
        "--export",
        metavar="PATH",
        help="A Parquet export of the log or an export segment directory; readable while the "
        "service runs.",
    ),
]


@audit_app.command("why")
def audit_why(
    customer: Annotated[str, typer.Option("--customer", help="Customer id (as in profiles).")],
    offer: Annotated[
        str | None, typer.Option("--offer", help="Only decisions that weighed this offer id.")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", metavar="DATE", help="From this UTC day or ISO time.")
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", metavar="DATE", help="Up to this UTC day (included) or time."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document.")] = False,
    db: DbOpt = None,
    export: ExportOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Every decision for one customer: inputs, candidates, choice, reasons, rule, outcome."""
    import json

    from audit.why import document, why
    from service import compliance

    settings = _settings(config, data_dir)
    try:
        low = compliance.parse_time("--since", since)
        high = compliance.parse_time("--until", until, end_of_day=True)
        if offer is not None and not offer.strip():
            raise compliance.ReportError("--offer: give an offer id", 2)
        pseudonym = compliance.pseudonym_of(settings.vault_path, customer)
        with compliance.open_log(settings.audit_path, db, export, settings.registry_dir) as (
            con,
            _,
        ):
            decisions = why(con, [pseudonym], offer, low, high)
    except compliance.ReportError as e:
        if e.code == 3 and db is None and export is None:
            from offerdesk.v1 import audit_pb2 as apb

            from service.audit_commands import live, timestamp

            # The service holds the log: it answers the same question and logs the access.
            request = apb.WhyRequest(
                customer_id=customer,
                offer_id=offer or "",
                since=timestamp(low),
                until=timestamp(high),
            )
            try:
                answer = live(settings, "Why", request)
            except typer.Exit:
                err.print(f"[yellow]{e}[/yellow]")
                raise
            console.print_json(json.dumps(answer))
            return
        err.print(f"[red]{e}[/red]" if e.code != 3 else f"[yellow]{e}[/yellow]")
        raise typer.Exit(e.code) from None
    except ValueError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    if as_json:
        doc = document(decisions, [pseudonym], offer, low, high)
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    else:
        compliance.print_why(console, customer, pseudonym, decisions, offer)


@audit_app.command("query")
def audit_query(
    name: Annotated[str | None, typer.Argument(help="A named view (see --list).")] = None,
    list_views: Annotated[bool, typer.Option("--list", help="List the named views.")] = False,
    fmt: Annotated[
        str, typer.Option("--format", help="table, csv or json.", metavar="FORMAT")
    ] = "table",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N rows.")] = None,
    db: DbOpt = None,
    export: ExportOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run one of the named compliance views over the log (docs/compliance.md)."""
    from audit.views import NEEDS_CAPS, VIEWS, query_view, view
    from service import compliance

    if list_views:
        for v in VIEWS:
            console.print(f"[bold]{v.name}[/bold]: {v.question}\n  [dim]expect: {v.expect}[/dim]")
        return
    try:
        if name is None:
            raise compliance.ReportError("NAME: give a view name, or --list to see them", 2)
        if fmt not in ("table", "csv", "json"):
            raise compliance.ReportError(f"--format: {fmt!r} is not table, csv or json", 2)
        view(name)
        settings = _settings(config, data_dir)
        with compliance.open_log(settings.audit_path, db, export, settings.registry_dir) as (
            con,
            unknown,
        ):
            table = query_view(con, name, limit=limit)
    except compliance.ReportError as e:
        if e.code == 3 and db is None and export is None:
            from offerdesk.v1 import audit_pb2 as apb

            from service.audit_commands import live

            # The service holds the log: it runs the same view and logs the access.
            try:
                answer = live(settings, "Query", apb.QueryRequest(view=name, limit=limit or 0))
            except typer.Exit:
                err.print(f"[yellow]{e}[/yellow]")
                raise
            console.print_json(json.dumps(answer))
            return
        err.print(f"[red]{e}[/red]" if e.code != 3 else f"[yellow]{e}[/yellow]")
        raise typer.Exit(e.code) from None
    except ValueError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    if unknown and name in NEEDS_CAPS:
        err.print(
            f"[yellow]contact caps unknown for catalog {', '.join(unknown)}: not in "
            f"{settings.registry_dir} (pass the service's --data-dir)[/yellow]"
        )
    out = compliance.render_table(table, fmt)
    if isinstance(out, str):
        print(out)
    else:
        console.print(out)


@audit_app.command("replay")
def audit_replay(
    since: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="DATE",
            help="Replay decisions recorded at or after this date or ISO time (UTC unless it "
            "has an offset).",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--to", metavar="DATE", help="... and before this date or ISO time."),
    ] = None,
    db: Annotated[
        Path | None,
        typer.Option(
            "--db", metavar="PATH", help="Audit DuckDB file (default: the data dir's log)."
        ),
    ] = None,
    export: Annotated[
        Path | None,
        typer.Option("--export", metavar="PATH", help="Replay a Parquet export of the log."),
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    limit: Annotated[
        int | None, typer.Option(metavar="N", min=1, help="Replay at most N decisions.")
    ] = None,
) -> None:
    """Re-run logged decisions with their logged model and catalog; exit 1 if any differs."""
    import json

    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from audit.errors import AuditError, AuditLocked
    from service.registry import Registry
    from service.replay import ABSENT, DecisionLog, replay_records

    start, end = time_window(("--from", since), ("--to", until))
    if db is not None and export is not None:
        err.print("[red]--db, --export:[/red] give one of them, not both")
        raise typer.Exit(2)
    settings = _settings(config, data_dir)
    option, path = ("--export", export) if export is not None else ("--db", db)
    path = path or settings.audit_path
    if not path.is_file():
        where = "" if db or export else f" (the log of --data-dir {settings.data_dir})"
        err.print(f"[red]{option}:[/red] {escape(str(path))}: no such file{escape(where)}")
        raise typer.Exit(2)
    registry = Registry(settings.registry_dir)
    if not registry.root.is_dir():
        err.print(f"[red]--data-dir:[/red] no model registry at {escape(str(registry.root))}")
        raise typer.Exit(2)
    try:
        log = DecisionLog.open(
            path, parquet=export is not None, since=start, until=end, limit=limit
        )
    except AuditLocked as e:
        err.print(f"[yellow]{escape(str(e))}[/yellow]")
        err.print(
            "Replay a Parquet export of the log instead (--export PATH), or stop the service "
            "(SIGTERM drains in-flight calls and closes the log) and run it again."
        )
        raise typer.Exit(3) from None
    except (AuditError, OSError) as e:
        err.print(f"[red]{option}:[/red] cannot read as an audit log: {escape(str(e))}")
        raise typer.Exit(2) from None
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with log, Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("replay", total=log.count())
        try:
            report = replay_records(
                log, registry, progress=lambda done: bar.update(task, completed=done)
            )
        except AuditError as e:
            err.print(f"[red]{option}:[/red] {escape(str(e))}")
            raise typer.Exit(2) from None

    def summary() -> None:
        def show(value: object) -> str:
            text = repr(value) if value is ABSENT else json.dumps(value, ensure_ascii=False)
            return escape(text if len(text) <= 160 else text[:157] + "...")

        span = (
            f"recorded from {start.isoformat() if start else 'the start'} "
            f"to {end.isoformat() if end else 'the end'}"
            if start or end
            else "in the whole log"
        )
        rate = f" ({report.total / report.seconds:,.0f}/s)" if report.seconds > 0 else ""
        console.print(
            f"{escape(str(path))}: replayed {report.total:,} decisions {span} "
            f"in {report.seconds:.1f}s{rate}"
        )
        if report.ok:
            console.print(f"[green]✓[/green] {report.identical:,} identical, 0 mismatched")
            return
        console.print(
            f"[red]✗[/red] {report.identical:,} identical, {report.mismatched:,} mismatched, "
            f"{report.not_replayed:,} not replayed"
        )
        if report.field_counts:
            console.print("mismatched fields (decisions):")
            for name, n in report.field_counts.items():
                console.print(f"  {escape(name)}  {n:,}")
        if report.missing_versions:
            console.print("versions the registry cannot give (decisions):")
            for version, n in report.missing_versions.items():
                console.print(f"  {escape(version)}  {n:,}")
        shown = None
        for m in report.mismatches[:10]:
            if m.decision_id != shown:
                console.print(f"{escape(m.decision_id)} (seq {m.seq}):")
                shown = m.decision_id
            console.print(
                f"  {escape(m.path)}\n    logged:   {show(m.logged)}\n"
                f"    replayed: {show(m.replayed)}",
                soft_wrap=True,
            )
        for miss in report.missing[:5]:
            console.print(f"{escape(miss.decision_id)} (seq {miss.seq}): {escape(miss.problem)}")
        for f in report.failures[:5]:
            console.print(f"{escape(f.decision_id)} (seq {f.seq}): {escape(f.problem)}")
        console.print("What a mismatch means: docs/decisions.md#determinism-and-replay")

    if as_json:
        span = {"from": start and start.isoformat(), "to": end and end.isoformat()}
        typer.echo(json.dumps({"log": str(path), **span, **report.to_record()}, indent=2))
    else:
        summary()
    raise typer.Exit(0 if report.ok else 1)


@audit_app.command("erase")
def audit_erase(
    customer: Annotated[
        str, typer.Option("--customer", help="Customer id (as in the profile source) to erase.")
    ],
    requested_by: Annotated[
        str,
        typer.Option("--requested-by", help="Operator id of who asked (no name, no email)."),
    ],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Erase a customer (service stopped): chain an `erasure` record, then delete their
    pseudonym and notes from the vault. Their records stay, verifiable and unlinkable."""
    from datetime import UTC, datetime

    from audit.errors import AuditError, AuditLocked
    from audit.store import AuditStore
    from audit.vault import Vault
    from service import erasure
    from service.errors import CatalogError, InvalidArgument, ModelError, NotFound
    from service.registry import Registry

    flags = {"customer_id": "--customer", "requested_by": "--requested-by"}
    try:
        erasure.check_request(customer, requested_by)
    except InvalidArgument as e:
        err.print(f"[red]✗[/red] {flags.get(e.field, e.field)}: {e.problem}; nothing was changed")
        raise typer.Exit(2) from None
    settings = _settings(config, data_dir)
    for path in (settings.audit_path, settings.vault_path):
        if not path.exists():
            err.print(f"[red]✗[/red] {path}: no such file, so nothing to erase (--data-dir?)")
            raise typer.Exit(2)
    if not yes and not typer.confirm(
        "Erase this customer? Their records stay but can no longer be linked to them.", err=True
    ):
        err.print("nothing was changed")
        raise typer.Exit(1)
    try:
        store = AuditStore.open(settings.audit_path)
    except AuditLocked as e:
        from offerdesk.v1 import audit_pb2 as apb

        from service.audit_commands import live

        # The service holds the log: it erases through the same code (Desk.erase).
        try:
            answer = live(
                settings,
                "Erase",
                apb.EraseRequest(customer_id=customer, requested_by=requested_by),
            )
        except typer.Exit:
            err.print(f"[yellow]{e}[/yellow]")
            err.print(
                "Without the running service's admin API: stop the service (SIGTERM drains "
                "in-flight calls), run `offerdesk audit erase` again, then start the service. "
                "Nothing was changed."
            )
            raise
        console.print(f"[green]✓[/green] {answer['outcome']} by the running service")
        console.print_json(json.dumps(answer))
        return
    except AuditError as e:
        err.print(f"[red]✗[/red] {settings.audit_path}: {e}")
        raise typer.Exit(2) from None
    try:
        contact, version, no_catalog = None, None, None
        try:  # the catalog only (no models): to say in the record what the policy does next
            registry = Registry(settings.registry_dir)
            active = registry.load_catalog(registry.active().catalog)
            contact, version = active.policy.contact, active.version
        except (ModelError, CatalogError) as e:
            no_catalog = e
        with Vault.open(settings.vault_path) as vault:
            result = erasure.erase(
                store,
                vault,
                settings.load_secrets().hash_key.get_secret_value(),
                customer,
                requested_by,
                datetime.now(UTC),
                contact=contact,
                catalog_version=version,
            )
    except NotFound as e:
        err.print(f"[red]✗[/red] --customer: {str(e).removeprefix('customer_id: ')}")
        raise typer.Exit(1) from None
    except AuditError as e:
        err.print(f"[red]✗[/red] erasure failed: {e}; run the same command again to finish it")
        raise typer.Exit(2) from None
    finally:
        store.close()
    when = f"{result.erased_at:%Y-%m-%d %H:%M:%S} UTC"
    if result.outcome == "already_erased":
        console.print(f"[green]✓[/green] already erased on {when}; nothing to do")
    else:
        done = "erased" if result.outcome == "erased" else "finished the erasure recorded"
        console.print(
            f"[green]✓[/green] {done} on {when}: pseudonym and {result.notes_deleted} note(s) "
            f"deleted from the vault; `erasure` record at seq {result.audit_sequence}"
        )
    until = result.offers_paused_until
    if until is not None:
        console.print(f"  offers to this customer id pause until {until:%Y-%m-%d} (UTC)")
    elif no_catalog is not None and result.outcome == "erased":
        err.print(f"[yellow]no active catalog[/yellow] ({no_catalog}): the record omits the pause")


def _load_catalog_or_exit(path: Path) -> Catalog:
    from service.catalog import load_catalog
    from service.errors import CatalogError

    try:
        return load_catalog(path)
    except CatalogError as e:
        for p in e.problems:
            err.print(f"[red]✗[/red] {p}")
        raise typer.Exit(1) from None


# The proof commands live beside the ones above, in their own module; importing it registers them.
from service import audit_commands as _audit_commands  # noqa: E402, F401
from service import model_commands as _model_commands  # noqa: E402, F401
from service import report_commands as _report_commands  # noqa: E402, F401

if __name__ == "__main__":
    # Run as a module, this file is __main__ while audit_commands registered its commands on
    # service.cli's app: run that one.
    from service.cli import app as registered

    registered()
