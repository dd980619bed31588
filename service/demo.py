"""The demo: simulate, train, serve on loopback, and play resolved tickets through gRPC.

The client half talks to the server only through the offerdesk.v1 contract, the way a helpdesk
adapter does; simulated agents accept or decline by the simulator's ground truth. Uses its own
data directory, which it wipes first; it never touches any other audit log.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from offerdesk.v1 import offerdesk_pb2 as pb
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from service.policy import ContactEvent, contact_summary

CHANNEL = {
    "email": pb.CHANNEL_EMAIL,
    "chat": pb.CHANNEL_CHAT,
    "phone": pb.CHANNEL_PHONE,
    "web": pb.CHANNEL_WEB,
    "messaging": pb.CHANNEL_MESSAGING,
    "social": pb.CHANNEL_SOCIAL,
}
DECLINES = [pb.NOT_INTERESTED, pb.TOO_EXPENSIVE, pb.BAD_TIMING, pb.NEEDS_APPROVAL]


def timestamp(at: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(at.astimezone(UTC).replace(tzinfo=None))
    return ts


def decide_request(event: dict[str, Any], agent_id: str = "agent-17") -> pb.DecideRequest:
    """What an adapter sends for a resolved ticket (the request key is stable per event)."""
    t = event["ticket"]
    ticket = pb.Ticket(
        id=event["ticket_id"],
        category=t["category"],
        product_area=t["product_area"],
        channel=CHANNEL[t["channel"]],
        resolved_at=timestamp(event["resolved_at"]),
        tags=t.get("tags", []),
        custom_fields=t.get("fields", {}),
        reopen_count=t["reopen_count"],
    )
    if "csat" in t:
        ticket.csat = t["csat"]
    if "sentiment" in t:
        ticket.sentiment = t["sentiment"]
    key = f"{event['helpdesk']}:{event['ticket_id']}:solved:{t['reopen_count']}"
    return pb.DecideRequest(
        request_key=key,
        helpdesk=event["helpdesk"],
        ticket=ticket,
        customer=pb.Customer(external_id=event["external_customer_id"]),
        agent_id=agent_id,
        locale="en-US",
    )


def card_panel(resp: pb.DecideResponse) -> Panel:
    """An offer card as the agent reads it."""
    if resp.kind == pb.NO_OFFER:
        return Panel(
            f"[bold]{resp.agent_message}[/bold]\n[dim]reason code: "
            f"{pb.NoOfferReason.Name(resp.no_offer_reason)} · decision "
            f"{resp.decision_id}[/dim]",
            title="No offer",
            border_style="yellow",
        )
    c = resp.card
    price = c.variant.price.amount_minor / 100
    lines = [
        f"[bold]{c.offer_name}[/bold] — {c.variant.name}: "
        f"{c.variant.price.currency} {price:,.2f}"
        + (f" ({c.variant.discount_bps / 100:.0f}% off)" if c.variant.discount_bps else "")
    ]
    lines += [f"  • {p}" for p in c.talking_points]
    if c.explored:
        lines.append("[italic]Suggested to learn what works; the model is less sure.[/italic]")
    else:
        lines.append("[bold]Why this customer:[/bold]")
        lines += [f"  ✓ {r.text}" for r in c.reasons]
    lines.append(f"[dim]Rule: {c.firing_rule.id} — {c.firing_rule.description}[/dim]")
    lines.append(
        f"[dim]p(accept) {c.p_accept:.0%} · expected value "
        f"{c.expected_value.currency} {c.expected_value.amount_minor / 100:,.2f} · "
        f"{len(resp.why_not)} other offers not chosen[/dim]"
    )
    return Panel(
        "\n".join(lines),
        title="Offer card",
        border_style="green",
        subtitle="[ Accept ]  [ Decline ▾ ]",
    )


def run(data_dir: Path, tickets: int, console: Console) -> int:
    from audit.verify import verify_file
    from service.catalog import load_catalog
    from service.cli import EXAMPLE_CATALOG, train_default
    from service.server import start
    from service.settings import load_settings
    from service.simulator import load_world, simulate, ticket_stream

    t0 = time.perf_counter()
    if data_dir.exists():
        shutil.rmtree(data_dir)
    settings = load_settings(None, data_dir=data_dir, listen="127.0.0.1:0")
    catalog = load_catalog(EXAMPLE_CATALOG)
    console.rule("1. simulate")
    s = simulate(catalog, settings.profile_dir)
    console.print(
        f"{s.customers:,} customers, {s.history_rows:,} past tickets, "
        f"{s.offers_shown:,} offers in the bootstrap history ({s.seconds:.1f}s)"
    )
    console.rule("2. train the default model")
    version = train_default(settings, catalog)
    console.print(f"model {version}, catalog {catalog.version}")
    console.rule("3. serve on loopback and play resolved tickets")
    running = start(settings)
    world = load_world(settings.profile_dir)
    rng = np.random.default_rng(3)
    # Tickets resolved over the last minute: the server decides on its own clock.
    start_at = datetime.now(UTC) - timedelta(seconds=60)
    events = list(
        islice(
            ticket_stream(world, catalog, start=start_at, mean_gap_seconds=50.0 / tickets),
            tickets,
        )
    )
    latencies: list[float] = []
    responses: list[pb.DecideResponse] = []
    outcomes: Counter[str] = Counter()
    # What each simulated customer has been offered here: the truth's fatigue input.
    shown: dict[str, list[ContactEvent]] = {}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.OfferDeskStub(channel)
            for ev in events:
                req = decide_request(ev)
                t = time.perf_counter()
                resp = stub.Decide(req, timeout=10)
                latencies.append(time.perf_counter() - t)
                responses.append(resp)
                if resp.kind != pb.OFFER:
                    continue
                cid = world.resolve(ev["helpdesk"], ev["external_customer_id"])
                assert cid is not None
                offer = catalog.offer(resp.card.offer_id)
                assert offer is not None
                variant = next(v for v in offer.variants if v.id == resp.card.variant.id)
                contact = contact_summary(shown.get(cid, []), ev["resolved_at"])
                p = world.truth.p_accept(world.view(cid), ev["ticket"], contact, offer, variant)
                accepted = bool(rng.random() < p)
                at = ev["resolved_at"]
                outcome = "accepted" if accepted else "declined"
                shown.setdefault(cid, []).append(
                    ContactEvent(resp.decision_id, offer.id, at, outcome, at)
                )
                out = pb.RecordOutcomeRequest(
                    decision_id=resp.decision_id,
                    agent_id="agent-17",
                    occurred_at=timestamp(datetime.now(UTC)),
                )
                if accepted:
                    out.outcome = pb.ACCEPTED
                    stub.RecordConversion(
                        pb.RecordConversionRequest(
                            transaction_id=f"txn-{resp.decision_id}",
                            source="billing",
                            customer=pb.Customer(external_id=cid),
                            product=offer.product,
                            amount=resp.card.variant.price,
                            occurred_at=timestamp(datetime.now(UTC)),
                        ),
                        timeout=10,
                    )
                else:
                    out.outcome = pb.DECLINED
                    out.decline_reason = DECLINES[int(rng.integers(len(DECLINES)))]
                stub.RecordOutcome(out, timeout=10)
                outcomes[pb.Outcome.Name(out.outcome)] += 1
            # A retried webhook returns the same decision and writes nothing new.
            again = stub.Decide(decide_request(events[0]), timeout=10)
            assert again.decision_id == responses[0].decision_id
    finally:
        running.stop()
    _show(console, responses)
    report = verify_file(settings.audit_path)
    offers = [r for r in responses if r.kind == pb.OFFER]
    reasons = Counter(
        pb.NoOfferReason.Name(r.no_offer_reason) for r in responses if r.kind == pb.NO_OFFER
    )
    kinds = Counter(pb.OfferKind.Name(r.card.offer_kind) for r in offers)
    ms = sorted(x * 1000 for x in latencies)
    table = Table(title="Summary", show_header=False)
    table.add_row("decisions", f"{len(responses)}")
    table.add_row("offers by kind", ", ".join(f"{k.lower()} {v}" for k, v in kinds.items()))
    table.add_row(
        "no-offer reasons", ", ".join(f"{k.lower()} {v}" for k, v in reasons.most_common())
    )
    table.add_row(
        "take rate",
        f"{outcomes['ACCEPTED']}/{len(offers)} = {outcomes['ACCEPTED'] / max(1, len(offers)):.0%}",
    )
    table.add_row("holdout decisions", f"{reasons.get('HOLDOUT', 0)}")
    table.add_row(
        "Decide latency (client, loopback)",
        f"p50 {statistics.median(ms):.1f} ms · "
        f"p99 {ms[min(len(ms) - 1, int(len(ms) * 0.99))]:.1f} ms",
    )
    table.add_row("audit records", f"{report.count:,}")
    table.add_row("chain verified", "yes" if report.ok else f"NO: {report.problem}")
    table.add_row("audit file", str(settings.audit_path))
    table.add_row("wall time", f"{time.perf_counter() - t0:.1f} s")
    console.print(table)
    console.print(
        'Explore it (DuckDB 2.x): .venv/bin/python -c "import duckdb; con = duckdb.connect('
        f"'{settings.audit_path}', read_only=True); con.sql('SELECT seq, kind, subject, "
        "recorded_at FROM audit_records ORDER BY seq LIMIT 20').show()\""
    )
    return 0 if report.ok else 1


def _show(console: Console, responses: list[pb.DecideResponse]) -> None:
    console.rule("4. what agents saw")
    confident = [r for r in responses if r.kind == pb.OFFER and not r.card.explored]
    for r in confident[:3]:
        console.print(card_panel(r))
    no_offer = [
        r
        for r in responses
        if r.kind == pb.NO_OFFER and r.no_offer_reason not in (pb.HOLDOUT, pb.EXPLORATION)
    ]
    if no_offer:
        console.print(card_panel(no_offer[0]))
