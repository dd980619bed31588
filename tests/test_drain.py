"""Graceful shutdown of a real `offerdesk serve`: SIGTERM under load drains the calls in flight,
loses none that was answered, and seals the whole log with a final checkpoint."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from adapter_kit import free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc
from test_server import request, treated_customers

from audit.views import open_source
from service.settings import load_settings
from service.simulator import World


def test_sigterm_under_load_drains_and_seals_everything(data_dir: Path, world: World) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--data-dir", str(data_dir)],
        env={**os.environ, "OFFERDESK_LISTEN": target},
        stderr=subprocess.PIPE,
        text=True,
    )
    customers = treated_customers(world, load_settings(None, data_dir=data_dir))
    answered: list[str] = []
    refused: list[grpc.StatusCode] = []
    stop = threading.Event()
    try:
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 60
            while True:
                try:
                    health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            stub = pb_grpc.OfferDeskStub(channel)

            def caller(k: int) -> None:
                i = 0
                while not stop.is_set():
                    try:
                        reply = stub.Decide(
                            request(world, customers[(k * 7 + i) % 80], f"drain-{k}-{i}"),
                            timeout=10,
                        )
                        answered.append(reply.decision_id)
                    except grpc.RpcError as e:
                        refused.append(e.code())
                        if e.code() == grpc.StatusCode.UNAVAILABLE:
                            return
                    i += 1

            with futures.ThreadPoolExecutor(8) as pool:
                calls = [pool.submit(caller, k) for k in range(8)]
                time.sleep(1.5)
                before = len(answered)
                signalled = time.monotonic()
                server.send_signal(signal.SIGTERM)
                code = server.wait(timeout=30)
                drained = time.monotonic() - signalled
                stop.set()
                for c in calls:
                    c.result()
    finally:
        stop.set()
        if server.poll() is None:
            server.kill()
    print(f"drained in {drained:.2f} s; {len(answered)} answered ({before} before SIGTERM)")
    assert code == 0, server.stderr.read() if server.stderr else ""
    assert before > 10 and len(answered) >= before
    # Calls after the drain began were refused, nothing else: UNAVAILABLE, or CANCELLED for a
    # call that reached the server just as it stopped taking calls (gRPC's core closes the
    # streams it had not handed to a handler; seen in 2 of 8 runs, before and after the shed
    # counter). Either way the caller was not answered, and a retry with the same request
    # key is safe: it gets the decision if one was made, and a new one if not.
    assert set(refused) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    # Every answered decision is in the log: nothing acknowledged was lost.
    con = open_source(data_dir / "audit.duckdb")
    try:
        logged = {r[0] for r in con.execute("SELECT decision_id FROM decisions").fetchall()}
    finally:
        con.close()
    assert set(answered) <= logged
    # The final checkpoint seals every record.
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "audit", "verify", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    total = int(re.search(r"([\d,]+) records, chain intact", out.stdout)[1].replace(",", ""))
    sealed = int(re.search(r"newest seals ([\d,]+) records", out.stdout)[1].replace(",", ""))
    assert sealed == total and "unsealed" not in out.stdout
