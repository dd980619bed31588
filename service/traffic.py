"""Simulated live traffic: resolved tickets played through a real Desk on a simulated clock.

Agents and customers answer by the simulator's truth, so the audit log it leaves looks like weeks
of production: decisions (treated and holdout), accepted and declined outcomes, and billing's
conversions — prompted ones for accepted offers and organic ones that happen with or without an
offer. Retraining, off-policy evaluation and the lift report read such a log exactly as they read
a real one. This is a simulator-side module: the decision path never imports it.

The conversion model (documented in docs/lift.md):
- After each resolved ticket the customer may buy each product unprompted within 30 days, with
  Truth.p_buy_anyway, at the product's full price; at most one such purchase per customer and
  product is pending at a time.
- An accepted offer is a purchase now at the offer's price; it replaces the customer's pending
  unprompted purchase of that product (the sale that would have come anyway is not counted twice).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice

import numpy as np
from offerdesk.v1 import offerdesk_pb2 as pb

from service import validation
from service.catalog import Catalog, Offer
from service.demo import DECLINES, decide_request
from service.demo import timestamp as _ts
from service.desk import Desk
from service.simulator import World, ticket_stream

#: an unprompted purchase happens within this long after the ticket that preceded it
ORGANIC_WINDOW = timedelta(days=30)
_TRACE = "0" * 32


@dataclass(frozen=True)
class TrafficSummary:
    decisions: int
    offers: int
    accepted: int
    declined: int
    prompted_conversions: int
    organic_conversions: int
    start: datetime
    end: datetime


def play(
    desk: Desk,
    world: World,
    *,
    tickets: int,
    start: datetime,
    days: float,
    seed: int = 11,
    progress: Callable[[int, int], None] | None = None,
) -> TrafficSummary:
    """Play `tickets` resolved tickets spread over `days` from `start` through `desk`.

    Every call goes through the same validation and Desk methods the gRPC service uses, with
    the simulated time as `now`; outcomes and conversions are written the moment they happen,
    so the log stays in time order. Deterministic per seed for a given model and catalog.
    """
    if tickets < 1 or days <= 0:
        raise ValueError("tickets must be at least 1 and days positive")
    catalog: Catalog = desk.deployment.catalog
    truth = world.truth
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7AFF1C]))
    stream = ticket_stream(
        world, catalog, seed=seed, start=start, mean_gap_seconds=days * 86_400 / tickets
    )
    # one offer per product stands for its unprompted purchase, at its full price
    by_product: dict[str, Offer] = {}
    for o in catalog.offers:
        by_product.setdefault(o.product, o)
    # (when, n, customer id, product, amount) of purchases yet to happen, and which
    # (customer, product) pairs have one pending
    pending: list[tuple[datetime, int, str, str, int]] = []
    waiting: set[tuple[str, str]] = set()
    counts = dict.fromkeys(("offers", "accepted", "declined", "prompted", "organic"), 0)
    n = n_pending = 0
    end = start

    def convert(cid: str, product: str, amount: int, at: datetime, kind: str) -> None:
        nonlocal n
        n += 1
        txn = hashlib.sha256(f"{seed}/{n}/{cid}/{product}".encode()).hexdigest()[:24]
        req = pb.RecordConversionRequest(
            transaction_id=f"txn-{txn}",
            source="billing",
            customer=pb.Customer(external_id=cid),
            product=product,
            amount=pb.Money(amount_minor=amount, currency=catalog.currency),
            occurred_at=_ts(at),
        )
        desk.record_conversion(validation.conversion_command(req, now=at), now=at)
        counts[kind] += 1

    def due(until: datetime) -> None:
        while pending and pending[0][0] <= until:
            at, _, cid, product, amount = heapq.heappop(pending)
            if (cid, product) in waiting:
                waiting.discard((cid, product))
                convert(cid, product, amount, at, "organic")

    for i, ev in enumerate(islice(stream, tickets)):
        at: datetime = ev["resolved_at"]
        due(at)
        end = at
        cid = world.resolve(ev["helpdesk"], ev["external_customer_id"])
        assert cid is not None
        view = world.view(cid)
        # Ticket numbers restart with every stream: tag them with this run, so a second run
        # (or the demo's) into the same log makes new request keys, not conflicting retries.
        ev = {**ev, "ticket_id": f"{ev['ticket_id']}-{seed}-{int(start.timestamp())}"}
        req = decide_request(ev)
        cmd = validation.decide_command(
            req, now=at, tags=catalog.spec.ticket_tags, fields=catalog.spec.ticket_fields
        )
        body = desk.decide(cmd, now=at, trace_id=_TRACE).body
        if progress:
            progress(i + 1, tickets)
        # Unprompted purchases this ticket may lead to (drawn for every product, every group).
        for product, product_offer in by_product.items():
            if (cid, product) in waiting:
                continue
            if rng.random() < truth.p_buy_anyway(view, product_offer):
                amount = product_offer.full_price.price_minor
                when = at + ORGANIC_WINDOW * float(rng.random())
                waiting.add((cid, product))
                n_pending += 1
                heapq.heappush(pending, (when, n_pending, cid, product, amount))
        if body["kind"] != "offer":
            continue
        counts["offers"] += 1
        card = body["card"]
        shown = catalog.offer(card["offer_id"])
        assert shown is not None
        variant = next(v for v in shown.variants if v.id == card["variant_id"])
        p = truth.p_accept(view, ev["ticket"], body["contact"], shown, variant)
        accepted = bool(rng.random() < p)
        out = pb.RecordOutcomeRequest(
            decision_id=body["decision_id"], agent_id="agent-sim", occurred_at=_ts(at)
        )
        if accepted:
            out.outcome = pb.ACCEPTED
            waiting.discard((cid, shown.product))
            convert(cid, shown.product, variant.price_minor, at, "prompted")
            counts["accepted"] += 1
        else:
            out.outcome = pb.DECLINED
            out.decline_reason = DECLINES[int(rng.integers(len(DECLINES)))]
            counts["declined"] += 1
        desk.record_outcome(validation.outcome_command(out, now=at), now=at)
    due(end)
    return TrafficSummary(
        tickets,
        counts["offers"],
        counts["accepted"],
        counts["declined"],
        counts["prompted"],
        counts["organic"],
        start,
        end,
    )
