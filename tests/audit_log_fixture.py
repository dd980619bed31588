"""One real audit log for the views, `why` and CLI tests: a real server on loopback, driven
through gRPC with offers, every kind of outcome, opt-outs, a conversion and capped customers.

Built once per session, on first use (`served_log`), then the server is stopped so the DuckDB
file can be read; a Parquet export of it sits next to it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from offerdesk.v1 import offerdesk_pb2 as pb
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc

from audit.verify import export_parquet
from service.arbitration import holdout_bucket
from service.server import start
from service.settings import Settings, load_settings
from service.simulator import World

CATEGORIES = ("billing", "how_to", "access", "performance", "feature_request", "bug")
AREAS = ("seats", "storage", "reporting", "api", "sso", "billing")


@dataclass
class ServedLog:
    """What was played through the server, to check the views against."""

    settings: Settings
    parquet: Path
    offers: dict[str, pb.DecideResponse] = field(default_factory=dict)  # decision id → reply
    customer_of: dict[str, str] = field(default_factory=dict)  # decision id → customer id
    outcomes: dict[str, str] = field(default_factory=dict)  # decision id → outcome name
    opted_out: list[str] = field(default_factory=list)
    capped: list[str] = field(default_factory=list)  # customers refused with CONTACT_LIMIT
    converted: tuple[str, str] | None = None  # (customer id, decision id of the offer)


def ts(at: datetime | None = None) -> Timestamp:
    t = Timestamp()
    t.FromDatetime((at or datetime.now(UTC)).replace(tzinfo=None))
    return t


def decide_request(world: World, cid: str, key: str, i: int) -> pb.DecideRequest:
    return pb.DecideRequest(
        request_key=key,
        helpdesk="zendesk",
        ticket=pb.Ticket(
            id=f"ZD-{key}",
            category=CATEGORIES[i % len(CATEGORIES)],
            product_area=AREAS[(i // 2) % len(AREAS)],
            channel=pb.CHANNEL_CHAT,
            resolved_at=ts(),
            csat=5,
            sentiment=0.5,
        ),
        customer=pb.Customer(external_id=world.external_ids(cid)["zendesk"]),
        agent_id="agent-1",
        locale="en-US",
    )


def _treated(world: World, settings: Settings) -> list[str]:
    key = settings.load_secrets().holdout_key.get_secret_value()
    return [
        c
        for c in sorted(world.profiles)
        if world.profiles[c].get("marketing_consent")
        and not world.profiles[c].get("open_billing_dispute")
        and world.profiles[c].get("payment_failures_90d", 0) < 2
        and holdout_bucket(key, c) >= 0.10
    ]


_built: dict[Path, ServedLog] = {}


def served_log(trained_dir: Path, world: World, tmp: pytest.TempPathFactory) -> ServedLog:
    """The log, built on first use in this test session and shared after (read it, or copy it
    before changing it)."""
    if trained_dir not in _built:
        _built[trained_dir] = build_served_log(trained_dir, world, tmp.mktemp("served"))
    return _built[trained_dir]


def build_served_log(trained_dir: Path, world: World, root: Path) -> ServedLog:
    data = root / "var"
    shutil.copytree(trained_dir / "registry", data / "registry")
    shutil.copytree(trained_dir / "profiles", data / "profiles")
    settings = load_settings(None, data_dir=data, listen="127.0.0.1:0")
    log = ServedLog(settings, root / "audit.parquet")
    running = start(settings)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            _play(pb_grpc.OfferDeskStub(channel), world, settings, log)
    finally:
        running.stop()
    export_parquet(settings.audit_path, log.parquet)
    return log


def _play(stub: pb_grpc.OfferDeskStub, world: World, settings: Settings, log: ServedLog) -> None:
    n = 0

    def decide(cid: str) -> pb.DecideResponse:
        nonlocal n
        n += 1
        reply = stub.Decide(decide_request(world, cid, f"v-{n}", n))
        log.customer_of[reply.decision_id] = cid
        if reply.kind == pb.OFFER:
            log.offers[reply.decision_id] = reply
        if reply.no_offer_reason == pb.CONTACT_LIMIT:
            log.capped.append(cid)
        return reply

    def outcome(reply: pb.DecideResponse, which: int) -> None:
        names = {
            pb.ACCEPTED: "accepted",
            pb.DECLINED: "declined",
            pb.NOT_PRESENTED: "not_presented",
        }
        stub.RecordOutcome(
            pb.RecordOutcomeRequest(
                decision_id=reply.decision_id,
                outcome=which,
                decline_reason=pb.TOO_EXPENSIVE if which == pb.DECLINED else 0,
                agent_id="agent-7",
                occurred_at=ts(),
            )
        )
        log.outcomes[reply.decision_id] = names[which]

    treated = _treated(world, settings)
    # Customers seen once, with each kind of outcome in turn.
    cycle = (pb.ACCEPTED, pb.DECLINED, pb.NOT_PRESENTED, None)
    for i, cid in enumerate(treated[:36]):
        reply = decide(cid)
        if reply.kind == pb.OFFER and (which := cycle[i % 4]) is not None:
            outcome(reply, which)
    # Customers who said no to marketing: their consent is chained as false.
    profiles = world.profiles
    log.opted_out = [c for c in sorted(profiles) if profiles[c].get("marketing_consent") is False]
    del log.opted_out[4:]
    for cid in log.opted_out:
        decide(cid)
    # Customers asked again and again: accepted offers fill the cap, a not-presented one
    # first frees a place.
    for j, cid in enumerate(treated[36:48]):
        for k in range(7):
            reply = decide(cid)
            if reply.kind == pb.OFFER:
                outcome(reply, pb.NOT_PRESENTED if (j % 2 and k == 0) else pb.ACCEPTED)
    # A purchase of an offered product after the offer.
    accepted = [d for d, o in log.outcomes.items() if o == "accepted"]
    did = accepted[0]
    cid, card = log.customer_of[did], log.offers[did].card
    stub.RecordConversion(
        pb.RecordConversionRequest(
            transaction_id="inv-views-1",
            source="billing",
            customer=pb.Customer(external_id=cid),
            product=card.product,
            amount=pb.Money(amount_minor=card.variant.price.amount_minor, currency="USD"),
            occurred_at=ts(),
        )
    )
    log.converted = (cid, did)
