"""Under pressure, on a real server: calls past the concurrency limit are shed at once with
RESOURCE_EXHAUSTED, and a call whose deadline has passed is neither decided nor written."""

from __future__ import annotations

import threading
import time
import urllib.request
from datetime import UTC, datetime

import grpc
import pytest
from adapter_kit import free_port
from offerdesk.v1 import offerdesk_pb2 as pb
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc
from test_server import request, treated_customers
from test_telemetry import samples

from service import validation
from service.errors import DeadlineExceeded
from service.server import start
from service.settings import Settings, load_settings
from service.simulator import World


def test_calls_past_the_limit_are_shed_and_every_accepted_one_is_logged(
    world: World, settings: Settings
) -> None:
    scrape = f"127.0.0.1:{free_port()}"
    tight = load_settings(
        None,
        data_dir=settings.data_dir,
        listen="127.0.0.1:0",
        workers=2,
        max_concurrent_rpcs=2,
        telemetry={"exporter": "prometheus", "prometheus_listen": scrape},
    )
    running = start(tight)
    customers = treated_customers(world, settings)
    answers: dict[str, str] = {}
    lock = threading.Lock()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.OfferDeskStub(channel)

            def call(i: int) -> None:
                key = f"shed-{i}"
                try:
                    reply = stub.Decide(request(world, customers[i % len(customers)], key))
                    outcome = reply.decision_id
                except grpc.RpcError as exc:
                    outcome = exc.code().name
                with lock:
                    answers[key] = outcome

            threads = [threading.Thread(target=call, args=(i,)) for i in range(40)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started
            shed = [k for k, v in answers.items() if v == "RESOURCE_EXHAUSTED"]
            accepted = {k: v for k, v in answers.items() if v.startswith("d_")}
            assert shed, f"nothing was shed in {elapsed:.2f} s: {answers}"
            assert accepted, "nothing was accepted"
            assert len(shed) + len(accepted) == 40, answers
            # Every accepted call is in the log; no shed call is.
            for key, decision_id in accepted.items():
                stored = stub.GetDecision(pb.GetDecisionRequest(request_key=key))
                assert stored.decision_id == decision_id
            for key in shed:
                try:
                    stub.GetDecision(pb.GetDecisionRequest(request_key=key))
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND
                else:
                    raise AssertionError(f"{key} was shed but decided")
        # The server counted exactly the calls it shed (counted when the next call arrives:
        # the GetDecision calls above came after the last of them).
        text = urllib.request.urlopen(f"http://{scrape}/metrics", timeout=5).read().decode()
        assert samples(text, "offerdesk_refused_calls_total", 'reason="shed"') == len(shed)
        assert samples(text, "offerdesk_refused_calls_total", "Decide") == len(shed)
    finally:
        running.stop()


def test_a_decision_whose_caller_is_gone_is_not_written_and_its_key_stays_free(
    world: World, settings: Settings
) -> None:
    running = start(settings)
    customers = treated_customers(world, settings)
    try:
        catalog = running.desk.deployment.catalog
        now = datetime.now(UTC)
        cmd = validation.decide_command(
            request(world, customers[0], "gone"),
            now=now,
            tags=catalog.spec.ticket_tags,
            fields=catalog.spec.ticket_fields,
        )
        before = running.desk.store.head()[0]
        with pytest.raises(DeadlineExceeded, match="nothing was written"):
            running.desk.decide(cmd, now=now, trace_id="0" * 32, wanted=lambda: False)
        assert running.desk.store.head()[0] == before
        # The caller's retry (same key) is decided as if the first attempt never happened.
        made = running.desk.decide(cmd, now=now, trace_id="1" * 32)
        assert made.record.seq >= before
    finally:
        running.stop()


#: client deadlines around the time a decision takes: some calls expire before they arrive,
#: some on arrival, some while deciding, some not at all
DEADLINES = (0.001, 0.002, 0.003, 0.005, 0.008)


def test_calls_that_outlive_their_deadline_are_refused_by_the_server_not_written(
    world: World, settings: Settings
) -> None:
    """grpcio runs a handler after its client gave up; the server checks the deadline on
    arrival and just before the write. A call is refused by one of those checks (nothing
    written), or was written before its deadline passed; never both. Rounds of calls go on
    until the server has refused some (at most 5 rounds): the checks must be seen to run."""
    running = start(settings)
    customers = treated_customers(world, settings)
    try:
        assert running.offerdesk is not None
        sent: list[str] = []
        answered: set[str] = set()
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.OfferDeskStub(channel)
            stub.Decide(request(world, customers[0], "warm-up"))  # connection and caches
            before = running.desk.store.head()[0]
            for _ in range(5):
                for _ in range(30):
                    key = f"late-{len(sent)}"
                    timeout = DEADLINES[len(sent) % len(DEADLINES)]
                    customer = customers[1 + len(sent) % (len(customers) - 1)]
                    sent.append(key)
                    try:
                        answered.add(
                            stub.Decide(request(world, customer, key), timeout=timeout).decision_id
                        )
                    except grpc.RpcError as exc:
                        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                time.sleep(0.5)  # handlers that outlived their callers have finished by now
                if running.offerdesk.expired_calls:
                    break
            written = set()
            for key in sent:
                try:
                    written.add(
                        stub.GetDecision(pb.GetDecisionRequest(request_key=key)).decision_id
                    )
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND
        refused = running.offerdesk.expired_calls
        assert refused > 0, "no late call reached a deadline check on the server"
        assert refused + len(written) <= len(sent)
        assert answered <= written
        logged = [r for r in running.desk.store.scan() if r.seq >= before and r.kind == "decision"]
        assert {r.ref for r in logged} == written  # nothing else was written
    finally:
        running.stop()
