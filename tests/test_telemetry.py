"""Telemetry on a real server: nothing exported by default, a Prometheus scrape with the
service's metrics, OTLP pushed to a collector on loopback, and the caller's trace kept."""

from __future__ import annotations

import http.server
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import grpc
import pytest
from adapter_kit import free_port
from offerdesk.v1 import offerdesk_pb2 as pb
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc
from test_server import request, treated_customers

from service.server import Running, start
from service.settings import load_settings
from service.simulator import World


@contextmanager
def serving(data_dir: Path, **telemetry: object) -> Iterator[Running]:
    settings = load_settings(None, data_dir=data_dir, listen="127.0.0.1:0", telemetry=telemetry)
    running = start(settings)
    try:
        yield running
    finally:
        running.stop()


def _decide(
    running: Running, world: World, n: int, data_dir: Path, **kw: object
) -> list[pb.DecideResponse]:
    customers = treated_customers(world, load_settings(None, data_dir=data_dir))
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = pb_grpc.OfferDeskStub(channel)
        return [stub.Decide(request(world, customers[i], f"t-{i}"), **kw) for i in range(n)]


def test_nothing_is_exported_by_default(data_dir: Path, world: World) -> None:
    from opentelemetry.metrics import NoOpMeterProvider

    with serving(data_dir) as running:
        assert running.telemetry is not None and running.telemetry.endpoint is None
        # No reader, no exporter: the instruments record into nothing.
        assert isinstance(running.telemetry.meter_provider, NoOpMeterProvider)
        replies = _decide(running, world, 3, data_dir)
    assert all(len(r.trace_id) == 32 for r in replies)  # trace ids are made all the same


def test_prometheus_scrape_has_the_services_metrics(data_dir: Path, world: World) -> None:
    port = free_port()
    with serving(data_dir, exporter="prometheus", prometheus_listen=f"127.0.0.1:{port}") as r:
        replies = _decide(r, world, 12, data_dir)
        assert r.telemetry is not None
        text = urllib.request.urlopen(r.telemetry.endpoint, timeout=5).read().decode()
        version = r.desk.deployment.models.version
    offers = sum(1 for x in replies if x.kind == pb.OFFER)
    assert offers > 0 and samples(text, "offerdesk_offers_total") == offers
    assert samples(text, "offerdesk_decide_duration_milliseconds_count", 'kind="offer"') == offers
    assert samples(text, "offerdesk_decide_duration_milliseconds_count") == 12
    assert samples(text, "offerdesk_no_offers_total") == 12 - offers
    # Every decision was written in some commit, with its consent record or on its own.
    assert samples(text, "offerdesk_audit_batch_rows_sum") >= 12
    assert samples(text, "offerdesk_audit_commit_duration_milliseconds_count") >= 1
    assert samples(text, "offerdesk_deployment", f'model_version="{version}"') == 1


def samples(text: str, name: str, label: str = "") -> float:
    """The sum of a metric's samples in a Prometheus scrape, those with `label` only."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and label in line
    )


class _Collector(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, int]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, len(body)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_otlp_pushes_metrics_and_spans_to_a_collector(data_dir: Path, world: World) -> None:
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    _Collector.received.clear()
    try:
        with serving(
            data_dir,
            exporter="otlp",
            otlp_endpoint=f"http://127.0.0.1:{collector.server_port}",
            export_interval_seconds=0.2,
        ) as running:
            _decide(running, world, 4, data_dir)
            time.sleep(0.5)
        # stop() flushes: the last metrics and the spans are pushed on the way out.
        paths = {path for path, size in _Collector.received if size > 0}
    finally:
        collector.shutdown()
    assert "/v1/metrics" in paths and "/v1/traces" in paths


def test_a_callers_trace_is_continued_and_stored(data_dir: Path, world: World) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with serving(data_dir) as running:
        (reply,) = _decide(
            running,
            world,
            1,
            data_dir,
            metadata=[("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")],
        )
        stored = running.desk.find_decision(decision_id=reply.decision_id).body
    assert reply.trace_id == trace_id
    assert stored["trace_id"] == trace_id


def test_a_taken_scrape_port_refuses_to_start(data_dir: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        with pytest.raises(Exception, match=r"telemetry\.prometheus_listen"):
            start(
                load_settings(
                    None,
                    data_dir=data_dir,
                    listen="127.0.0.1:0",
                    telemetry={"exporter": "prometheus", "prometheus_listen": f"127.0.0.1:{taken}"},
                )
            )
