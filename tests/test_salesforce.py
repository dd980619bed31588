"""Salesforce through a real gateway and a real service: Outbound Messages (unsigned: a secret
path and the organisation id), the exact SOAP acknowledgement, the Apex Generate endpoint and
the feedback endpoint. The same checks as the adapter kit, in SOAP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import httpx
import pytest
from adapter_kit import error_of, free_port, running_gateway
from offerdesk.v1 import offerdesk_pb2 as pb
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc
from test_server import treated_customers

from console_adapters.gateway import GatewaySettings
from console_adapters.salesforce import ACK
from service.server import Running
from service.settings import Settings
from service.simulator import World

ORG = "00D000000000062EAA"
PATH = "sf-path-0123456789abcdef0123456789abcdef"
API_TOKEN = "sf-api-token-0123456789abcdef0123456789"
CLOSED_AT = (datetime.now(UTC) - timedelta(minutes=10)).replace(microsecond=0)


def case(
    case_id: str,
    contact: str,
    *,
    closed: datetime = CLOSED_AT,
    status: str = "Closed",
    drop: str = "",
) -> str:
    fields = {
        "Id": case_id,
        "CaseNumber": "00001026",
        "ClosedDate": closed_date(closed),
        "ContactId": contact,
        "Origin": "Phone",
        "OwnerId": "005000000000001AAA",
        "Status": status,
        "Type": "Billing",
        "Product_Area__c": "Storage",
    }
    fields.pop(drop, None)
    inner = "".join(f"<sf:{k}>{v}</sf:{k}>" for k, v in fields.items())
    return (
        f"<Notification><Id>04l{case_id[3:]}</Id>"
        f'<sObject xsi:type="sf:Case" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">{inner}'
        "</sObject></Notification>"
    )


def message(*notifications: str, org: str = ORG) -> bytes:
    """An Outbound Message shaped as Salesforce's outbound messaging WSDL."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
        '<notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
        f"<OrganizationId>{org}</OrganizationId><ActionId>04k000000000001AAA</ActionId>"
        '<SessionId xsi:nil="true"/>'
        "<EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/60.0/00D0000000000"
        "62</EnterpriseUrl>"
        "<PartnerUrl>https://example.my.salesforce.com/services/Soap/u/60.0/00D000000000062"
        "</PartnerUrl>"
        + "".join(notifications)
        + "</notifications></soapenv:Body></soapenv:Envelope>"
    ).encode()


def gateway_settings(service: str, settings: Settings) -> GatewaySettings:
    return GatewaySettings(
        service=service,
        data_dir=settings.data_dir,
        salesforce={"organization_id": ORG, "path_secret": PATH, "api_token": API_TOKEN},
    )


@pytest.fixture
def gateway(server: Running, settings: Settings) -> Iterator[str]:
    with running_gateway(gateway_settings(f"127.0.0.1:{server.port}", settings)) as base:
        yield base


@pytest.fixture
def contacts(world: World, settings: Settings) -> list[str]:
    ids = (world.external_ids(c) for c in treated_customers(world, settings))
    return [i["salesforce"] for i in ids if "salesforce" in i]


def outbound(base: str, body: bytes, path: str = PATH) -> httpx.Response:
    return httpx.post(
        f"{base}/salesforce/outbound/{path}",
        content=body,
        headers={"content-type": "text/xml; charset=utf-8", "soapaction": '""'},
        timeout=20,
    )


def api(base: str, path: str, payload: dict[str, str], token: str = API_TOKEN) -> httpx.Response:
    return httpx.post(
        f"{base}/salesforce/{path}",
        json=payload,
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    )


def size(server: Running) -> int:
    return server.desk.store.head()[0]


def closed_date(at: datetime) -> str:
    """As Salesforce writes a dateTime: UTC, milliseconds, Z."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def test_a_message_is_acknowledged_once_every_case_is_recorded_and_a_retry_logs_nothing(
    gateway: str, server: Running, contacts: list[str]
) -> None:
    before = size(server)
    body = message(case("500000000000001AAA", contacts[0]), case("500000000000002AAA", contacts[1]))
    reply = outbound(gateway, body)
    assert reply.status_code == 200 and reply.content == ACK
    assert reply.headers["content-type"].startswith("text/xml")
    logged = size(server)
    assert logged >= before + 2
    again = outbound(gateway, body)  # Salesforce delivers at least once
    assert again.content == ACK and size(server) == logged
    reclosed = outbound(
        gateway,
        message(case("500000000000001AAA", contacts[0], closed=CLOSED_AT + timedelta(minutes=1))),
    )
    assert reclosed.content == ACK and size(server) > logged  # closed again: a new decision


def test_unsigned_senders_are_refused_by_path_and_organisation(
    gateway: str, server: Running, contacts: list[str]
) -> None:
    before = size(server)
    body = message(case("500000000000003AAA", contacts[0]))
    wrong_path = outbound(gateway, body, path=PATH[:-1] + "x")
    assert wrong_path.status_code == 401 and wrong_path.content != ACK
    other_org = outbound(
        gateway, message(case("500000000000003AAA", contacts[0]), org="00D000000000099EAA")
    )
    assert other_org.status_code == 401 and error_of(other_org)["field"] == "OrganizationId"
    assert size(server) == before


def test_malformed_hostile_and_oversized_messages_are_refused_without_an_ack(
    gateway: str, server: Running, contacts: list[str]
) -> None:
    before = size(server)
    missing = outbound(gateway, message(case("500000000000004AAA", contacts[0], drop="ContactId")))
    assert missing.status_code == 400 and error_of(missing)["field"] == "sObject.ContactId"
    broken = outbound(gateway, b"<soapenv:Envelope")
    assert broken.status_code == 400 and error_of(broken)["field"] == "body"
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><lolz>&lol2;</lolz>'
    )
    hostile = outbound(gateway, laughs)
    assert hostile.status_code == 400 and error_of(hostile)["field"] == "body"
    huge = outbound(gateway, b"<a>" + b" " * (300 * 1024) + b"</a>")
    assert huge.status_code == 413
    assert size(server) == before


def test_a_case_that_is_not_closed_is_acknowledged_and_ignored(
    gateway: str, server: Running, contacts: list[str]
) -> None:
    before = size(server)
    reply = outbound(gateway, message(case("500000000000005AAA", contacts[0], status="Working")))
    assert reply.content == ACK and size(server) == before


def test_a_service_that_is_down_gets_no_ack_but_503(
    settings: Settings, contacts: list[str]
) -> None:
    with running_gateway(gateway_settings(f"127.0.0.1:{free_port()}", settings)) as base:
        reply = outbound(base, message(case("500000000000006AAA", contacts[0])))
        assert reply.status_code == 503 and reply.content != ACK
        assert int(reply.headers["retry-after"]) > 0


def test_generate_and_feedback_for_the_apex_action(
    gateway: str, server: Running, contacts: list[str]
) -> None:
    offer = None
    for i, contact in enumerate(contacts[:60]):
        case_id = f"5000000000{i:05d}AAA"
        assert outbound(gateway, message(case(case_id, contact))).content == ACK
        shown = api(gateway, "generate", {"case_id": case_id})
        assert shown.status_code == 200, shown.text
        if shown.json()["offer"]:
            offer = shown.json()
            break
    assert offer is not None, "no offer in 60 closed cases"
    assert offer["Name"] and len(offer["Description"]) <= 255
    assert offer["ExternalId"].startswith(offer["decision_id"] + ".")

    refused = api(gateway, "generate", {"case_id": "x"}, token="wrong")
    assert refused.status_code == 401
    unknown = api(
        gateway,
        "generate",
        {"case_id": "500999999999999AAA"},
    )
    assert unknown.json() == {"offer": False, "message": "", "decision_id": ""}

    before = size(server)
    forged = api(
        gateway,
        "feedback",
        {
            "external_id": offer["decision_id"] + ".forged",
            "reaction": "Accepted",
            "agent_id": "005000000000001AAA",
        },
    )
    assert forged.status_code == 401 and size(server) == before
    done = api(
        gateway,
        "feedback",
        {
            "external_id": offer["ExternalId"],
            "reaction": "Accepted",
            "agent_id": "005000000000001AAA",
        },
    )
    assert done.status_code == 200, done.text
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stored = pb_grpc.OfferDeskStub(channel).GetDecision(
            pb.GetDecisionRequest(decision_id=offer["decision_id"])
        )
    assert stored.outcome == pb.ACCEPTED
