"""kill -9 soak: the real server under concurrent Decide and RecordOutcome calls, SIGKILLed at
random moments and restarted, until nothing acknowledged has been lost or something has.

The clients' log of acknowledgements is the oracle (as in DuckDB's TPC-H durability test):
every Decide and RecordOutcome that returned OK must be there after each restart (GetDecision)
and in the file after a final clean stop, and the chain must verify after every crash. Calls
cut off by the kill are indeterminate: they may be there or not. This shows durability at the
page-cache level only: SIGKILL does not drop unsynced pages, a power cut would (LazyFS).

    .venv/bin/python scripts/soak_kill9.py [--kills 200] [--seed 1] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from offerdesk.v1 import offerdesk_pb2 as pb
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc

from audit.recovery import QUARANTINE_DIR
from audit.store import AuditStore
from audit.verify import verify_file
from service.settings import load_settings
from service.simulator import World, load_world

DECIDE_THREADS = 3
OUTCOME_THREADS = 1
CALL_TIMEOUT = 10.0
START_TIMEOUT = 90.0
# The server is killed this long after it first answers SERVING (uniformly at random).
KILL_AFTER = (0.05, 1.5)


@dataclass
class Result:
    """What a soak did and found; ``lost`` must be 0."""

    kills: int = 0
    decisions: int = 0  # acknowledged Decide calls
    outcomes: int = 0  # acknowledged RecordOutcome calls
    lost_decisions: int = 0
    lost_outcomes: int = 0
    indeterminate: int = 0  # calls cut off by a kill (may or may not have landed)
    refused_starts: int = 0  # restarts that came up NOT_SERVING
    verify_failures: int = 0  # crashes after which the chain did not verify
    records: int = 0
    quarantine_copies: int = 0  # kept at the end (the newest few are)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.lost_decisions + self.lost_outcomes

    @property
    def ok(self) -> bool:
        return not self.lost and not self.refused_starts and not self.verify_failures

    def summary(self) -> str:
        return (
            f"kills {self.kills}, acknowledged decisions {self.decisions}, acknowledged "
            f"outcomes {self.outcomes}, lost {self.lost}, duration {self.seconds:.0f} s "
            f"(records {self.records}, indeterminate calls {self.indeterminate}, refused "
            f"starts {self.refused_starts}, verify failures {self.verify_failures}, "
            f"quarantine copies kept {self.quarantine_copies})"
        )


@dataclass
class _Acks:
    """The oracle: what the server acknowledged, in this run and in all runs."""

    decisions: dict[str, str] = field(default_factory=dict)  # request key -> decision id
    outcomes: dict[str, int] = field(default_factory=dict)  # decision id -> pb.Outcome
    run_decisions: dict[str, str] = field(default_factory=dict)
    run_outcomes: dict[str, int] = field(default_factory=dict)
    indeterminate: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def prepare(data_dir: Path) -> None:
    """Give ``data_dir`` profiles and an active model, as the test fixtures do, unless it has."""
    if (data_dir / "registry" / "active.json").exists():
        return
    from service.catalog import load_catalog
    from service.cli import EXAMPLE_CATALOG
    from service.registry import Registry
    from service.simulator import load_history, simulate
    from service.training import fit, training_rows_from_history

    catalog = load_catalog(EXAMPLE_CATALOG)
    simulate(catalog, data_dir / "profiles", customers=1500, history_tickets=9000, seed=5)
    rows = training_rows_from_history(load_history(data_dir / "profiles"), catalog)
    trained = fit(*rows, iterations=80, seed=0)
    registry = Registry(data_dir / "registry")
    version = registry.save_models(trained.ranker, trained.organic, trained.card)
    registry.save_catalog(catalog.source)
    registry.activate(model=version, catalog=catalog.version)


def run(
    data_dir: Path, *, kills: int = 200, seed: int = 1, out: Callable[[str], None] = print
) -> Result:
    """Kill the server ``kills`` times under load; check every acknowledgement survived."""
    data_dir = Path(data_dir)
    prepare(data_dir)
    rng = random.Random(seed)
    settings = load_settings(None, data_dir=data_dir)
    world = load_world(settings.profile_dir)
    customers = sorted(world.profiles)
    acks = _Acks()
    offers: queue.Queue[str] = queue.Queue()
    result = Result()
    started = time.monotonic()
    logs = data_dir / "soak-logs"
    logs.mkdir(exist_ok=True)
    for kill in range(kills + 1):
        server, port = _start(data_dir, logs / f"serve-{kill:04d}.log")
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                if not _wait_serving(channel, server):
                    result.refused_starts += 1
                    result.problems.append(f"start {kill} did not serve; see {logs}")
                    break
                _check_run(pb_grpc.OfferDeskStub(channel), acks, result, kill)
                if kill == kills:
                    break
                _load_and_kill(channel, server, world, customers, acks, offers, rng, kill)
                result.kills += 1
        finally:
            if server.poll() is None:  # the last one stops cleanly; others only on errors
                server.send_signal(signal.SIGTERM if kill == kills else signal.SIGKILL)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        report = verify_file(settings.audit_path)
        if not report.ok:
            result.verify_failures += 1
            result.problems.append(f"after kill {kill}: {report.problem}")
        if (kill + 1) % 10 == 0:
            out(
                f"{kill + 1} kills, {len(acks.decisions)} "
                f"decisions, {len(acks.outcomes)} outcomes acknowledged, "
                f"{report.count} records, {time.monotonic() - started:.0f} s"
            )
    _check_file(settings.audit_path, acks, result)
    result.decisions, result.outcomes = len(acks.decisions), len(acks.outcomes)
    result.indeterminate = acks.indeterminate
    quarantine = data_dir / QUARANTINE_DIR
    result.quarantine_copies = len(list(quarantine.iterdir())) if quarantine.exists() else 0
    result.seconds = time.monotonic() - started
    return result


def _start(data_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    offerdesk = Path(sys.executable).with_name("offerdesk")
    cmd = [str(offerdesk), "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"]
    with log.open("wb") as f:
        server = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    return server, port


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_serving(channel: grpc.Channel, server: subprocess.Popen[bytes]) -> bool:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + START_TIMEOUT
    not_serving = 0
    while time.monotonic() < deadline and server.poll() is None:
        try:
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
        except grpc.RpcError:
            time.sleep(0.05)
            continue
        if status == health_pb2.HealthCheckResponse.SERVING:
            return True
        not_serving += 1  # listening but refusing: the log did not open
        if not_serving > 20:
            return False
        time.sleep(0.05)
    return False


def _check_run(stub: pb_grpc.OfferDeskStub, acks: _Acks, result: Result, kill: int) -> None:
    """After a restart: the previous run's acknowledgements, the ones most at risk."""
    for key, decision_id in acks.run_decisions.items():
        try:
            found = stub.GetDecision(pb.GetDecisionRequest(request_key=key), timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            result.problems.append(f"restart {kill}: decision {key}: {exc.code()} {exc.details()}")
            result.lost_decisions += 1
            continue
        if found.decision_id != decision_id:
            result.problems.append(
                f"restart {kill}: {key} is {found.decision_id}, not {decision_id}"
            )
            result.lost_decisions += 1
    for decision_id, outcome in acks.run_outcomes.items():
        try:
            found = stub.GetDecision(
                pb.GetDecisionRequest(decision_id=decision_id), timeout=CALL_TIMEOUT
            )
        except grpc.RpcError as exc:
            result.problems.append(f"restart {kill}: {decision_id}: {exc.code()} {exc.details()}")
            result.lost_outcomes += 1
            continue
        if found.outcome != outcome:
            result.problems.append(f"restart {kill}: outcome of {decision_id} is {found.outcome}")
            result.lost_outcomes += 1
    acks.run_decisions, acks.run_outcomes = {}, {}


def _load_and_kill(
    channel: grpc.Channel,
    server: subprocess.Popen[bytes],
    world: World,
    customers: list[str],
    acks: _Acks,
    offers: queue.Queue[str],
    rng: random.Random,
    kill: int,
) -> None:
    stub = pb_grpc.OfferDeskStub(channel)
    stop = threading.Event()
    seeds = [rng.randrange(1 << 30) for _ in range(DECIDE_THREADS + OUTCOME_THREADS)]

    def decide(t: int) -> None:
        mine = random.Random(seeds[t])
        i = 0
        while not stop.is_set():
            i += 1
            key = f"soak-{kill}-{t}-{i}"
            request = _decide_request(world, mine.choice(customers), key)
            try:
                resp = stub.Decide(request, timeout=CALL_TIMEOUT)
            except grpc.RpcError:
                with acks.lock:
                    acks.indeterminate += 1
                continue
            with acks.lock:
                acks.decisions[key] = acks.run_decisions[key] = resp.decision_id
            if resp.kind == pb.OFFER:
                offers.put(resp.decision_id)

    def record(t: int) -> None:
        mine = random.Random(seeds[t])
        while not stop.is_set():
            try:
                decision_id = offers.get(timeout=0.05)
            except queue.Empty:
                continue
            outcome = mine.choice([pb.ACCEPTED, pb.DECLINED])
            request = pb.RecordOutcomeRequest(
                decision_id=decision_id,
                outcome=outcome,
                agent_id="agent-soak",
                occurred_at=_timestamp(),
            )
            if outcome == pb.DECLINED:
                request.decline_reason = pb.NOT_INTERESTED
            try:
                stub.RecordOutcome(request, timeout=CALL_TIMEOUT)
            except grpc.RpcError:
                with acks.lock:
                    acks.indeterminate += 1
                continue
            with acks.lock:
                acks.outcomes[decision_id] = acks.run_outcomes[decision_id] = outcome

    threads = [threading.Thread(target=decide, args=(t,)) for t in range(DECIDE_THREADS)]
    threads += [
        threading.Thread(target=record, args=(DECIDE_THREADS + t,)) for t in range(OUTCOME_THREADS)
    ]
    for t in threads:
        t.start()
    time.sleep(rng.uniform(*KILL_AFTER))
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    stop.set()
    for t in threads:
        t.join()


def _check_file(db: Path, acks: _Acks, result: Result) -> None:
    """After the final clean stop: every acknowledgement, read from the file itself."""
    report = verify_file(db)
    if not report.ok:
        result.verify_failures += 1
        result.problems.append(f"final: {report.problem}")
    with AuditStore.open(db) as store:
        decided = {r.ref for r in store.scan(kinds=["decision"])}
        outcomes = {r.ref: r.body["outcome"] for r in store.scan(kinds=["outcome"])}
        result.records = store.head()[0]
    missing = set(acks.decisions.values()) - decided
    result.lost_decisions += len(missing)
    for decision_id, outcome in acks.outcomes.items():
        if outcomes.get(decision_id) != pb.Outcome.Name(outcome).lower():
            result.lost_outcomes += 1
            result.problems.append(f"final: outcome of {decision_id} missing or different")
    result.problems += [f"final: decision {d} missing" for d in sorted(missing)[:20]]


def _decide_request(world: World, customer_id: str, key: str) -> pb.DecideRequest:
    return pb.DecideRequest(
        request_key=key,
        helpdesk="zendesk",
        ticket=pb.Ticket(
            id=f"ZD-{key}",
            category="access",
            product_area="seats",
            channel=pb.CHANNEL_CHAT,
            resolved_at=_timestamp(),
            csat=5,
            sentiment=0.5,
        ),
        customer=pb.Customer(external_id=world.external_ids(customer_id)["zendesk"]),
        agent_id="agent-soak",
        locale="en-US",
    )


def _timestamp() -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.now(UTC).replace(tzinfo=None))
    return ts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kills", type=int, default=200, help="SIGKILLs (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="kill schedule and client choices")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data directory (prepared with simulated profiles and a small model if it has "
        "none); default: a new temporary directory",
    )
    args = parser.parse_args(argv)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="offerdesk-soak-"))
    print(f"data directory {data_dir}, seed {args.seed}", flush=True)
    result = run(data_dir, kills=args.kills, seed=args.seed, out=lambda s: print(s, flush=True))
    for problem in result.problems[:50]:
        print("PROBLEM:", problem)
    print(result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
