"""Fuzzing every request message against a real server (hypothesis): no crash, every refusal is
INVALID_ARGUMENT (or NOT_FOUND / ALREADY_EXISTS) naming a field, and a refused call writes
nothing to the log."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from offerdesk.v1 import offerdesk_pb2 as pb
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc

from service.server import Running, start
from service.settings import load_settings

#: a refusal names the field it is about: "ticket.resolved_at: …", "customer: …"
FIELD = re.compile(r"^[a-z_]+(\.[a-z_]+)*(\[\d+\])?: ")
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
}
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

text = st.one_of(
    st.just(""),
    st.text(max_size=40),
    st.text(alphabet="abcdefghij_-0123456789", min_size=1, max_size=12),
    st.sampled_from(["zendesk", "billing", "billing_issue", "seats", "en-US", "USD", "a@b.c"]),
    st.text(min_size=250, max_size=400),
)
numbers = st.one_of(st.integers(-(2**40), 2**40), st.sampled_from([0, 1, 5, 6, -1]))


def timestamps() -> st.SearchStrategy[Timestamp | None]:
    now = datetime.now(UTC)
    moments = st.one_of(
        st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
        st.sampled_from([now - timedelta(minutes=3), now + timedelta(hours=1)]).map(
            lambda d: d.replace(tzinfo=None)
        ),
    )

    def stamp(moment: datetime) -> Timestamp:
        ts = Timestamp()
        ts.FromDatetime(moment)
        return ts

    return st.one_of(st.none(), moments.map(stamp))


def message(kind: type, **fields: Any) -> Any:
    """A message with only the fields that are not None set."""
    return kind(**{k: v for k, v in fields.items() if v is not None})


def valid_time() -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime((datetime.now(UTC) - timedelta(minutes=3)).replace(tzinfo=None))
    return ts


@st.composite
def decide_requests(draw: st.DrawFn) -> pb.DecideRequest:
    """A valid request with up to three of its fields fuzzed, so that every check is reached."""
    ticket_fields: dict[str, Any] = {
        "id": "T-1",
        "category": "billing",
        "product_area": "seats",
        "channel": pb.CHANNEL_CHAT,
        "resolved_at": valid_time(),
        "csat": 5,
        "sentiment": 0.5,
        "tags": ["vip"],
        "custom_fields": {"plan_tier": "pro"},
        "reopen_count": 0,
    }
    fuzz = {
        "id": text,
        "category": text,
        "product_area": text,
        "channel": st.integers(-3, 9),
        "resolved_at": timestamps(),
        "csat": st.one_of(st.none(), st.integers(-10, 10)),
        "sentiment": st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
        "tags": st.lists(text, max_size=4),
        "custom_fields": st.dictionaries(text, text, max_size=3),
        "reopen_count": st.integers(-5, 2**31 - 1),
    }
    top: dict[str, Any] = {
        "request_key": draw(st.uuids()).hex,
        "helpdesk": "zendesk",
        "agent_id": "agent-1",
        "locale": "en-US",
        "external_id": "zd-1000001",
    }
    top_fuzz = {name: text for name in top}
    chosen = draw(st.sets(st.sampled_from([*fuzz, *top_fuzz, "no_ticket"]), max_size=3))
    for name in chosen & fuzz.keys():
        ticket_fields[name] = draw(fuzz[name])
    for name in chosen & top_fuzz.keys():
        top[name] = draw(top_fuzz[name])
    ticket = None if "no_ticket" in chosen else message(pb.Ticket, **ticket_fields)
    return message(
        pb.DecideRequest,
        request_key=top["request_key"],
        helpdesk=top["helpdesk"],
        ticket=ticket,
        customer=pb.Customer(external_id=top["external_id"]),
        agent_id=top["agent_id"],
        locale=top["locale"],
    )


@st.composite
def outcome_requests(draw: st.DrawFn) -> pb.RecordOutcomeRequest:
    fields: dict[str, Any] = {
        "decision_id": "d_" + draw(st.uuids()).hex,
        "outcome": pb.DECLINED,
        "decline_reason": pb.TOO_EXPENSIVE,
        "decline_note": "",
        "agent_id": "agent-1",
        "occurred_at": valid_time(),
    }
    fuzz = {
        "decision_id": text,
        "outcome": st.integers(-2, 6),
        "decline_reason": st.integers(-2, 9),
        "decline_note": st.text(max_size=600),
        "agent_id": text,
        "occurred_at": timestamps(),
    }
    for name in draw(st.sets(st.sampled_from(list(fuzz)), max_size=3)):
        fields[name] = draw(fuzz[name])
    return message(pb.RecordOutcomeRequest, **fields)


@st.composite
def conversion_requests(draw: st.DrawFn) -> pb.RecordConversionRequest:
    fields: dict[str, Any] = {
        "transaction_id": draw(st.uuids()).hex,
        "source": "billing",
        "external_id": "c-unknown",
        "product": "seats",
        "amount_minor": 4900,
        "currency": "USD",
        "occurred_at": valid_time(),
    }
    fuzz = {
        "transaction_id": text,
        "source": text,
        "external_id": st.one_of(st.none(), text),
        "product": text,
        "amount_minor": st.one_of(st.none(), numbers),
        "currency": text,
        "occurred_at": timestamps(),
    }
    for name in draw(st.sets(st.sampled_from(list(fuzz)), max_size=3)):
        fields[name] = draw(fuzz[name])
    return message(
        pb.RecordConversionRequest,
        transaction_id=fields["transaction_id"],
        source=fields["source"],
        customer=None
        if fields["external_id"] is None
        else pb.Customer(external_id=fields["external_id"]),
        product=fields["product"],
        amount=None
        if fields["amount_minor"] is None
        else pb.Money(amount_minor=fields["amount_minor"], currency=fields["currency"]),
        occurred_at=fields["occurred_at"],
    )


get_requests = st.one_of(
    st.builds(lambda d: pb.GetDecisionRequest(decision_id=d), text),
    st.builds(lambda k: pb.GetDecisionRequest(request_key=k), text),
    st.builds(
        lambda h, t: pb.GetDecisionRequest(ticket=pb.TicketRef(helpdesk=h, ticket_id=t)),
        text,
        text,
    ),
    st.just(pb.GetDecisionRequest()),
)


@pytest.fixture(scope="module")
def fuzzed(
    trained_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Running, pb_grpc.OfferDeskStub]]:
    root = tmp_path_factory.mktemp("fuzz") / "var"
    shutil.copytree(trained_dir / "registry", root / "registry")
    shutil.copytree(trained_dir / "profiles", root / "profiles")
    running = start(load_settings(None, data_dir=root, listen="127.0.0.1:0"))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield running, pb_grpc.OfferDeskStub(channel)
    finally:
        running.stop()


def check(running: Running, call: Any, request: Any) -> None:
    before = running.desk.store.head()[0]
    try:
        call(request, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in REFUSALS, (exc.code(), exc.details(), request)
        assert FIELD.match(exc.details() or ""), (exc.details(), request)
        assert running.desk.store.head()[0] == before, ("refused but written", request)


# One server call per message type, each with its strategy.
CALLS = {
    "Decide": decide_requests(),
    "RecordOutcome": outcome_requests(),
    "RecordConversion": conversion_requests(),
    "GetDecision": get_requests,
}


@pytest.mark.parametrize("method", sorted(CALLS))
@FUZZ
@given(data=st.data())
def test_no_request_crashes_the_server_and_every_refusal_names_its_field(
    fuzzed: tuple[Running, pb_grpc.OfferDeskStub], method: str, data: st.DataObject
) -> None:
    running, stub = fuzzed
    check(running, getattr(stub, method), data.draw(CALLS[method], label=method))
