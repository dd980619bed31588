"""What `offerdesk audit why` and `offerdesk audit query` read and print for people.

Opens the log (the DuckDB file read-only, or an export), resolves a customer id to their
pseudonym through the vault without ever creating one, takes each logged catalog version's
contact caps from the registry, and renders decisions as rich panels and views as tables.
It must never write to the log, the vault or the registry.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import duckdb
from rich.console import Console
from rich.panel import Panel
from rich.table import Table as RichTable
from rich.text import Text

from audit.views import ContactCaps, Table, attach_source, catalog_versions, install_views
from audit.why import DecisionWhy
from service.catalog import format_money

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class ReportError(Exception):
    """A command cannot answer: the message says why and what to do; ``code`` is the exit."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def parse_time(option: str, text: str | None, *, end_of_day: bool = False) -> datetime | None:
    """``YYYY-MM-DD`` (a UTC day; with ``end_of_day`` the day is included) or an ISO time.

    A time without an offset is UTC. Raises ReportError (exit 2) naming the option.
    """
    if text is None:
        return None
    try:
        if _DATE.fullmatch(text):
            day = date.fromisoformat(text)
            start = datetime.combine(day, time(), tzinfo=UTC)
            return start + timedelta(days=1) if end_of_day else start
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ReportError(
            f"{option}: {text!r} is not a date (YYYY-MM-DD) or an ISO 8601 time", 2
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def pseudonym_of(vault_path: Path, customer_id: str) -> str:
    """The customer's pseudonym from the vault, never creating one (exit 1 if none)."""
    from audit.errors import AuditError
    from audit.vault import Vault

    if not customer_id.strip():
        raise ReportError("--customer: give the customer id (as in the profile source)", 2)
    if not vault_path.is_file():
        raise ReportError(
            f"no vault at {vault_path}: pass the service's --data-dir (or --config)", 2
        )
    try:
        with Vault.open(vault_path) as vault:
            pseudonym = vault.lookup(customer_id)
    except AuditError as e:
        raise ReportError(f"cannot read the vault: {e}", 2) from None
    if pseudonym is None:
        raise ReportError(
            f"customer {customer_id!r} has no pseudonym in {vault_path}: the service never "
            "saw them, or they were erased (their records stay in the log but no longer "
            "lead to them)",
            1,
        )
    return pseudonym


@contextlib.contextmanager
def open_log(
    default: Path, db: Path | None, export: Path | None, registry_dir: Path
) -> Iterator[tuple[duckdb.DuckDBPyConnection, list[str]]]:
    """A connection with the views installed, and the catalog versions whose caps are unknown.

    Reads ``export`` (Parquet file or export segment directory) if given, else ``db`` or
    ``default``. Exit 3 if the service holds the DuckDB file, 2 if it is not an audit log.
    """
    from audit.errors import AuditError, AuditLocked

    if db is not None and export is not None:
        raise ReportError("--db and --export: give one of them, not both", 2)
    path = export or db or default
    option = "--export" if export else "--db"
    if not path.exists():
        raise ReportError(f"{option}: {path}: no such file", 2)
    con = duckdb.connect()
    try:
        try:
            attach_source(con, path)
            caps, unknown = contact_caps(registry_dir, catalog_versions(con))
            install_views(con, caps)
        except AuditLocked as e:
            raise ReportError(
                f"{e}\nWhile the service runs, ask a Parquet export instead "
                "(--export PATH: a .parquet copy of the log or an export segment directory, "
                "which `offerdesk audit export` writes), or stop the service (SIGTERM) first.",
                3,
            ) from None
        except AuditError as e:
            raise ReportError(f"{path}: cannot read as an audit log: {e}", 2) from None
        yield con, unknown
    finally:
        con.close()


def contact_caps(
    registry_dir: Path, versions: Sequence[str]
) -> tuple[list[ContactCaps], list[str]]:
    """Each catalog version's contact caps from the registry, and the versions it lacks."""
    from service.errors import OfferDeskError
    from service.registry import Registry

    caps, unknown = [], []
    for version in versions:
        try:
            contact = Registry(registry_dir).load_catalog(version).policy.contact
        except (OfferDeskError, OSError):
            unknown.append(version)
            continue
        caps.append(ContactCaps(version, contact.window_days, contact.max_offers))
    return caps, unknown


# -- why --------------------------------------------------------------------------------------


def print_why(
    console: Console,
    customer_id: str,
    pseudonym: str,
    decisions: Sequence[DecisionWhy],
    offer: str | None,
) -> None:
    """One panel per decision: what was shown or why nothing, and everything behind it."""
    scope = f" about offer {offer}" if offer else ""
    console.print(
        f"customer [bold]{customer_id}[/bold] is {pseudonym} in the log: "
        f"{len(decisions)} decision{'s' if len(decisions) != 1 else ''}{scope}"
    )
    for d in decisions:
        console.print(_panel(d, offer))


def _panel(d: DecisionWhy, offer: str | None) -> Panel:
    grid = RichTable.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()

    def line(label: str, text: str, style: str = "") -> None:
        grid.add_row(label, Text(text, style=style))

    card = d.card
    if card is not None:
        price = format_money(card["price_minor"], card["currency"])
        shown = f"{card['offer_name']} — {card['variant_name']} ({d.policy_action}) at {price}"
        if card["list_price_minor"] > card["price_minor"]:
            shown += (
                f" (list {format_money(card['list_price_minor'], card['currency'])}, "
                f"{card['discount_bps'] / 100:g}% off)"
            )
        line("Shown", shown, "green")
    else:
        line("No offer", f"{d.no_offer_reason} — the agent read “{d.agent_message}”", "yellow")
        if d.group == "holdout" and d.policy_action != "no_offer":
            line("", f"would have shown {d.policy_action} (held out to measure uplift)")
    group = d.group + (", explored" if d.explored else "")
    best = "" if d.greedy == d.policy_action else f" · the model's best was {d.greedy}"
    line("Group", f"{group} · propensity {d.propensity:.4g}{best}")
    rule = d.firing_rule
    if rule is not None:
        line("Rule", f"{rule['id']} — {rule['description']} ({rule['expression']})")
    for i, reason in enumerate(list(d.reasons)[:3]):
        line("Reasons" if i == 0 else "", f"• {reason['text']}")
    currency = card["currency"] if card else None
    ranked = sorted(
        (a for a in d.actions if a["value"] is not None), key=lambda a: -float(a["value"])
    )
    for i, a in enumerate(ranked[:3]):
        value = format_money(a["value"], currency) if currency else f"{a['value']:,.0f} minor"
        line(
            "Candidates" if i == 0 else "",
            f"{a['action']}: p_accept {a['p_accept']:.2f}, value {value}, "
            f"chosen with p {a['probability']:.3f}",
        )
    if offer is not None:
        if d.offer_id == offer:
            line("This offer", "was shown")
        for w in d.why_not:
            if w["offer_id"] == offer:
                line("This offer", f"{w['code']} — {w['detail']}")
    else:
        # Offers ruled out by a rule or the policy say more than offers nothing called for.
        ruled_out = sorted(d.why_not, key=lambda w: w["code"] == "NOT_TRIGGERED")
        for i, w in enumerate(ruled_out[:3]):
            line("Not shown" if i == 0 else "", f"{w['offer_id']}: {w['code']} — {w['detail']}")
        if len(ruled_out) > 3:
            line("", f"and {len(ruled_out) - 3} more (--json has them all)", "dim")
    line("Versions", f"model {d.model_version} · catalog {d.catalog_version}")
    line("Trace", f"{d.trace_id} · helpdesk {d.helpdesk} · agent {d.agent_id}")
    if d.outcome is not None:
        o = d.outcome
        what = o.outcome + (f" ({o.decline_reason})" if o.decline_reason else "")
        note = " · a note is kept in the vault" if o.has_note else ""
        line("Outcome", f"{what} — recorded by {o.agent_id} at {_when(o.occurred_at)}{note}")
    elif card is not None:
        line("Outcome", "none recorded", "dim")
    for i, c in enumerate(d.conversions):
        line(
            "Bought" if i == 0 else "",
            f"{c.product} for {format_money(c.amount_minor, c.currency)} at "
            f"{_when(c.occurred_at)} ({c.source})",
        )
    title = f"{_when(d.decided_at)} · {d.decision_id} · seq {d.seq}"
    return Panel(grid, title=title, title_align="left", expand=False)


def _when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# -- query ------------------------------------------------------------------------------------


def render_table(table: Table, fmt: str) -> str | RichTable:
    """The view's rows as csv or json text, or a rich table."""
    records = table.records()
    if fmt == "json":
        return json.dumps(table.document(), ensure_ascii=False, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(table.columns)
        for row in records:
            writer.writerow([_cell(row[c]) for c in table.columns])
        return out.getvalue().rstrip("\n")
    shown = RichTable(title=f"{table.name}: {len(records)} row{'s' if len(records) != 1 else ''}")
    for column in table.columns:
        shown.add_column(column, overflow="fold")
    for row in records:
        shown.add_row(*(_cell(row[c]) for c in table.columns))
    return shown


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Mapping | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
