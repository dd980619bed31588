"""ServiceNow's shipped scripts (console_adapters/servicenow/*.js) run under node against a real
gateway in front of a real service and its real audit log: the business rule's signed webhook,
the Recommended Actions generator's card, and the Accept and Decline guidance actions.

The ServiceNow globals the scripts use (sn_ws.RESTMessageV2, GlideCertificateEncryption,
gs.getProperty, the `current` record, ...) come from tests/servicenow_shim.js, the one stand-in
allowed: no ServiceNow instance runs here. RESTMessageV2 makes real HTTP calls to the gateway.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from adapter_kit import running_gateway
from offerdesk.v1 import offerdesk_pb2 as pb
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc
from test_server import treated_customers

from console_adapters.gateway import GatewaySettings, outcome_token
from service.server import Running
from service.settings import Settings
from service.simulator import World

NODE = shutil.which("node") or "/usr/bin/node"
SCRIPTS = Path(__file__).resolve().parent.parent / "console_adapters" / "servicenow"
SHIM = Path(__file__).resolve().parent / "servicenow_shim.js"
SECRET = "sn-secret-0123456789abcdef0123456789abcdef"
AGENT = "6816f79cc0a8016401c5a33be04be441"  # a sys_user sys_id, as gs.getUserID() gives it

pytestmark = pytest.mark.skipif(not Path(NODE).exists(), reason="node is not installed")


def caller_sys_id(customer_id: str) -> str:
    """The caller's sys_id a ServiceNow instance would hold for a simulated customer."""
    return hashlib.md5(f"servicenow:{customer_id}".encode()).hexdigest()


@pytest.fixture
def data_dir(data_dir: Path, world: World) -> Path:
    """The session's data with the identity map also knowing ServiceNow callers (by sys_id),
    as a company running ServiceNow would load it."""
    path = data_dir / "profiles" / "identities.parquet"
    table = pq.read_table(path)
    ids = sorted(world.profiles)
    extra = pa.Table.from_pydict(
        {
            "source": ["servicenow"] * len(ids),
            "external_id": [caller_sys_id(c) for c in ids],
            "customer_id": ids,
        },
        schema=table.schema,
    )
    pq.write_table(pa.concat_tables([table, extra]), path)
    return data_dir


@pytest.fixture
def gateway(server: Running, settings: Settings) -> Iterator[str]:
    config = GatewaySettings(
        service=f"127.0.0.1:{server.port}",
        data_dir=settings.data_dir,
        servicenow={"secret": SECRET},
    )
    with running_gateway(config) as base:
        yield base


def incident(caller: str, number: int) -> dict[str, Any]:
    """An incident just resolved (state 6), as the business rule's `current` sees it."""
    updated = (datetime.now(UTC) - timedelta(seconds=30)).strftime("%Y-%m-%d %H:%M:%S")
    return {
        "sys_id": hashlib.md5(f"incident:{number}".encode()).hexdigest(),
        "fields": {
            "number": f"INC{number:07d}",
            "state": "6",
            "sys_updated_on": updated,
            "caller_id": caller,
            "assigned_to": AGENT,
            "contact_type": "phone",
            "category": "inquiry",
            "subcategory": "storage",
            "reopen_count": "0",
        },
    }


def run(tmp_path: Path, base: str, *, secret: str = SECRET, **scenario: Any) -> dict[str, Any]:
    """Run ServiceNow scripts under node with the shim; what they returned, logged and sent."""
    spec = {
        "properties": {"x_offerdesk.gateway": base, "x_offerdesk.secret": secret},
        "user_id": AGENT,
        **scenario,
    }
    path = tmp_path / f"scenario-{len(list(tmp_path.glob('scenario-*')))}.json"
    path.write_text(json.dumps(spec))
    done = subprocess.run(
        [NODE, str(SHIM), str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def business_rule(tmp_path: Path, base: str, record: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return run(
        tmp_path,
        base,
        scripts=[str(SCRIPTS / "OfferdeskClient.js")],
        run=str(SCRIPTS / "offerdesk_incident_resolved.js"),
        current=record,
        **kw,
    )


def generator(tmp_path: Path, base: str, record: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return run(
        tmp_path,
        base,
        scripts=[str(SCRIPTS / "OfferdeskClient.js"), str(SCRIPTS / "OfferdeskGuidance.js")],
        expression="new OfferdeskGuidance().generate(current)",
        current=record,
        **kw,
    )


def guidance_action(
    tmp_path: Path, base: str, action: str, inputs: dict[str, str], **kw: Any
) -> dict[str, Any]:
    return run(
        tmp_path,
        base,
        scripts=[str(SCRIPTS / "OfferdeskClient.js")],
        run=str(SCRIPTS / f"offerdesk_guidance_{action}.js"),
        inputs=inputs,
        **kw,
    )


def size(server: Running) -> int:
    return server.desk.store.head()[0]


def stored(server: Running, request: pb.GetDecisionRequest) -> pb.DecideResponse:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        return pb_grpc.OfferDeskStub(channel).GetDecision(request)


def by_ticket(server: Running, sys_id: str) -> pb.DecideResponse:
    ticket = pb.TicketRef(helpdesk="servicenow", ticket_id=sys_id)
    return stored(server, pb.GetDecisionRequest(ticket=ticket))


def offered_incident(
    tmp_path: Path, gateway: str, server: Running, world: World, settings: Settings, first: int
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Resolve incidents of treated customers until the generator shows an offer; an incident
    whose decision is "no offer" must show nothing."""
    for i, cid in enumerate(treated_customers(world, settings)[:40]):
        record = incident(caller_sys_id(cid), first + i)
        sent = business_rule(tmp_path, gateway, record)
        assert sent["errors"] == [] and sent["threw"] is None, sent
        shown = generator(tmp_path, gateway, record)
        assert shown["threw"] is None and shown["errors"] == [], shown
        decision = by_ticket(server, record["sys_id"])
        if decision.kind == pb.OFFER:
            assert len(shown["result"]) == 1
            return record, shown["result"]
        assert shown["result"] == []  # no offer: no card
    raise AssertionError("no offer in 40 resolved incidents")


def test_the_business_rule_sends_a_signed_incident_that_decides(
    tmp_path: Path, gateway: str, server: Running, world: World, settings: Settings
) -> None:
    before = size(server)
    cid = treated_customers(world, settings)[0]
    record = incident(caller_sys_id(cid), 1)
    sent = business_rule(tmp_path, gateway, record)
    assert sent["threw"] is None and sent["errors"] == [], sent
    assert sent["requests"] == [
        {"method": "POST", "url": f"{gateway}/webhooks/servicenow", "status": 200}
    ]
    assert size(server) > before
    decision = by_ticket(server, record["sys_id"])
    assert decision.decision_id.startswith("d_")
    # The identity map knew the caller's sys_id: a real decision, not an unknown customer.
    assert decision.no_offer_reason != pb.UNKNOWN_CUSTOMER
    logged = size(server)
    again = business_rule(tmp_path, gateway, record)  # the rule runs again: the same decision
    assert again["requests"][0]["status"] == 200 and size(server) == logged


def test_the_generator_shows_the_logged_offer_and_a_decline_is_its_outcome(
    tmp_path: Path, gateway: str, server: Running, world: World, settings: Settings
) -> None:
    nothing = generator(tmp_path, gateway, incident(caller_sys_id("nobody"), 999))
    assert nothing["result"] == [] and nothing["errors"] == []  # no decision yet: no card

    record, [card] = offered_incident(tmp_path, gateway, server, world, settings, first=100)
    decision = by_ticket(server, record["sys_id"])
    assert card["decision_id"] == decision.decision_id
    assert card["outcome_token"] == outcome_token(
        GatewaySettings(data_dir=settings.data_dir).load_outcome_key(), decision.decision_id
    )
    assert card["offer_name"] == card["title"] == decision.card.offer_name
    assert card["variant"] == decision.card.variant.name
    assert card["price"].split(" (")[0].endswith(decision.card.variant.price.currency)
    reasons = [r.text for r in decision.card.reasons][:3]
    assert card["reasons"] == "\n".join(reasons) and len(card["reasons"].split("\n")) <= 3
    assert card["rule"] == decision.card.firing_rule.description and card["rule"]
    assert card["card_url"].startswith(f"{gateway}/card/{decision.decision_id}?token=")

    before = size(server)
    declined = guidance_action(
        tmp_path,
        gateway,
        "decline",
        {
            "decision_id": card["decision_id"],
            "outcome_token": card["outcome_token"],
            "decline_reason": "too_expensive",
        },
    )
    assert declined["threw"] is None, declined
    assert declined["outputs"] == {"recorded": True, "message": "Offer declined (too expensive)"}
    assert size(server) > before
    outcome = server.desk.store.find("outcome", decision.decision_id)
    assert outcome is not None and outcome.body["decline_reason"] == "too_expensive"
    assert stored(server, pb.GetDecisionRequest(decision_id=decision.decision_id)).outcome == (
        pb.DECLINED
    )
    # Answered: the card leaves the panel, and an Accept now is refused (409), not recorded.
    assert generator(tmp_path, gateway, record)["result"] == []
    logged = size(server)
    late = guidance_action(
        tmp_path,
        gateway,
        "accept",
        {"decision_id": card["decision_id"], "outcome_token": card["outcome_token"]},
    )
    assert late["threw"] and "(409)" in late["threw"] and late["outputs"]["recorded"] is False
    assert size(server) == logged


def test_accept_is_recorded_as_the_decisions_outcome(
    tmp_path: Path, gateway: str, server: Running, world: World, settings: Settings
) -> None:
    _, [card] = offered_incident(tmp_path, gateway, server, world, settings, first=200)
    accepted = guidance_action(
        tmp_path,
        gateway,
        "accept",
        {"decision_id": card["decision_id"], "outcome_token": card["outcome_token"]},
    )
    assert accepted["threw"] is None and accepted["outputs"]["recorded"] is True, accepted
    decision = stored(server, pb.GetDecisionRequest(decision_id=card["decision_id"]))
    assert decision.outcome == pb.ACCEPTED


def test_a_wrong_secret_or_token_is_refused_and_nothing_is_written(
    tmp_path: Path, gateway: str, server: Running, world: World, settings: Settings
) -> None:
    record, [card] = offered_incident(tmp_path, gateway, server, world, settings, first=300)
    before = size(server)
    other = incident(caller_sys_id(treated_customers(world, settings)[-1]), 399)
    forged = business_rule(tmp_path, gateway, other, secret=SECRET[::-1])
    assert [r["status"] for r in forged["requests"]] == [401]  # refused, not retried
    assert forged["errors"] and "refused (401)" in forged["errors"][0]
    with pytest.raises(grpc.RpcError) as missing:
        by_ticket(server, other["sys_id"])
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    looked = generator(tmp_path, gateway, record, secret=SECRET[::-1])
    assert looked["result"] == [] and "refused (401)" in looked["errors"][0]

    inputs = {"decision_id": card["decision_id"], "outcome_token": card["outcome_token"]}
    wrong_token = guidance_action(
        tmp_path,
        gateway,
        "decline",
        {**inputs, "outcome_token": card["outcome_token"][:-2] + "AA", "decline_reason": "other"},
    )
    assert wrong_token["threw"] and "(401)" in wrong_token["threw"]
    assert "outcome_token" in wrong_token["outputs"]["message"]
    bad_reason = guidance_action(
        tmp_path, gateway, "decline", {**inputs, "decline_reason": "too expensive!"}
    )
    assert bad_reason["threw"] and "decline_reason must be one of" in bad_reason["threw"]
    assert bad_reason["requests"] == []  # refused before anything was sent
    assert size(server) == before
    assert stored(server, pb.GetDecisionRequest(decision_id=card["decision_id"])).outcome == (
        pb.OUTCOME_UNSPECIFIED
    )
