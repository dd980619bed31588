"""End to end on real parts: a gRPC server on loopback, a real DuckDB audit file, a real model."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from offerdesk.v1 import offerdesk_pb2 as pb
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc

from audit.verify import verify_file
from service.arbitration import holdout_bucket
from service.server import Running, start
from service.settings import Settings
from service.simulator import World


def ts(at: datetime | None = None) -> Timestamp:
    t = Timestamp()
    t.FromDatetime((at or datetime.now(UTC)).replace(tzinfo=None))
    return t


def request(world: World, customer_id: str, key: str, **ticket: object) -> pb.DecideRequest:
    fields = {
        "id": f"ZD-{key}",
        "category": "access",
        "product_area": "seats",
        "channel": pb.CHANNEL_CHAT,
        "resolved_at": ts(),
        "csat": 5,
        "sentiment": 0.5,
    }
    fields.update(ticket)
    return pb.DecideRequest(
        request_key=key,
        helpdesk="zendesk",
        ticket=pb.Ticket(**fields),
        customer=pb.Customer(external_id=world.external_ids(customer_id)["zendesk"]),
        agent_id="agent-1",
        locale="en-US",
    )


def treated_customers(world: World, settings: Settings) -> list[str]:
    """Customers who may be offered something: consenting, no dispute, not held out."""
    key = settings.load_secrets().holdout_key.get_secret_value()
    out = []
    for cid in sorted(world.profiles):
        p = world.profiles[cid]
        if (
            p.get("marketing_consent")
            and not p.get("open_billing_dispute")
            and p.get("payment_failures_90d", 0) < 2
            and holdout_bucket(key, cid) >= 0.10
        ):
            out.append(cid)
    return out


def first_offer(
    stub: pb_grpc.OfferDeskStub, world: World, settings: Settings, prefix: str = "k"
) -> tuple[str, pb.DecideResponse, str]:
    """The first treated customer who gets an offer, the response, and its request key."""
    for i, cid in enumerate(treated_customers(world, settings)[:200]):
        resp = stub.Decide(request(world, cid, f"{prefix}-{i}"))
        if resp.kind == pb.OFFER:
            return cid, resp, f"{prefix}-{i}"
    raise AssertionError("no customer got an offer in 200 tries")


def count(server: Running) -> int:
    return server.desk.store.head()[0]


def test_decide_outcome_and_audit_end_to_end(stub, server, world, settings) -> None:
    cid, resp, key = first_offer(stub, world, settings)
    assert resp.decision_id.startswith("d_") and resp.card.offer_id
    assert resp.card.firing_rule.id and resp.card.firing_rule.expression
    assert 0 < resp.card.p_accept < 1 and len(resp.card.reasons) <= 3
    assert resp.model_version.startswith("mdl-") and resp.catalog_version.startswith("cat-")
    assert len(resp.trace_id) == 32 and resp.trace_id != "0" * 32
    ack = stub.RecordOutcome(
        pb.RecordOutcomeRequest(
            decision_id=resp.decision_id,
            outcome=pb.DECLINED,
            decline_reason=pb.TOO_EXPENSIVE,
            decline_note="Customer Jane Roe said call back in May",
            agent_id="agent-1",
            occurred_at=ts(),
        )
    )
    assert ack.audit_sequence > resp.audit_sequence
    by_key = stub.GetDecision(pb.GetDecisionRequest(request_key=key))
    by_id = stub.GetDecision(pb.GetDecisionRequest(decision_id=resp.decision_id))
    assert by_key == by_id and by_id.outcome == pb.DECLINED
    resp.outcome = pb.DECLINED
    assert by_id == resp  # the log is what the caller saw
    server.stop()
    report = verify_file(settings.audit_path)
    assert report.ok, report.problem
    with duckdb.connect(str(settings.audit_path), read_only=True) as con:
        rows = con.execute(
            "SELECT kind, subject, record FROM audit_records ORDER BY seq"
        ).fetchall()
    text = "\n".join(r[2] for r in rows)
    kinds = [r[0] for r in rows]
    assert {"decision", "outcome", "deployment", "consent"} <= set(kinds)
    # No raw identifiers or free text in the chained log.
    assert cid not in text and world.external_ids(cid)["zendesk"] not in text
    assert "Jane Roe" not in text and "ZD-k-" not in text
    assert all(s is None or s.startswith("p_") for _, s, _ in rows)


def test_same_request_key_returns_same_decision_and_writes_nothing(
    stub, server, world, settings
) -> None:
    cid = treated_customers(world, settings)[0]
    req = request(world, cid, "retry-1")
    first = stub.Decide(req)
    before = count(server)
    again = stub.Decide(req)
    assert again == first
    assert count(server) == before


def test_same_key_with_other_payload_is_refused(stub, server, world, settings) -> None:
    cid = treated_customers(world, settings)[0]
    stub.Decide(request(world, cid, "dup"))
    before = count(server)
    with pytest.raises(grpc.RpcError) as e:
        stub.Decide(request(world, cid, "dup", category="billing"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("request_key:")
    assert count(server) == before


def test_concurrent_duplicates_make_one_decision(stub, server, world, settings) -> None:
    cid = treated_customers(world, settings)[1]
    req = request(world, cid, "burst")
    before = count(server)
    out: list[pb.DecideResponse] = []
    threads = [threading.Thread(target=lambda: out.append(stub.Decide(req))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.decision_id for r in out}) == 1 and len(out) == 8
    added = count(server) - before
    assert added in (1, 2)  # the decision, plus a consent record on first sight


def test_outcome_is_idempotent_and_a_different_one_is_refused(
    stub, server, world, settings
) -> None:
    _, resp, _ = first_offer(stub, world, settings)
    req = pb.RecordOutcomeRequest(
        decision_id=resp.decision_id, outcome=pb.ACCEPTED, agent_id="agent-1", occurred_at=ts()
    )
    a = stub.RecordOutcome(req)
    before = count(server)
    assert stub.RecordOutcome(req).audit_sequence == a.audit_sequence
    with pytest.raises(grpc.RpcError) as e:
        stub.RecordOutcome(
            pb.RecordOutcomeRequest(
                decision_id=resp.decision_id,
                outcome=pb.DECLINED,
                decline_reason=pb.BAD_TIMING,
                agent_id="agent-1",
                occurred_at=ts(),
            )
        )
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as e:
        stub.RecordOutcome(
            pb.RecordOutcomeRequest(
                decision_id="d_" + "0" * 32,
                outcome=pb.ACCEPTED,
                agent_id="agent-1",
                occurred_at=ts(),
            )
        )
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert count(server) == before


def test_conversion_is_idempotent_by_transaction_id(stub, server, world, settings) -> None:
    cid = treated_customers(world, settings)[2]
    req = pb.RecordConversionRequest(
        transaction_id="inv-1",
        source="billing",
        customer=pb.Customer(external_id=cid),
        product="storage",
        amount=pb.Money(amount_minor=48000, currency="USD"),
        occurred_at=ts(),
    )
    a = stub.RecordConversion(req)
    before = count(server)
    assert stub.RecordConversion(req).audit_sequence == a.audit_sequence
    req.amount.amount_minor = 1
    with pytest.raises(grpc.RpcError) as e:
        stub.RecordConversion(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    req.transaction_id, req.amount.currency = "inv-2", "EUR"
    with pytest.raises(grpc.RpcError) as e:
        stub.RecordConversion(req)
    assert e.value.details().startswith("amount.currency:")
    assert count(server) == before


def _bad_decides() -> list[tuple[str, dict[str, object], str]]:
    return [
        ("empty request key", {"request_key": ""}, "request_key"),
        ("helpdesk with spaces", {"helpdesk": "Zen Desk"}, "helpdesk"),
        ("no ticket id", {"ticket.id": ""}, "ticket.id"),
        ("category not snake", {"ticket.category": "Billing Issue"}, "ticket.category"),
        ("no channel", {"ticket.channel": pb.CHANNEL_UNSPECIFIED}, "ticket.channel"),
        ("csat 9", {"ticket.csat": 9}, "ticket.csat"),
        ("sentiment 3", {"ticket.sentiment": 3.0}, "ticket.sentiment"),
        ("resolved in future", {"ticket.resolved_at": "future"}, "ticket.resolved_at"),
        ("resolved long ago", {"ticket.resolved_at": "old"}, "ticket.resolved_at"),
        ("no resolved_at", {"ticket.resolved_at": None}, "ticket.resolved_at"),
        ("negative reopen", {"ticket.reopen_count": -1}, "ticket.reopen_count"),
        ("no customer id", {"customer.external_id": ""}, "customer.external_id"),
        ("agent email", {"agent_id": "jane@example.com"}, "agent_id"),
        ("bad locale", {"locale": "english please"}, "locale"),
    ]


@pytest.mark.parametrize(
    ("case", "change", "field"), _bad_decides(), ids=[c[0] for c in _bad_decides()]
)
def test_bad_decide_input_names_the_field_and_writes_nothing(
    stub, server, world, settings, case, change, field
) -> None:
    req = request(world, treated_customers(world, settings)[0], "bad-" + case.replace(" ", "-"))
    for path, value in change.items():
        target = req
        *parents, leaf = path.split(".")
        for p in parents:
            target = getattr(target, p)
        if value is None:
            target.ClearField(leaf)
        elif value == "future":
            target.resolved_at.CopyFrom(ts(datetime.now(UTC) + timedelta(hours=1)))
        elif value == "old":
            target.resolved_at.CopyFrom(ts(datetime.now(UTC) - timedelta(days=90)))
        else:
            setattr(target, leaf, value)
    before = count(server)
    with pytest.raises(grpc.RpcError) as e:
        stub.Decide(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(field + ":"), e.value.details()
    assert count(server) == before


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"decision_id": "nope"}, "decision_id"),
        ({"outcome": pb.OUTCOME_UNSPECIFIED}, "outcome"),
        ({"outcome": pb.DECLINED}, "decline_reason"),
        ({"decline_reason": pb.OTHER}, "decline_reason"),
        ({"agent_id": ""}, "agent_id"),
    ],
)
def test_bad_outcome_input_names_the_field(stub, server, change, field) -> None:
    req = pb.RecordOutcomeRequest(
        decision_id="d_" + "1" * 32, outcome=pb.ACCEPTED, agent_id="agent-1", occurred_at=ts()
    )
    for k, v in change.items():
        setattr(req, k, v)
    with pytest.raises(grpc.RpcError) as e:
        stub.RecordOutcome(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(field + ":")


def test_unknown_customer_gets_a_reasoned_no_offer(stub, server) -> None:
    req = pb.DecideRequest(
        request_key="ghost",
        helpdesk="zendesk",
        ticket=pb.Ticket(id="ZD-1", category="billing", channel=pb.CHANNEL_EMAIL, resolved_at=ts()),
        customer=pb.Customer(external_id="zd-nobody"),
        agent_id="a1",
        locale="en",
    )
    resp = stub.Decide(req)
    assert resp.kind == pb.NO_OFFER and resp.no_offer_reason == pb.UNKNOWN_CUSTOMER


def test_holdout_customer_sees_a_neutral_no_offer_and_the_would_be_offer_is_logged(
    stub, server, world, settings
) -> None:
    key = settings.load_secrets().holdout_key.get_secret_value()
    held = [
        c
        for c in sorted(world.profiles)
        if holdout_bucket(key, c) < 0.10
        and world.profiles[c].get("marketing_consent")
        and not world.profiles[c].get("open_billing_dispute")
        and world.profiles[c].get("payment_failures_90d", 0) < 2
    ]
    assert held
    seen_would_be = False
    for i, cid in enumerate(held[:40]):
        resp = stub.Decide(request(world, cid, f"hold-{i}"))
        assert resp.kind == pb.NO_OFFER
        assert "holdout" not in resp.agent_message.lower()
        if resp.no_offer_reason == pb.HOLDOUT:
            record = server.desk.find_decision(decision_id=resp.decision_id).body
            assert record["group"] == "holdout" and record["card"] is None
            seen_would_be |= record["policy_action"] != "no_offer"
    assert seen_would_be


def test_concurrent_decisions_for_one_customer_cannot_both_pass_the_cap(
    stub, server, world, settings
) -> None:
    cid, _, _ = first_offer(stub, world, settings, prefix="cap")
    out: list[pb.DecideResponse] = []
    keys = [f"cap-burst-{i}" for i in range(12)]
    categories = ["billing", "how_to", "access", "performance", "feature_request", "bug"]
    threads = [
        threading.Thread(
            target=lambda k=k, c=categories[i % 6]: out.append(
                stub.Decide(request(world, cid, k, category=c, product_area="storage"))
            )
        )
        for i, k in enumerate(keys)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    offers = sum(1 for r in out if r.kind == pb.OFFER)
    assert 1 + offers <= 2  # max_offers in the example catalog
    assert any(r.no_offer_reason == pb.CONTACT_LIMIT for r in out)


def test_contact_counts_survive_a_restart(world, settings) -> None:
    running = start(settings)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        stub = pb_grpc.OfferDeskStub(ch)
        cid, resp, _ = first_offer(stub, world, settings, prefix="rs")
        stub.RecordOutcome(
            pb.RecordOutcomeRequest(
                decision_id=resp.decision_id,
                outcome=pb.DECLINED,
                decline_reason=pb.NOT_INTERESTED,
                agent_id="agent-1",
                occurred_at=ts(),
            )
        )
    running.stop()
    running = start(settings)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            after = pb_grpc.OfferDeskStub(ch).Decide(request(world, cid, "rs-after"))
    finally:
        running.stop()
    assert after.kind == pb.NO_OFFER and after.no_offer_reason == pb.CONTACT_LIMIT
    assert {w.rule_id for w in after.why_not} == {"contact.decline_cooldown"}


def test_tampered_audit_file_fails_verify_at_the_right_record(
    stub, server, world, settings
) -> None:
    for i, cid in enumerate(treated_customers(world, settings)[:15]):
        stub.Decide(request(world, cid, f"t-{i}"))
    cli = [sys.executable, "-m", "service.cli", "audit", "verify", str(settings.audit_path)]
    locked = subprocess.run(cli, capture_output=True, text=True)
    assert locked.returncode == 3 and "service" in locked.stderr
    server.stop()
    ok = subprocess.run(cli, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    with duckdb.connect(str(settings.audit_path)) as con:
        con.execute(
            'UPDATE audit_records SET record = replace(record, \'"group":"treated"\', '
            '\'"group":"holdout"\') WHERE seq = (SELECT min(seq) FROM audit_records '
            "WHERE kind = 'decision' AND record LIKE '%\"group\":\"treated\"%' "
            "AND seq > 5)"
        )
        bad = con.execute(
            "SELECT min(seq) FROM audit_records WHERE kind = 'decision' AND "
            'record LIKE \'%"group":"holdout"%\' AND seq > 5'
        ).fetchone()[0]
    tampered = subprocess.run(cli, capture_output=True, text=True)
    assert tampered.returncode == 1
    assert f"record {bad}" in tampered.stderr, tampered.stderr


def test_health_and_reflection_are_registered(server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", "offerdesk.v1.OfferDesk"):
            status = health.Check(health_pb2.HealthCheckRequest(service=name)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        answer = next(
            refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        )
        names = {s.name for s in answer.list_services_response.service}
        assert "offerdesk.v1.OfferDesk" in names and "grpc.health.v1.Health" in names


def test_bad_catalog_never_starts_the_server(settings: Settings) -> None:
    from service.errors import CatalogError
    from service.registry import Registry

    registry = Registry(settings.registry_dir)
    active = registry.active()
    path = registry.catalogs_dir / f"{active.catalog}.yaml"
    path.write_text(
        path.read_text().replace(
            'expression: "!customer.open_billing_dispute"',
            'expression: "!customer.open_billing_dispute &&"',
        )
    )
    with pytest.raises(CatalogError) as e:
        start(settings)
    assert "no-sale-during-billing-dispute" in str(e.value) and str(path) in str(e.value)
    assert not Path(settings.audit_path).exists()


def test_one_person_through_two_helpdesks_shares_one_contact_policy(
    stub, server, world, settings
) -> None:
    both = [c for c in treated_customers(world, settings) if "intercom" in world.external_ids(c)]
    for i, cid in enumerate(both[:100]):
        resp = stub.Decide(request(world, cid, f"zd-{i}"))
        if resp.kind == pb.OFFER:
            break
    else:
        raise AssertionError("no offer for a customer known to two helpdesks")
    stub.RecordOutcome(
        pb.RecordOutcomeRequest(
            decision_id=resp.decision_id,
            outcome=pb.DECLINED,
            decline_reason=pb.BAD_TIMING,
            agent_id="agent-1",
            occurred_at=ts(),
        )
    )
    via_intercom = request(world, cid, "ic-1")
    via_intercom.helpdesk = "intercom"
    via_intercom.customer.external_id = world.external_ids(cid)["intercom"]
    after = stub.Decide(via_intercom)
    assert after.kind == pb.NO_OFFER and after.no_offer_reason == pb.CONTACT_LIMIT
    first = server.desk.find_decision(decision_id=resp.decision_id)
    second = server.desk.find_decision(decision_id=after.decision_id)
    assert first.subject == second.subject  # one pseudonym for one person
