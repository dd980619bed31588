"""Telemetry: the service's OpenTelemetry metrics and traces, and where (if anywhere) they go.

Nothing leaves the machine unless settings name an exporter (`telemetry.exporter`):
- `none` (default): instruments are no-ops; trace ids are still made and stored with each
  decision, for joining a log record to a trace;
- `prometheus`: a scrape endpoint (`/metrics`) on `telemetry.prometheus_listen`, loopback by
  default, from the service's own registry (never the process-wide one);
- `otlp`: metrics and traces pushed over OTLP/HTTP to `telemetry.otlp_endpoint`.
The metrics are defined here, once; the server and the audit writer only record into them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from service.settings import TelemetrySettings

log = logging.getLogger("offerdesk")

#: bucket bounds of the latency histograms (ms): fine where the targets are (8 and 20 ms)
LATENCY_BUCKETS_MS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 50, 100, 250, 500, 1000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class Telemetry:
    """The service's instruments, and how to stop exporting them."""

    meter_provider: Any
    endpoint: str | None = None  # where Prometheus scrapes, when it does
    _stop: list[Callable[[], None]] = field(default_factory=list)
    _deployment: Callable[[], tuple[str, str] | None] = lambda: None

    def __post_init__(self) -> None:
        meter = self.meter_provider.get_meter("offerdesk")
        self.decide_ms = meter.create_histogram(
            "offerdesk.decide.duration",
            unit="ms",
            description="Decide calls, from arrival to reply (decided or refused).",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_MS,
        )
        self.offers = meter.create_counter(
            "offerdesk.offers", description="Offers shown to agents, by offer."
        )
        self.no_offers = meter.create_counter(
            "offerdesk.no_offers", description="Decisions without an offer, by reason."
        )
        self.refused = meter.create_counter(
            "offerdesk.refused_calls",
            description="Calls refused before anything was written, by reason "
            "(deadline: the caller's deadline had passed; shed: past max_concurrent_rpcs).",
        )
        self.audit_batch_rows = meter.create_histogram(
            "offerdesk.audit.batch_rows",
            description="Records per audit commit (group commit).",
            explicit_bucket_boundaries_advisory=BATCH_BUCKETS,
        )
        self.audit_commit_ms = meter.create_histogram(
            "offerdesk.audit.commit.duration",
            unit="ms",
            description="One audit commit: append, COMMIT and its WAL fsync.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_MS,
        )
        meter.create_observable_gauge(
            "offerdesk.deployment",
            callbacks=[self._observe_deployment],
            description="1 for the model and catalog versions in use.",
        )

    def follow_deployment(self, current: Callable[[], tuple[str, str] | None]) -> None:
        """Where the model and catalog versions in use are read from."""
        self._deployment = current

    def _observe_deployment(self, _options: CallbackOptions) -> Iterable[Observation]:
        versions = self._deployment()
        if versions is None:
            return []
        return [Observation(1, {"model_version": versions[0], "catalog_version": versions[1]})]

    def audit_commit(self, rows: int, seconds: float) -> None:
        self.audit_batch_rows.record(rows)
        self.audit_commit_ms.record(seconds * 1000)

    def decision(self, body: Mapping[str, Any]) -> None:
        """A new decision was written (retries answered from the log are not counted)."""
        if body["kind"] == "offer":
            self.offers.add(1, {"offer_id": body["card"]["offer_id"]})
        else:
            self.no_offers.add(1, {"reason": body["no_offer_reason"]})

    def shutdown(self) -> None:
        for stop in self._stop:
            try:
                stop()
            except Exception as e:  # never let telemetry fail a shutdown
                log.warning("telemetry shutdown: %s", e)


def start_telemetry(settings: TelemetrySettings) -> Telemetry:
    """Instruments wired to the configured exporter (none by default)."""
    if settings.exporter == "none":
        return Telemetry(metrics.NoOpMeterProvider())
    resource = Resource.create({"service.name": settings.service_name})
    stops: list[Callable[[], None]] = []
    readers: list[MetricReader] = []
    endpoint = None
    if settings.exporter == "prometheus":
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        readers.append(PrometheusMetricReader(registry=registry))
        host, _, port = settings.prometheus_listen.rpartition(":")
        server, _thread = start_http_server(int(port), host, registry=registry)
        endpoint = f"http://{host}:{server.server_port}/metrics"
        stops.append(server.shutdown)
        stops.append(server.server_close)
    else:  # otlp
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = settings.otlp_endpoint.rstrip("/")
        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=f"{base}/v1/metrics"),
                export_interval_millis=settings.export_interval_seconds * 1000,
            )
        )
        # Spans go to the process's tracer provider (service.server sets an SDK one).
        tracer_provider = trace.get_tracer_provider()
        if isinstance(tracer_provider, TracerProvider):
            spans = BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces"))
            tracer_provider.add_span_processor(spans)
            stops.append(spans.shutdown)
    provider = MeterProvider(resource=resource, metric_readers=readers)
    # First the meter provider (its last export), then the HTTP server or span exporter.
    stops.insert(0, provider.shutdown)
    log.info("telemetry: exporting to %s", endpoint or settings.otlp_endpoint)
    return Telemetry(provider, endpoint, stops)
