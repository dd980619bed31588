"""The gateway's overhead per request: a signed Zendesk webhook through the gateway against the
same Decide sent straight to the service over gRPC.

Starts `offerdesk serve` and `offerdesk gateway` as their own processes on loopback (as they
run in production), on a fresh copy of a trained data directory (default var/demo: run
`make demo` first). Sends one request at a time, alternating the two paths, each a new
ticket (so each is a new, durable decision). Prints p50 / p99 of each path per run and the
overhead (gateway − direct).

    .venv/bin/python scripts/bench_gateway.py --requests 300 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from offerdesk.v1 import offerdesk_pb2 as pb
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc

from console_adapters import zendesk
from service.simulator import load_world

SECRET = "bench-secret-not-for-production"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(target: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise SystemExit(f"the service at {target} did not start")


def wait_http(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the gateway at {url} did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("var/demo"))
    parser.add_argument("--requests", type=int, default=300, help="per path per run")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not (args.data_dir / "registry").exists():
        raise SystemExit(f"{args.data_dir} has no trained registry: run `make demo` first")
    world = load_world(args.data_dir / "profiles")
    externals = sorted(e for (source, e) in world.identities if source == "zendesk")
    offerdesk = Path(sys.executable).with_name("offerdesk")
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        data = Path(tmp) / "var"
        for part in ("registry", "profiles"):
            shutil.copytree(args.data_dir / part, data / part)
        service, gateway = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        config = Path(tmp) / "gateway.yaml"
        config.write_text(
            json.dumps(
                {
                    "listen": gateway,
                    "service": service,
                    "data_dir": str(data),
                    "zendesk": {"signing_secret": SECRET, "external_id_prefix": "zd-"},
                }
            )
        )
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        procs = [
            subprocess.Popen(
                [str(offerdesk), "serve", "--data-dir", str(data), "--listen", service], **quiet
            )
        ]
        try:
            wait_serving(service)
            procs.append(
                subprocess.Popen([str(offerdesk), "gateway", "--config", str(config)], **quiet)
            )
            wait_http(f"http://{gateway}/healthz")
            run_all(args, externals, service, gateway)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(30)


def run_all(args: argparse.Namespace, externals: list[str], service: str, gateway: str) -> None:
    print(
        f"{'run':>4} {'direct p50':>11} {'direct p99':>11} {'gateway p50':>12} "
        f"{'gateway p99':>12} {'overhead p50':>13}   (ms; {args.requests} requests per path)"
    )
    n = 0
    overheads = []
    with grpc.insecure_channel(service) as channel, httpx.Client() as client:
        stub = pb_grpc.OfferDeskStub(channel)
        for run in range(1, args.runs + 1):
            direct, through = [], []
            for i in range(2 * args.requests):
                n += 1
                external = externals[n % len(externals)]
                solved = datetime.now(UTC) - timedelta(seconds=30)
                stamp = solved.strftime("%Y-%m-%dT%H:%M:%SZ")
                body = json.dumps(
                    {
                        "ticket_id": f"B{n}",
                        "status": "solved",
                        "updated_at": stamp,
                        "requester_id": external.removeprefix("zd-"),
                        "assignee_id": "381944",
                        "via": "Chat",
                        "category": "billing",
                        "product_area": "storage",
                        "csat": "good",
                    }
                ).encode()
                if i % 2 == 0:
                    sent = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                    headers = {
                        zendesk.SIGNATURE: zendesk.sign(SECRET, sent, body),
                        zendesk.SIGNATURE_TIMESTAMP: sent,
                        "content-type": "application/json",
                    }
                    started = time.perf_counter()
                    reply = client.post(
                        f"http://{gateway}/webhooks/zendesk", content=body, headers=headers
                    )
                    through.append(time.perf_counter() - started)
                    assert reply.status_code == 200, reply.text
                else:
                    resolved = Timestamp()
                    resolved.FromDatetime(solved.replace(tzinfo=None))
                    request = pb.DecideRequest(
                        request_key=f"direct:{n}",
                        helpdesk="zendesk",
                        ticket=pb.Ticket(
                            id=f"B{n}",
                            category="billing",
                            product_area="storage",
                            channel=pb.CHANNEL_CHAT,
                            resolved_at=resolved,
                            csat=5,
                        ),
                        customer=pb.Customer(external_id=external),
                        agent_id="381944",
                        locale="en-US",
                    )
                    started = time.perf_counter()
                    stub.Decide(request, timeout=10)
                    direct.append(time.perf_counter() - started)
            d50, g50 = statistics.median(direct), statistics.median(through)
            overheads.append(g50 - d50)
            print(
                f"{run:>4} {d50 * 1e3:>11.2f} {percentile(direct, 0.99) * 1e3:>11.2f} "
                f"{g50 * 1e3:>12.2f} {percentile(through, 0.99) * 1e3:>12.2f} "
                f"{(g50 - d50) * 1e3:>13.2f}"
            )
    print(f"overhead p50 over runs: {min(overheads) * 1e3:.2f}–{max(overheads) * 1e3:.2f} ms")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
