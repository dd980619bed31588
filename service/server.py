"""gRPC shell: protobuf in, one call into the Desk, protobuf out; errors mapped in one place.

Registers standard health checking and reflection so grpcurl and probes work. The servicer holds
no logic of its own; `service.status` is the only place that chooses status codes. When the
audit log cannot be opened safely the server still listens, but only to say so: health
NOT_SERVING and every OfferDesk call UNAVAILABLE with the reason. It never starts without its
log.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from offerdesk.v1 import audit_pb2 as apb
from offerdesk.v1 import audit_pb2_grpc as apb_grpc
from offerdesk.v1 import offerdesk_pb2 as pb
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import server_interceptor
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import TracerProvider

from audit.checkpoint import (
    DirectoryPublisher,
    GitPublisher,
    KeyRing,
    Publisher,
    WebhookPublisher,
)
from audit.checkpointer import Checkpointer
from audit.errors import AuditCorrupt, AuditError, AuditLocked, AuditWriteError
from audit.records import decode_time
from audit.store import AuditStore
from audit.vault import Vault
from service import validation
from service.audit_api import AuditAdminServicer, AuditContext, AuditServicer
from service.desk import Deployment, Desk
from service.errors import (
    DeadlineExceeded,
    InvalidArgument,
    Unavailable,
)
from service.profiles import ProfileSource
from service.registry import Registry
from service.settings import DirectoryPublication, GitPublication, Settings
from service.status import expired, grpc_errors
from service.telemetry import Telemetry, start_telemetry
from service.tls import server_credentials

log = logging.getLogger("offerdesk")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OfferDesk"].full_name
AUDIT_SERVICE_NAME = apb.DESCRIPTOR.services_by_name["Audit"].full_name
#: who the periodic retention cut is recorded as requested by
RETENTION_OPERATOR = "offerdesk-service"
T = TypeVar("T")

_tracer = trace.get_tracer("offerdesk")


def _ts(at: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(at.astimezone(UTC).replace(tzinfo=None))
    return ts


def decision_response(seq: int, b: Mapping[str, Any], outcome: str | None) -> pb.DecideResponse:
    """A DecideResponse from a logged decision (its sequence and body): the log is what the
    caller sees."""
    resp = pb.DecideResponse(
        decision_id=b["decision_id"],
        kind=pb.OFFER if b["kind"] == "offer" else pb.NO_OFFER,
        agent_message=b["agent_message"],
        model_version=b["model_version"],
        catalog_version=b["catalog_version"],
        trace_id=b["trace_id"],
        decided_at=_ts(decode_time(b["inputs"]["now"])),
        audit_sequence=seq,
        outcome=pb.Outcome.Value(outcome.upper()) if outcome else pb.OUTCOME_UNSPECIFIED,
    )
    if b["no_offer_reason"]:
        resp.no_offer_reason = pb.NoOfferReason.Value(b["no_offer_reason"])
    c = b["card"]
    if c is not None:
        cur = c["currency"]
        resp.card.CopyFrom(
            pb.OfferCard(
                offer_id=c["offer_id"],
                offer_name=c["offer_name"],
                offer_kind=pb.OfferKind.Value(c["offer_kind"].upper()),
                product=c["product"],
                variant=pb.Variant(
                    id=c["variant_id"],
                    name=c["variant_name"],
                    price=pb.Money(amount_minor=c["price_minor"], currency=cur),
                    list_price=pb.Money(amount_minor=c["list_price_minor"], currency=cur),
                    discount_bps=c["discount_bps"],
                ),
                talking_points=c["talking_points"],
                reasons=[
                    pb.Reason(
                        text=r["text"],
                        feature=r["feature"],
                        value=r["value"],
                        contribution=r["contribution"],
                    )
                    for r in c["reasons"]
                ],
                firing_rule=pb.FiringRule(**c["firing_rule"]),
                p_accept=c["p_accept"],
                expected_value=pb.Money(
                    amount_minor=round(c["expected_value_minor"]), currency=cur
                ),
                explored=c["explored"],
            )
        )
    for w in b["why_not"]:
        item = pb.WhyNot(
            offer_id=w["offer_id"],
            code=pb.WhyNotCode.Value(w["code"]),
            rule_id=w["rule_id"],
            detail=w["detail"],
        )
        if w["value"] is not None:
            item.value = w["value"]
        resp.why_not.append(item)
    resp.why_not_omitted.update(b.get("why_not_omitted", {}))
    return resp


class OfferDeskServicer(pb_grpc.OfferDeskServicer):
    """Thin shell over the Desk: translate, call, translate back."""

    def __init__(
        self,
        desk: Desk,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        telemetry: Telemetry | None = None,
    ):
        self.desk = desk
        self.clock = clock
        self.telemetry = telemetry or Telemetry(NoOpMeterProvider())
        #: calls refused because the caller's deadline had passed, on arrival or just before
        #: the write (nothing written for them)
        self.expired_calls = 0

    def _late(self, context: grpc.ServicerContext) -> bool:
        """Whether the caller's deadline has passed (counted: the call will be refused)."""
        if expired(context):
            self.expired_calls += 1
            self.telemetry.refused.add(1, {"reason": "deadline"})
            return True
        return False

    def _check_deadline(self, context: grpc.ServicerContext) -> None:
        if self._late(context):
            raise DeadlineExceeded("the caller's deadline passed before the call was handled")

    def Decide(self, request: pb.DecideRequest, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        kind = "refused"
        try:
            response = self._decide(request, context)
            kind = "offer" if response.kind == pb.OFFER else "no_offer"
            return response
        finally:
            self.telemetry.decide_ms.record((time.perf_counter() - started) * 1000, {"kind": kind})

    def _decide(self, request: pb.DecideRequest, context: grpc.ServicerContext) -> Any:
        with _tracer.start_as_current_span("offerdesk.Decide") as span:
            trace_id = trace.format_trace_id(span.get_span_context().trace_id)
            with grpc_errors(context):
                self._check_deadline(context)
                now = self.clock()
                catalog = self.desk.deployment.catalog
                cmd = validation.decide_command(
                    request,
                    now=now,
                    tags=catalog.spec.ticket_tags,
                    fields=catalog.spec.ticket_fields,
                )
                c = self.desk.decide(
                    cmd, now=now, trace_id=trace_id, wanted=lambda: not self._late(context)
                )
                outcome = self.desk.outcome_of(c.body["decision_id"])
                return decision_response(c.record.seq, c.body, outcome)

    def RecordOutcome(self, request: pb.RecordOutcomeRequest, context: grpc.ServicerContext) -> Any:
        with grpc_errors(context):
            self._check_deadline(context)
            now = self.clock()
            cmd = validation.outcome_command(request, now=now)
            record, outcome = self.desk.record_outcome(cmd, now=now)
            return pb.RecordOutcomeResponse(
                decision_id=cmd.decision_id,
                outcome=pb.Outcome.Value(outcome.upper()),
                audit_sequence=record.seq,
                recorded_at=_ts(record.recorded_at),
            )

    def RecordConversion(
        self,
        request: pb.RecordConversionRequest,
        context: grpc.ServicerContext,
    ) -> Any:
        with grpc_errors(context):
            self._check_deadline(context)
            now = self.clock()
            cmd = validation.conversion_command(request, now=now)
            record = self.desk.record_conversion(cmd, now=now)
            return pb.RecordConversionResponse(
                transaction_id=cmd.transaction_id,
                audit_sequence=record.seq,
                recorded_at=_ts(record.recorded_at),
            )

    def GetDecision(self, request: pb.GetDecisionRequest, context: grpc.ServicerContext) -> Any:
        with grpc_errors(context):
            which = request.WhichOneof("key")
            if which == "decision_id":
                record = self.desk.find_decision(decision_id=request.decision_id)
            elif which == "request_key":
                record = self.desk.find_decision(request_key=request.request_key)
            elif which == "ticket":
                record = self.desk.find_decision(
                    ticket=(request.ticket.helpdesk, request.ticket.ticket_id)
                )
            else:
                raise InvalidArgument("key", "set decision_id, request_key or ticket")
            body = record.body
            return decision_response(record.seq, body, self.desk.outcome_of(body["decision_id"]))


@dataclass
class Running:
    """A started server and everything it owns; `stop()` shuts it down cleanly.

    ``refusal`` is set (and there is no desk) when the audit log could not be opened: the
    server then answers health checks and refuses everything else.
    """

    server: grpc.Server
    port: int
    _desk: Desk | None
    health: health.HealthServicer
    _stop: threading.Event
    refusal: str | None = None
    checkpointer: Checkpointer | None = None
    offerdesk: OfferDeskServicer | None = None
    telemetry: Telemetry | None = None

    @property
    def desk(self) -> Desk:
        if self._desk is None:
            raise Unavailable(self.refusal or "not serving")
        return self._desk

    def stop(self, grace: float = 5.0) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        _set_health(self.health, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(grace).wait()
        if self.checkpointer is not None:
            # After the drain, before the store closes: the final checkpoint seals everything.
            self.checkpointer.close()
        if self._desk is not None:
            self._desk.store.close()
            self._desk.vault.close()
        if self.telemetry is not None:
            self.telemetry.shutdown()

    def wait(self) -> None:
        self.server.wait_for_termination()


def start(settings: Settings) -> Running:
    """Open the log and state, load the active model and catalog, and start listening."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())  # ids for the log; no exporter unless set
    registry = Registry(settings.registry_dir)
    active = registry.active()  # fail before opening anything if nothing was trained
    models = registry.load_models(active.model)
    catalog = registry.load_catalog(active.catalog)
    secrets = settings.load_secrets()
    profiles = ProfileSource(
        settings.profiles_source,
        settings.identities_source,
        timeout=settings.profile_timeout_seconds,
    )
    keys = KeyRing.open(settings.signing_key_dir, settings.audit.origin)
    token = settings.audit_api_token()
    admin_token = settings.audit_admin_token()
    try:
        store = AuditStore.open(settings.audit_path)
    except AuditLocked as e:  # a second service on the same data directory: do not start
        raise Unavailable(str(e)) from None
    except AuditError as e:  # a WAL that does not replay, a log that does not verify, ...
        return _refuse(settings, str(e))
    try:
        # Before anything is written: a log that does not extend its last signed checkpoint
        # (cut off, or rewritten) is evidence, not something to append to.
        checkpointer = Checkpointer.start(
            store,
            keys,
            settings.checkpoint_path,
            _publishers(settings),
            every_records=settings.audit.checkpoint_every_records,
            every_seconds=settings.audit.checkpoint_every_seconds,
        )
    except AuditCorrupt as e:
        store.close()
        return _refuse(settings, str(e))
    except BaseException:
        store.close()
        raise
    vault: Vault | None = None
    try:
        vault = Vault.open(settings.vault_path)
        desk = Desk(store, vault, profiles, registry, secrets)
        desk.deploy(Deployment(models, catalog), "start")
    except BaseException:
        checkpointer.close()
        store.close()
        if vault is not None:
            vault.close()
        raise
    try:
        telemetry = start_telemetry(settings.telemetry)
    except OSError as e:  # the scrape port is taken: say so, and leave nothing open
        checkpointer.close()
        store.close()
        vault.close()
        raise Unavailable(
            f"telemetry.prometheus_listen {settings.telemetry.prometheus_listen}: {e}"
        ) from None
    desk.on_decided = telemetry.decision
    store.on_commit(telemetry.audit_commit)
    telemetry.follow_deployment(
        lambda: (desk.deployment.models.version, desk.deployment.catalog.version)
    )
    # Load shedding: past max_concurrent_rpcs calls in flight (running or queued for a worker),
    # grpcio answers RESOURCE_EXHAUSTED at once instead of queueing without bound; ShedCounter
    # counts those calls, which no handler sees.
    shed = ShedCounter(
        settings.workers,
        lambda method: telemetry.refused.add(1, {"reason": "shed", "method": method}),
    )
    server = grpc.server(
        shed.pool,
        interceptors=[
            shed,
            # A span per call, continuing the caller's trace (W3C traceparent) when it sends
            # one; each decision records its trace id.
            server_interceptor(tracer_provider=trace.get_tracer_provider()),
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    servicer = OfferDeskServicer(desk, telemetry=telemetry)
    pb_grpc.add_OfferDeskServicer_to_server(servicer, server)
    audit_context = AuditContext(
        desk,
        keys,
        checkpointer,
        settings.checkpoint_path,
        settings.export_dir,
        settings.registry_dir,
        token,
    )
    apb_grpc.add_AuditServicer_to_server(AuditServicer(audit_context), server)
    apb_grpc.add_AuditAdminServicer_to_server(
        AuditAdminServicer(
            desk,
            admin_token,
            retention_days=settings.audit.retention_days,
            seal=checkpointer.seal,
        ),
        server,
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            AUDIT_SERVICE_NAME,
            apb.DESCRIPTOR.services_by_name["AuditAdmin"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    try:
        port = _add_port(server, settings)
    except Unavailable:
        telemetry.shutdown()
        checkpointer.close()
        store.close()
        vault.close()
        raise
    server.start()
    _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
    stop = threading.Event()
    running = Running(
        server,
        port,
        desk,
        health_servicer,
        stop,
        checkpointer=checkpointer,
        offerdesk=servicer,
        telemetry=telemetry,
    )
    # NOT_SERVING while the log refuses writes (reopening it, or records lost), SERVING again
    # once the reopened log verified.
    store.watch(functools.partial(_follow_audit, running))
    threading.Thread(
        target=_background,
        args=(running, settings, registry),
        daemon=True,
        name="offerdesk-background",
    ).start()
    log.info("listening on %s (port %d)", settings.listen, port)
    return running


def _publishers(settings: Settings) -> list[Publisher]:
    """The configured publication points, in settings order."""
    out: list[Publisher] = []
    for spec in settings.audit.publish:
        if isinstance(spec, DirectoryPublication):
            out.append(DirectoryPublisher(spec.path))
        elif isinstance(spec, GitPublication):
            out.append(GitPublisher(spec.repo, spec.remote))
        else:
            secret = None if spec.secret is None else bytes.fromhex(spec.secret.get_secret_value())
            out.append(WebhookPublisher(spec.url, secret, spec.timeout_seconds))
    return out


class _CountingPool(futures.ThreadPoolExecutor):
    """The server's worker pool, counting what grpcio hands it: one submit per accepted call."""

    submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


class ShedCounter(grpc.ServerInterceptor):
    """Counts the calls grpcio sheds past max_concurrent_rpcs, which no handler ever sees.

    grpcio refuses them with RESOURCE_EXHAUSTED at once, on its polling thread, offering no
    hook. What it does offer: interceptors run for every call, refused ones included, before
    it decides; and every call it accepts is submitted to the worker pool once. Both happen
    on that one thread, under the server's lock, so when a call is intercepted the one before
    it has been either submitted or shed. A call is therefore counted when the next one
    arrives (a last shed call before a quiet spell is counted late, never lost or doubled).
    """

    def __init__(self, workers: int, record: Callable[[str], None]) -> None:
        self.pool = _CountingPool(max_workers=workers)
        self._record = record
        self._previous: tuple[str, int] | None = None  # (method, pool.submitted then)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if self._previous is not None and self._previous[1] == self.pool.submitted:
            try:
                self._record(self._previous[0])
            except Exception as exc:  # metrics never fail a call
                log.warning("shed call count failed: %s", exc)
        # An unknown method is answered UNIMPLEMENTED and never submitted: not shed.
        method = handler_call_details.method  # type: ignore[attr-defined]
        self._previous = None if handler is None else (method, self.pool.submitted)
        return handler


def _set_health(servicer: health.HealthServicer, status: Any) -> None:
    for name in ("", SERVICE_NAME):
        servicer.set(name, status)


def _follow_audit(running: Running, failure: AuditWriteError | None) -> None:
    if running._stop.is_set():
        return
    serving = health_pb2.HealthCheckResponse
    _set_health(running.health, serving.NOT_SERVING if failure else serving.SERVING)


def _add_port(server: grpc.Server, settings: Settings) -> int:
    """Listen on settings.listen: TLS when settings.tls is set (service.tls), else plaintext."""
    try:
        port = (
            server.add_insecure_port(settings.listen)
            if settings.tls is None
            else server.add_secure_port(settings.listen, server_credentials(settings.tls))
        )
    except ValueError as e:  # a TLS file that cannot be read
        raise Unavailable(str(e)) from None
    if port == 0:
        raise Unavailable(f"cannot listen on {settings.listen}")
    return port


def _refuse(settings: Settings, message: str) -> Running:
    """Listen only to say why not: health NOT_SERVING, every OfferDesk call UNAVAILABLE."""
    log.error("refusing to serve: %s", message)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((_refusing_handler(message),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    try:
        port = _add_port(server, settings)
    except Unavailable as e:
        raise Unavailable(f"{e}; {message}") from None
    _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    log.info("listening on %s (port %d), NOT_SERVING", settings.listen, port)
    return Running(server, port, None, health_servicer, threading.Event(), message)


def _refusing_handler(message: str) -> grpc.GenericRpcHandler:
    """Every method of the OfferDesk service, present and future, answers UNAVAILABLE."""

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAVAILABLE, f"audit log unavailable: {message}")

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    methods = pb.DESCRIPTOR.services_by_name["OfferDesk"].methods
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {m.name: kinds[m.client_streaming, m.server_streaming](refuse) for m in methods},
    )


def _background(running: Running, settings: Settings, registry: Registry) -> None:
    """Polls for a new active model/catalog, refreshes profiles and applies the retention
    periods (first soon after start, then every audit.retention_every_hours), until stopped."""
    stamp = registry.active_stamp()
    next_refresh = settings.profile_refresh_seconds
    next_cut = 0.0 if settings.audit.retention_days else float("inf")
    waited = 0.0
    while not running._stop.wait(settings.reload_poll_seconds):
        waited += settings.reload_poll_seconds
        if waited >= next_cut:
            next_cut = waited + settings.audit.retention_every_hours * 3600
            _cut_retention(running, settings)
        new_stamp = registry.active_stamp()
        if new_stamp != stamp:
            stamp = new_stamp
            try:
                running.desk.reload_active("reload")
            except Exception as e:  # a bad file never replaces a good one
                log.error("reload refused, still serving the previous version: %s", e)
        if waited >= next_refresh:
            next_refresh += settings.profile_refresh_seconds
            try:
                running.desk.refresh_profiles()
            except Exception as e:
                log.error("profile refresh failed, keeping the previous copy: %s", e)


def _cut_retention(running: Running, settings: Settings) -> None:
    """The periodic retention cut, then a checkpoint that seals its record at once."""
    try:
        summary = running.desk.cut(
            settings.audit.retention_days, RETENTION_OPERATOR, datetime.now(UTC)
        )
    except Exception as e:  # a refused period or a write error: say so, keep serving
        log.error("retention cut not applied: %s", e)
        return
    if running.checkpointer is not None:
        try:
            running.checkpointer.seal()
        except Exception as e:  # the checkpointer's own thread seals it later
            log.error("could not seal right after the retention cut: %s", e)
    log.info(
        "retention cut: %d records past their retention period, `retention` record at seq %s",
        summary.count,
        summary.audit_sequence,
    )


def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then drain in-flight calls and close the log cleanly."""
    running = start(settings)
    done = threading.Event()

    def _shutdown(signum: int, _frame: Any) -> None:
        log.info("signal %d: draining", signum)
        done.set()

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    with contextlib.suppress(KeyboardInterrupt):
        # In slices: CPython runs signal handlers on the main thread only, and an untimed wait
        # is not woken when the kernel hands SIGTERM to another thread (seen: a minute late).
        while not done.wait(0.5):
            pass
    running.stop()
