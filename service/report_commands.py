"""`offerdesk report` commands: the lift report for a revenue owner (docs/lift.md).

Prints the report for people (rich) or as JSON, and writes it as one self-contained HTML file
with inline SVG charts. The figures come from service.lift; this module only presents them and
never writes to the log. Exit codes: 0 done, 1 nothing to compare, 2 bad input or unreadable
log.
"""

from __future__ import annotations

import html
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from service.catalog import currency_exponent
from service.cli import (
    ConfigOpt,
    DataDirOpt,
    _settings,
    console,
    err,
    report_app,
    time_window,
)

if TYPE_CHECKING:
    from rich.console import Console

    from service.lift import Estimate, LiftReport


@report_app.command("lift")
def lift(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    audit: Annotated[
        Path | None,
        typer.Option(
            "--audit",
            metavar="PATH",
            help="Audit DuckDB file, Parquet export or export segment directory "
            "(default: the data dir's log).",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", metavar="DATE", help="Decisions made at or after this UTC date or ISO time."
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", metavar="DATE", help="... and before this UTC date or ISO time."),
    ] = None,
    complete_only: Annotated[
        bool,
        typer.Option(
            "--complete-only",
            help="Leave out decisions whose 30-day attribution window is still open.",
        ),
    ] = False,
    html_out: Annotated[
        Path | None,
        typer.Option("--html", metavar="PATH", help="Also write the report as one HTML file."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT", help="text or json.")] = "text",
) -> None:
    """Did the offers make money that would not have come anyway?

    Treated against holdout per 1,000 resolved tickets, with 95% intervals clustered by
    customer (docs/lift.md)."""
    from rich.markup import escape

    from audit.errors import AuditError, AuditLocked
    from service.lift import LiftError, lift_report

    if fmt not in ("text", "json"):
        err.print(f"[red]--format:[/red] {escape(fmt)!r} is not text or json")
        raise typer.Exit(2)
    low, high = time_window(("--since", since), ("--until", until))
    settings = _settings(config, data_dir)
    path = audit or settings.audit_path
    if not path.exists():
        where = "" if audit else f" (the log of --data-dir {settings.data_dir})"
        err.print(f"[red]--audit:[/red] {escape(str(path))}: no such file{escape(where)}")
        raise typer.Exit(2)
    try:
        if audit is None:
            # While the service holds its log, read a sealed export it makes (audit API).
            from service.model_commands import readable_log

            path = readable_log(settings, None)
        report = lift_report(
            path, settings.registry_dir, since=low, until=high, complete_only=complete_only
        )
    except AuditLocked as e:
        err.print(
            f"[red]{escape(str(e))}[/red]\nWhile the service runs, report on an export instead: "
            "`offerdesk audit export` writes a sealed segment; pass its directory as --audit."
        )
        raise typer.Exit(2) from None
    except AuditError as e:
        err.print(f"[red]--audit:[/red] {escape(str(path))}: cannot read as an audit log: {e}")
        raise typer.Exit(2) from None
    except LiftError as e:
        err.print(f"[red]no lift report:[/red] {escape(str(e))}")
        raise typer.Exit(1) from None
    if fmt == "json":
        print(json.dumps(report.document(), ensure_ascii=False, indent=2))
    else:
        print_summary(console, report)
    if html_out is not None:
        try:
            html_out.write_text(render_html(report), encoding="utf-8")
        except OSError as e:
            err.print(f"[red]--html:[/red] {escape(str(e))}")
            raise typer.Exit(2) from None
        # stderr under --format json, so that stdout stays one JSON document
        (err if fmt == "json" else console).print(f"wrote {escape(str(html_out))}")


# -- the figures as text -----------------------------------------------------------------------


def _major(minor: float, currency: str) -> float:
    return minor / 10.0 ** currency_exponent(currency)


def _amount(minor: float, currency: str) -> str:
    return f"{_major(minor, currency):,.0f}"


def _money(minor: float, currency: str) -> str:
    return f"{currency} {_amount(minor, currency)}"


def _number(value: float, kind: str, currency: str, *, signed: bool = False) -> str:
    text = f"{value:,.1f}" if kind == "conversions" else _amount(value, currency)
    return f"+{text}" if signed and value > 0 else text.replace("-", "−")


def _with_ci(e: Estimate, kind: str, currency: str, *, signed: bool = False, sep: str = " ") -> str:
    value = _number(e.value, kind, currency, signed=signed)
    if e.low is None or e.high is None:
        return f"{value}{sep}(no interval)"
    low = _number(e.low, kind, currency, signed=signed)
    high = _number(e.high, kind, currency, signed=signed)
    return f"{value}{sep}({low} to {high})"


def _percent(e: Estimate | None, sep: str = " ") -> str:
    if e is None:
        return "n/a"
    text = f"{e.value:+.0%}".replace("-", "−")
    if e.low is None or e.high is None:
        return text
    return f"{text}{sep}({e.low:+.0%} to {e.high:+.0%})".replace("-", "−")


def _day(at: datetime | None) -> str:
    return "—" if at is None else at.strftime("%Y-%m-%d %H:%M")


_LABELS = {
    "conversions": "conversions / 1,000",
    "revenue": "revenue / 1,000",
    "margin": "margin / 1,000",
}


def power_lines(report: LiftReport) -> list[str]:
    """The power note as sentences (empty: too few customers to estimate a variance)."""
    lines = []
    for note in report.power:
        effect = _money(note.effect, report.currency)
        if note.decisions_needed is None:
            lines.append(f"{note.basis} ({effect} per 1,000 tickets): no variance to scale")
        elif note.detectable_now:
            lines.append(
                f"a margin lift of {effect} per 1,000 tickets ({note.basis}) is detectable now: "
                f"{note.decisions_needed:,} decisions suffice, {note.decisions_now:,} made"
            )
        else:
            lines.append(
                f"to detect a margin lift of {effect} per 1,000 tickets ({note.basis}): about "
                f"{note.more_needed:,} more decisions ({note.decisions_needed:,} in all, "
                f"{note.decisions_now:,} made)"
            )
    if not lines:
        lines.append(
            "no power estimate yet: a group has too few customers, or no variation in margin "
            "(e.g. no conversions), to scale from"
        )
    return lines


def print_summary(console: Console, report: LiftReport) -> None:
    """The short summary for a terminal: groups, figures per 1,000 with 95% intervals,
    offers, the power note and the caveats."""
    from rich.markup import escape
    from rich.table import Table

    cur = report.currency
    t, h = report.groups["treated"], report.groups["holdout"]
    window = f"{_day(report.first_decision_at)} to {_day(report.last_decision_at)} UTC"
    table = Table(
        title=f"Lift: treated against holdout ({window})",
        caption=f"per 1,000 resolved tickets, {cur}; 95% intervals clustered by customer",
    )
    table.add_column("")
    for name in ("treated", "holdout", "difference", "relative lift"):
        table.add_column(name, justify="right")
    table.add_row("tickets", f"{t.tickets:,}", f"{h.tickets:,}", "", "")
    table.add_row("customers", f"{t.customers:,}", f"{h.customers:,}", "", "")
    for kind, metric in report.metrics.items():
        # the interval on a line of its own keeps the table within 80 columns
        table.add_row(
            _LABELS[kind],
            _with_ci(metric.treated, kind, cur, sep="\n"),
            _with_ci(metric.holdout, kind, cur, sep="\n"),
            _with_ci(metric.difference, kind, cur, signed=True, sep="\n"),
            _percent(metric.relative, sep="\n"),
            end_section=True,
        )
    console.print(table)
    offers = Table(show_header=False, box=None, padding=(0, 2))
    offers.add_column()
    offers.add_column()
    offers.add_row(
        "take rate",
        f"{report.offers_accepted:,}/{report.offers_answered:,} answered = "
        f"{report.take_rate_answered:.1%}; {report.offers_accepted:,}/{report.offers_shown:,} "
        f"shown = {report.take_rate_shown:.1%}",
    )
    offers.add_row(
        "coverage", f"{report.coverage:.1%} of treated tickets got an offer ({t.offers:,})"
    )
    offers.add_row("discount spend", f"{_money(report.discount_spend_minor, cur)} (accepted)")
    offers.add_row(
        "conversions",
        f"{report.conversions_counted:,} counted: {t.conversions:,} treated, "
        f"{h.conversions:,} holdout",
    )
    for i, line in enumerate(power_lines(report)):
        offers.add_row("power" if i == 0 else "", escape(line))
    for i, line in enumerate(report.caveats):
        offers.add_row("[yellow]caveats[/yellow]" if i == 0 else "", escape(line))
    console.print(offers)


# -- the HTML report ----------------------------------------------------------------------------

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1b1b;
       max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
p.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #ddd; padding: .25rem .6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #888; }
figure { margin: 1rem 0; break-inside: avoid; } figcaption { color: #555; font-size: .9rem; }
figure svg { width: 100%; max-width: 44rem; height: auto; }
td:first-child { white-space: nowrap; }
ul.caveats li { margin: .2rem 0; }
.good { color: #1a7f37; } .bad { color: #b42318; }
@media print { body { margin: 0; max-width: none; } h2 { break-after: avoid; }
               table, figure { break-inside: avoid; } }
"""
_TREATED, _HOLDOUT = "#1f5fa8", "#b5651d"


def render_html(report: LiftReport) -> str:
    """The report as one HTML document: no scripts, fonts or files from anywhere else."""
    e = html.escape
    cur = report.currency
    t, h = report.groups["treated"], report.groups["holdout"]
    rows = [
        _tr(["tickets", f"{t.tickets:,}", f"{h.tickets:,}", "", ""]),
        _tr(["customers", f"{t.customers:,}", f"{h.customers:,}", "", ""]),
    ]
    for kind, m in report.metrics.items():
        rows.append(
            _tr(
                [
                    _LABELS[kind],
                    _with_ci(m.treated, kind, cur),
                    _with_ci(m.holdout, kind, cur),
                    _with_ci(m.difference, kind, cur, signed=True),
                    _percent(m.relative),
                ]
            )
        )
    offers = [
        _tr(
            [
                o.offer_id,
                f"{o.shown:,}",
                f"{o.accepted:,}",
                f"{o.take_rate:.1%}",
                f"{o.discounted:,}",
                _amount(o.discount_offered_minor, cur),
                _amount(o.discount_accepted_minor, cur),
            ]
        )
        for o in report.offers
    ]
    weeks = [
        _tr(
            [
                w.week,
                f"{w.treated_tickets:,}",
                f"{w.holdout_tickets:,}",
                "—" if w.treated is None else _with_ci(w.treated, "margin", cur),
                "—" if w.holdout is None else _with_ci(w.holdout, "margin", cur),
                "—" if w.difference is None else _with_ci(w.difference, "margin", cur, signed=True),
            ]
        )
        for w in report.weeks
    ]
    accounting = [
        _tr(
            ["counted (attributed to a decision in the window)", f"{report.conversions_counted:,}"]
        ),
        _tr(["no decision in the 30 days before", f"{report.conversions_unattributed:,}"]),
        _tr(["attributed to a decision outside the window", f"{report.conversions_outside:,}"]),
        _tr(
            [f"in a currency other than {cur} (left out)", f"{report.conversions_other_currency:,}"]
        ),
        _tr(["margin unknown (counted as 0)", f"{report.conversions_unknown_margin:,}"]),
    ]
    window = (
        f"Decisions from {_day(report.first_decision_at)} to {_day(report.last_decision_at)} UTC"
        + (f" (asked: since {_day(report.since)})" if report.since else "")
        + (f" (asked: before {_day(report.until)})" if report.until else "")
        + f"; the log's last record {_day(report.last_record_at)} UTC."
        + (" Only decisions whose 30-day window has closed." if report.complete_only else "")
    )
    shown = [
        _tr(["offers shown", f"{report.offers_shown:,}"]),
        _tr(
            [
                "take rate: accepted / offers with an outcome",
                f"{report.offers_accepted:,} / {report.offers_answered:,} = "
                f"{report.take_rate_answered:.1%}",
            ]
        ),
        _tr(
            [
                "take rate: accepted / offers shown",
                f"{report.offers_accepted:,} / {report.offers_shown:,} = "
                f"{report.take_rate_shown:.1%}",
            ]
        ),
        _tr(["coverage: treated tickets with an offer", f"{report.coverage:.1%}"]),
        _tr(
            [
                "discount spend (list − price of accepted offers)",
                _money(report.discount_spend_minor, cur),
            ]
        ),
    ]
    head = _tr(["", "treated", "holdout", "difference", "relative lift"], "th")
    offer_head = _tr(
        [
            "offer",
            "shown",
            "accepted",
            "take rate",
            "discounted",
            f"discount offered ({cur})",
            f"discount accepted ({cur})",
        ],
        "th",
    )
    week_head = _tr(
        [
            "week",
            "treated tickets",
            "holdout tickets",
            "treated margin / 1,000",
            "holdout margin / 1,000",
            "difference",
        ],
        "th",
    )
    caveats = "".join(f"<li>{e(c)}</li>" for c in report.caveats) or "<li>none</li>"
    power = "".join(f"<li>{e(line)}</li>" for line in power_lines(report))
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>offerdesk lift report</title>
<style>{_CSS}</style>
</head>
<body>
<h1>Lift report: did the offers make money that would not have come anyway?</h1>
<p class="meta">{e(window)} Log: <code>{e(report.source)}</code>. Generated {generated}.</p>

<h2>Treated against holdout, per 1,000 resolved tickets</h2>
<p>Every resolved ticket counts, with or without an offer (intention to treat). Money in
{e(cur)}; in brackets the 95% interval, clustered by customer. Conversions are attributed to
the customer's last decision within 30 days.</p>
<table>
<thead>{head}</thead>
<tbody>{"".join(rows)}</tbody>
</table>
<figure>{_chart_groups(report)}
<figcaption>Margin per 1,000 resolved tickets, with 95% intervals.</figcaption></figure>

<h2>Can the data tell yet?</h2>
<ul>{power}</ul>

<h2>Caveats</h2>
<ul class="caveats">{caveats}</ul>

<h2>Offers</h2>
<table><tbody>{"".join(shown)}</tbody></table>
<figure>{_chart_offers(report)}
<figcaption>Take rate by offer (accepted / shown); the count is offers shown.</figcaption></figure>
<table>
<thead>{offer_head}</thead>
<tbody>{"".join(offers)}</tbody>
</table>

<h2>By ISO week of the decision</h2>
<figure>{_chart_weeks(report)}
<figcaption>Margin per 1,000 tickets, treated − holdout, by week, with 95% intervals.
</figcaption></figure>
<table>
<thead>{week_head}</thead>
<tbody>{"".join(weeks)}</tbody>
</table>

<h2>Where the conversions went</h2>
<table><tbody>{"".join(accounting)}</tbody></table>
</body>
</html>
"""


def _tr(cells: list[str], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"


def _svg(fig: Any) -> str:
    """A matplotlib figure as an inline <svg> element (no XML prologue, text as text)."""
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(
        buffer,
        format="svg",
        bbox_inches="tight",
        metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
    )
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _pyplot(salt: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.fonttype": "none",
            # ids inside each SVG differ between charts (they share one HTML document) and
            # stay the same from run to run
            "svg.hashsalt": salt,
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    return plt


def _whisker(e: Estimate, currency: str) -> float:
    return 0.0 if e.se is None else _major(e.high or 0.0, currency) - _major(e.value, currency)


def _chart_groups(report: LiftReport) -> str:
    plt = _pyplot("lift-groups")
    cur = report.currency
    m = report.metrics["margin"]
    estimates = [m.treated, m.holdout, m.difference]
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    labels = ["treated", "holdout", "treated − holdout"]
    values = [_major(x.value, cur) for x in estimates]
    ax.bar(
        labels,
        values,
        yerr=[_whisker(x, cur) for x in estimates],
        color=[_TREATED, _HOLDOUT, "#777777"],
        capsize=6,
        width=0.55,
    )
    ax.axhline(0, color="#333333", linewidth=0.8)
    ax.set_ylabel(f"margin per 1,000 tickets ({cur})")
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
    return _svg(fig)


def _chart_weeks(report: LiftReport) -> str:
    plt = _pyplot("lift-weeks")
    cur = report.currency
    weeks = [w for w in report.weeks if w.difference is not None]
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    if weeks:
        xs = list(range(len(weeks)))
        ys = [_major(w.difference.value, cur) for w in weeks if w.difference]
        errs = [_whisker(w.difference, cur) for w in weeks if w.difference]
        ax.errorbar(xs, ys, yerr=errs, fmt="o", color=_TREATED, capsize=5)
        ax.set_xticks(xs, [w.week for w in weeks])
    else:
        ax.text(0.5, 0.5, "no week has both groups", ha="center", transform=ax.transAxes)
    ax.axhline(0, color="#333333", linewidth=0.8)
    ax.set_ylabel(f"treated − holdout ({cur})")
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
    return _svg(fig)


def _chart_offers(report: LiftReport) -> str:
    plt = _pyplot("lift-offers")
    rows = list(reversed(report.offers))
    fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.28 * max(1, len(rows))))
    if rows:
        bars = ax.barh([o.offer_id for o in rows], [o.take_rate for o in rows], color=_TREATED)
        ax.bar_label(bars, [f"{o.take_rate:.0%} of {o.shown:,}" for o in rows], padding=3)
        ax.set_xlim(0, min(1.0, max(o.take_rate for o in rows) * 1.3 + 0.05))
    else:
        ax.text(0.5, 0.5, "no offer was shown", ha="center", transform=ax.transAxes)
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_xlabel("take rate (accepted / shown)")
    return _svg(fig)
