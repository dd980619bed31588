"""The HTTP gateway: helpdesk webhooks in, `Decide` and `RecordOutcome` out over gRPC.

An ASGI app (Starlette) under uvicorn, loopback by default, built once from GatewaySettings.
For each request: size limit (413) → the adapter verifies the sender on the raw body (401) →
the adapter maps the event (400 naming the field, or 200 "ignored") → `Decide` with a
deadline. Only once the service answered (the decision is durable) does the helpdesk get 200;
a service that is down or slow gives 503 with Retry-After, so the helpdesk retries and nothing
is acknowledged that was not recorded. Retries carry the same request key: same decision.

Zendesk's sidebar can also be a signed-URL app: Zendesk POSTs a ZAF JWT to /zendesk/sidebar,
the gateway verifies it with the app's public key and serves the sidebar page with its own
short-lived session token, which the page's lookups carry instead of a secure app setting.

The outcome endpoint takes the agent's Accept/Decline with the decision's outcome token, an
HMAC of the decision id under the gateway's key, handed out only with the decision: nobody
can post an outcome for a decision they were not shown. The same token opens the agent's card
page (/card/<decision id>?token=…), which reads the decision from /api/decisions/<id>.

Talks to the service only through offerdesk.v1 (never the service's modules).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, urlencode

import grpc
import yaml
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from offerdesk.v1 import offerdesk_pb2 as pb
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from console_adapters.adapter import Adapter, Rejected, json_object, text, timestamp
from console_adapters.freshdesk import FreshdeskAdapter
from console_adapters.generic import GenericAdapter
from console_adapters.intercom import (
    IntercomAdapter,
    card_canvas,
    decline_canvas,
    error_canvas,
    recorded_canvas,
    verify_canvas,
)
from console_adapters.salesforce import ACK, SalesforceAdapter, recommendation
from console_adapters.servicenow import ServiceNowAdapter
from console_adapters.zendesk import SignedUrls, ZendeskAdapter, public_key

log = logging.getLogger("offerdesk.gateway")

#: helpdesks whose own apps may look a decision up (/lookup/<name>), authenticated as their
#: webhooks are: a request their app can make (ServiceNow's script signs; Freshdesk's app
#: sends the token from its secure installation parameter). Zendesk's sidebar uses its own
#: app token (zendesk.app_token) or a signed-URL session instead: its webhooks are signed with
#: a secret no app should hold.
LOOKUP = frozenset({"freshdesk", "servicenow"})
#: the agent's card page: plain HTML, CSS and JS, served as they are (no build step)
CARD_DIR = Path(__file__).resolve().parent / "card"
#: the Zendesk sidebar page: packaged in the app (app token), or served here (signed URLs)
ZENDESK_SIDEBAR = Path(__file__).resolve().parent / "zendesk_app" / "assets" / "iframe.html"
#: where the signed-URL sidebar page gets its session token (empty in the packaged app)
_SESSION_META = '<meta name="offerdesk-session" content="">'

#: gRPC codes that mean "try again later": the helpdesk gets 503 with Retry-After
_RETRY = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_HTTP_FOR = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
}
_OUTCOMES = {
    "accepted": pb.ACCEPTED,
    "declined": pb.DECLINED,
    "not_presented": pb.NOT_PRESENTED,
}
_DECLINE_REASONS = {
    name.lower(): value
    for name, value in pb.DeclineReason.items()
    if value != pb.DECLINE_REASON_UNSPECIFIED
}


class _HelpdeskSettings(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}

    #: put before the helpdesk's customer ids to make the identity map's external id
    external_id_prefix: str = ""


class ZendeskSettings(_HelpdeskSettings):
    #: the webhook's signing secret (Zendesk: Webhooks → the webhook → Signing secret)
    signing_secret: SecretStr
    #: the sidebar app's token (a secure app setting Zendesk's proxy adds as a bearer token
    #: to /lookup/zendesk); unset: no sidebar lookups
    app_token: SecretStr | None = Field(default=None, min_length=32)
    #: signed URLs (manifest `signedUrls: true`): the app's RSA public key, as PEM text or the
    #: path of a PEM file (read at start); unset: no signed sidebar
    app_public_key: str | None = None
    #: the ZAF JWT's audience, the installation's URL:
    #: https://<subdomain>.zendesk.com/api/v2/apps/installations/<installation id>.json
    app_audience: str | None = Field(
        default=None, pattern=r"^https://[^/\s]+/api/v2/apps/installations/\d+\.json$"
    )
    #: lifetime of the gateway's own sidebar session (signed URLs); the page must be reopened
    #: after it for a new lookup (the card's Accept/Decline use the outcome token instead)
    session_ttl_seconds: int = Field(default=1800, ge=60, le=86400)

    @field_validator("app_public_key")
    @classmethod
    def _pem(cls, v: str | None) -> str | None:
        if v is None:
            return None
        text = v
        if not v.lstrip().startswith("-----BEGIN"):
            try:
                text = Path(v).read_text()
            except OSError as e:
                raise ValueError(
                    f"neither PEM text nor a readable file: {v}: {e.strerror}"
                ) from None
        public_key(text)  # ValueError saying what is wrong, under this field's name
        return text

    @model_validator(mode="after")
    def _signed_urls_pair(self) -> ZendeskSettings:
        if (self.app_public_key is None) != (self.app_audience is None):
            raise ValueError("app_public_key and app_audience go together (signed URLs)")
        return self

    def signed_urls(self, gateway_key: bytes) -> SignedUrls | None:
        """The signed-URL sidebar, its sessions keyed by a key derived from the gateway's."""
        if self.app_public_key is None or self.app_audience is None:
            return None
        session_key = hmac.new(gateway_key, b"zendesk-sidebar-session", hashlib.sha256).digest()
        return SignedUrls(
            public_key(self.app_public_key),
            self.app_audience,
            session_key,
            session_ttl=timedelta(seconds=self.session_ttl_seconds),
        )


class FreshdeskSettings(_HelpdeskSettings):
    #: the token the automation rule sends in X-Offerdesk-Token
    token: SecretStr = Field(min_length=32)


class ServiceNowSettings(_HelpdeskSettings):
    #: the signing secret, the same as the x_offerdesk.secret system property
    secret: SecretStr = Field(min_length=32)


class IntercomSettings(_HelpdeskSettings):
    #: the app's client secret (Developer Hub → your app → Basic information): it signs the
    #: webhooks and the Canvas Kit requests
    client_secret: SecretStr


class SalesforceSettings(_HelpdeskSettings):
    #: the organisation id (15 or 18 characters) every Outbound Message must carry
    organization_id: str = Field(pattern=r"^[A-Za-z0-9]{15}([A-Za-z0-9]{3})?$")
    #: the secret last segment of the Outbound Message's URL (random URL-safe characters)
    path_secret: SecretStr = Field(min_length=32)
    #: the bearer token of the Named Credential the Apex action and the feedback flow use
    api_token: SecretStr = Field(min_length=32)


class GenericSettings(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}

    #: the helpdesk name used in URLs (/webhooks/<name>), request keys and the log
    name: str = Field(pattern=r"^[a-z0-9_-]{1,32}$")
    #: the Standard Webhooks secret: whsec_ and base64 of 24-64 random bytes
    secret: SecretStr


class GatewayTls(BaseModel):
    """The gateway's own HTTPS: certificate chain and key (PEM); with client_ca_file, callers
    must present a certificate from that CA (mTLS, e.g. Salesforce's client certificate)."""

    model_config = ConfigDict(extra="forbid")

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


class ServiceTls(BaseModel):
    """How the gateway reaches a service that speaks TLS: the CA that signed the service's
    certificate and, when the service requires mTLS, the gateway's certificate and key.
    (The service's service.tls.ClientTls has the same fields; the gateway imports nothing of
    the service, as it may run on another host.)"""

    model_config = ConfigDict(extra="forbid")

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


class GatewaySettings(BaseSettings):
    """The gateway's settings: a YAML file (--config) and OFFERDESK_GATEWAY_* variables."""

    model_config = SettingsConfigDict(
        env_prefix="OFFERDESK_GATEWAY_", env_nested_delimiter="__", extra="forbid"
    )

    #: where the gateway listens: loopback unless a reverse proxy in front needs otherwise
    listen: str = "127.0.0.1:8080"
    #: the offerdesk service's gRPC address
    service: str = "127.0.0.1:50051"
    #: larger bodies get 413 before anything is parsed
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    #: deadline of each call to the service; past it the helpdesk gets 503 and retries
    call_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    #: Retry-After of a 503 (service down or slow)
    retry_after_seconds: int = Field(default=10, ge=1)
    #: key of the outcome tokens; default: read from (or created in) data_dir/secrets
    outcome_key: SecretStr | None = None
    #: HTTPS on `listen` (plain HTTP when unset: terminate TLS in a reverse proxy instead)
    tls: GatewayTls | None = None
    #: TLS to the service (plaintext when unset)
    service_tls: ServiceTls | None = None
    data_dir: Path = Path("var")
    zendesk: ZendeskSettings | None = None
    freshdesk: FreshdeskSettings | None = None
    intercom: IntercomSettings | None = None
    salesforce: SalesforceSettings | None = None
    servicenow: ServiceNowSettings | None = None
    generic: list[GenericSettings] = Field(default_factory=list)

    @field_validator("listen", "service")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:8080")
        return v

    def adapters(self) -> dict[str, Adapter]:
        out: dict[str, Adapter] = {}
        if self.zendesk is not None:
            out["zendesk"] = ZendeskAdapter(
                self.zendesk.signing_secret.get_secret_value(),
                external_id_prefix=self.zendesk.external_id_prefix,
            )
        if self.freshdesk is not None:
            out["freshdesk"] = FreshdeskAdapter(
                self.freshdesk.token.get_secret_value(),
                external_id_prefix=self.freshdesk.external_id_prefix,
            )
        if self.intercom is not None:
            out["intercom"] = IntercomAdapter(
                self.intercom.client_secret.get_secret_value(),
                external_id_prefix=self.intercom.external_id_prefix,
            )
        if self.servicenow is not None:
            out["servicenow"] = ServiceNowAdapter(
                self.servicenow.secret.get_secret_value(),
                external_id_prefix=self.servicenow.external_id_prefix,
            )
        for spec in self.generic:
            if spec.name in out:
                raise ValueError(f"generic: {spec.name!r} is configured twice")
            out[spec.name] = GenericAdapter(spec.name, spec.secret.get_secret_value())
        return out

    def salesforce_adapter(self) -> SalesforceAdapter | None:
        if self.salesforce is None:
            return None
        return SalesforceAdapter(
            self.salesforce.organization_id,
            self.salesforce.path_secret.get_secret_value(),
            external_id_prefix=self.salesforce.external_id_prefix,
        )

    def load_outcome_key(self) -> bytes:
        if self.outcome_key is not None:
            return self.outcome_key.get_secret_value().encode()
        path = self.data_dir / "secrets" / "gateway-outcome.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip().encode()


def load(config: Path | None = None, **overrides: Any) -> GatewaySettings:
    """Settings: explicit overrides > OFFERDESK_GATEWAY_* environment > YAML file > defaults.

    The same precedence as service.settings.load_settings, written again on purpose: the
    gateway imports nothing of the service (it may run on another host)."""
    values: dict[str, Any] = {}
    if config is not None:
        loaded = yaml.safe_load(config.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config}: settings file must be a mapping")
        values = loaded
    env = GatewaySettings()
    return GatewaySettings(**{**values, **env.model_dump(exclude_unset=True), **overrides})


def outcome_token(key: bytes, decision_id: str) -> str:
    """What an agent's Accept/Decline must carry: proof the decision was shown to them."""
    mac = hmac.new(key, f"outcome:{decision_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:18]).decode("ascii")


def service_channel(settings: GatewaySettings) -> grpc.aio.Channel:
    """The channel to the service: TLS when service_tls is set. Files are read here, at start."""
    tls = settings.service_tls
    if tls is None:
        return grpc.aio.insecure_channel(settings.service)
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ValueError("service_tls: cert_file and key_file go together (mTLS)")

    def read(path: Path | None, name: str) -> bytes | None:
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError as e:
            raise ValueError(f"service_tls.{name}: cannot read {path}: {e.strerror}") from None

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(tls.ca_file, "ca_file"),
        private_key=read(tls.key_file, "key_file"),
        certificate_chain=read(tls.cert_file, "cert_file"),
    )
    return grpc.aio.secure_channel(settings.service, credentials)


def uvicorn_options(settings: GatewaySettings) -> dict[str, Any]:
    """uvicorn's TLS options for settings.tls (none for plain HTTP)."""
    import ssl

    tls = settings.tls
    if tls is None:
        return {}
    for name in ("cert_file", "key_file", "client_ca_file"):
        path = getattr(tls, name)
        if path is not None and not path.is_file():
            raise ValueError(f"tls.{name}: no such file {path}")
    options: dict[str, Any] = {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file)}
    if tls.client_ca_file is not None:
        options["ssl_ca_certs"] = str(tls.client_ca_file)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


def create_app(settings: GatewaySettings) -> Starlette:
    """The gateway's ASGI app, with its adapters, key and gRPC channel made once."""
    adapters = settings.adapters()
    key_bytes = settings.load_outcome_key()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        channel = service_channel(settings)
        state["stub"] = pb_grpc.OfferDeskStub(channel)
        state["health"] = health_pb2_grpc.HealthStub(channel)
        try:
            yield
        finally:
            await channel.close()

    async def webhook(request: Request) -> JSONResponse:
        helpdesk = request.path_params["helpdesk"]
        adapter = adapters.get(helpdesk)
        if adapter is None:
            return _error(404, "helpdesk", f"no adapter {helpdesk!r} is configured")
        started = time.perf_counter()
        try:
            body = await _body(request, settings.max_body_bytes)
            headers = _lower(request.headers)
            adapter.verify(headers, body, datetime.now(UTC))
            event = adapter.parse(headers, body)
        except Rejected as exc:
            log.info("%s webhook refused (%d): %s", helpdesk, exc.status, exc)
            return _error(exc.status, exc.field, exc.problem)
        if event.request is None:
            return JSONResponse({"ignored": event.ignored})
        answer = await _call(state["stub"].Decide, event.request, settings)
        if isinstance(answer, Failure):
            return answer.response()
        document = shown(answer, event.request.agent_id)
        log.info(
            "%s webhook → decision %s in %.1f ms",
            helpdesk,
            answer.decision_id,
            (time.perf_counter() - started) * 1e3,
        )
        return JSONResponse(document)

    def shown(answer: pb.DecideResponse, agent_id: str) -> dict[str, Any]:
        """A decision as the helpdesk gets it: with its outcome token and card URL."""
        document = json_format.MessageToDict(answer, preserving_proto_field_name=True)
        token = outcome_token(key_bytes, answer.decision_id)
        document["outcome_token"] = token
        document["card_url"] = f"/card/{quote(answer.decision_id)}?" + urlencode(
            {"token": token, "agent": agent_id}
        )
        return document

    lookup_tokens = (
        {"zendesk": settings.zendesk.app_token.get_secret_value().encode()}
        if settings.zendesk is not None and settings.zendesk.app_token is not None
        else {}
    )

    signed = settings.zendesk.signed_urls(key_bytes) if settings.zendesk is not None else None

    def sidebar_caller(helpdesk: str, request: Request) -> None:
        """A sidebar's bearer token: the app's token (added by the helpdesk's proxy), or a live
        session this gateway issued to a signed-URL sidebar page (Zendesk)."""
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        app_token = lookup_tokens.get(helpdesk)
        if app_token is not None and hmac.compare_digest(app_token, given.encode()):
            return
        if helpdesk == "zendesk" and signed is not None and given.count(".") == 2:
            signed.check_session(given)
            return
        what = f"the {helpdesk} app's token" if app_token is not None else "a sidebar session"
        raise Rejected(401, "authorization", f"not {what}")

    async def lookup(request: Request) -> JSONResponse:
        """For a helpdesk-side app (ServiceNow's Recommended Actions script, a sidebar): the
        latest decision for a ticket, authenticated as the helpdesk's webhooks are, or by the
        sidebar app's token that the helpdesk's proxy adds, or by a signed-URL sidebar's
        session (Zendesk). It never decides."""
        helpdesk = request.path_params["helpdesk"]
        adapter = adapters.get(helpdesk)
        sidebar = helpdesk in lookup_tokens or (helpdesk == "zendesk" and signed is not None)
        if adapter is None or (helpdesk not in LOOKUP and not sidebar):
            return _error(404, "helpdesk", f"no lookup for {helpdesk!r}")
        try:
            body = await _body(request, settings.max_body_bytes)
            if sidebar:
                sidebar_caller(helpdesk, request)
            else:
                adapter.verify(_lower(request.headers), body, datetime.now(UTC))
            query = json_object(body)
            ticket = pb.TicketRef(helpdesk=helpdesk, ticket_id=text(query, "ticket_id"))
            agent = text(query, "agent_id", required=False)
        except Rejected as exc:
            return _error(exc.status, exc.field, exc.problem)
        answer = await _call(
            state["stub"].GetDecision, pb.GetDecisionRequest(ticket=ticket), settings
        )
        if isinstance(answer, Failure):
            if answer.status == 404:
                return JSONResponse({"decision": None}, status_code=404)
            return answer.response()
        return JSONResponse({"decision": shown(answer, agent)})

    async def zendesk_sidebar(request: Request) -> Response:
        """Signed URLs: Zendesk POSTs the ZAF JWT (form field `token`) with the sidebar's first
        request. A verified one gets the sidebar page with a session token of ours in it."""
        assert signed is not None
        try:
            body = await _body(request, settings.max_body_bytes)
            form = parse_qs(body.decode("utf-8", errors="replace"))
            claims = signed.verify(form.get("token", [""])[0])
        except Rejected as exc:
            log.info("zendesk signed sidebar refused (%d): %s", exc.status, exc)
            return _error(exc.status, exc.field, exc.problem)
        session = signed.session(claims, datetime.now(UTC))
        page = sidebar_page.replace(_SESSION_META[:-2], _SESSION_META[:-2] + session, 1)
        return HTMLResponse(page, headers={"cache-control": "no-store"})

    async def outcome(request: Request) -> JSONResponse:
        try:
            body = json_object(await _body(request, settings.max_body_bytes))
            decision_id = text(body, "decision_id")
            given = text(body, "outcome_token")
            if not hmac.compare_digest(outcome_token(key_bytes, decision_id), given):
                raise Rejected(401, "outcome_token", "not the token of this decision")
            call = _outcome_request(body, decision_id)
        except Rejected as exc:
            return _error(exc.status, exc.field, exc.problem)
        answer = await _call(state["stub"].RecordOutcome, call, settings)
        if isinstance(answer, Failure):
            return answer.response()
        return JSONResponse(json_format.MessageToDict(answer, preserving_proto_field_name=True))

    async def decision(request: Request) -> JSONResponse:
        """One decision for the card page, to whoever holds its outcome token."""
        decision_id = request.path_params["decision_id"]
        if not hmac.compare_digest(
            outcome_token(key_bytes, decision_id), request.query_params.get("token", "")
        ):
            return _error(401, "token", "not the token of this decision")
        answer = await _call(
            state["stub"].GetDecision, pb.GetDecisionRequest(decision_id=decision_id), settings
        )
        if isinstance(answer, Failure):
            return answer.response()
        return JSONResponse(json_format.MessageToDict(answer, preserving_proto_field_name=True))

    async def card(request: Request) -> FileResponse:
        return FileResponse(CARD_DIR / "card.html", media_type="text/html")

    intercom = adapters.get("intercom")

    async def canvas_request(request: Request) -> dict[str, Any]:
        assert isinstance(intercom, IntercomAdapter)
        body = await _body(request, settings.max_body_bytes)
        verify_canvas(intercom.client_secret, _lower(request.headers), body)
        return json_object(body)

    async def canvas_initialize(request: Request) -> JSONResponse:
        """Canvas Kit: the card of the conversation's latest close, looked up by the
        conversation (GetDecision by ticket); it never decides itself."""
        try:
            payload = await canvas_request(request)
        except Rejected as exc:
            return _error(exc.status, exc.field, exc.problem)
        conversation = payload.get("conversation")
        if not isinstance(conversation, dict) or conversation.get("state") != "closed":
            return JSONResponse(card_canvas(None, ""))
        ticket = pb.TicketRef(helpdesk="intercom", ticket_id=str(conversation.get("id", "")))
        answer = await _call(
            state["stub"].GetDecision, pb.GetDecisionRequest(ticket=ticket), settings
        )
        if isinstance(answer, Failure):
            if answer.status in (400, 404):  # no id, or the webhook has not decided (yet)
                return JSONResponse(card_canvas(None, ""))
            return JSONResponse(error_canvas(answer.problem, {}))
        document = json_format.MessageToDict(answer, preserving_proto_field_name=True)
        return JSONResponse(card_canvas(document, outcome_token(key_bytes, answer.decision_id)))

    async def canvas_submit(request: Request) -> JSONResponse:
        """Canvas Kit: Accept, Decline (ask the reason), Record decline."""
        try:
            payload = await canvas_request(request)
            current = payload.get("current_canvas")
            stored = current.get("stored_data") if isinstance(current, dict) else None
            if not isinstance(stored, dict):
                raise Rejected(400, "current_canvas.stored_data", "required")
            decision_id = text(stored, "decision_id", path="current_canvas.stored_data.")
            if not hmac.compare_digest(
                outcome_token(key_bytes, decision_id), str(stored.get("token", ""))
            ):
                raise Rejected(401, "current_canvas.stored_data.token", "not this decision's")
        except Rejected as exc:
            return _error(exc.status, exc.field, exc.problem)
        component = payload.get("component_id")
        if component == "decline":
            return JSONResponse(decline_canvas(stored))
        admin = payload.get("admin")
        agent = str(admin.get("id", "")) if isinstance(admin, dict) else ""
        inputs = payload.get("input_values")
        reason = str(inputs.get("decline_reason", "")) if isinstance(inputs, dict) else ""
        if component == "accept":
            click = {"outcome": "accepted", "agent_id": agent}
        elif component == "record_decline":
            if not reason:
                return JSONResponse(decline_canvas(stored))
            click = {"outcome": "declined", "decline_reason": reason, "agent_id": agent}
        else:
            return _error(400, "component_id", f"unknown component {component!r}")
        try:
            call = _outcome_request(click, decision_id)
        except Rejected as exc:
            return JSONResponse(error_canvas(f"{exc.field}: {exc.problem}", stored))
        answer = await _call(state["stub"].RecordOutcome, call, settings)
        if isinstance(answer, Failure):
            return JSONResponse(error_canvas(answer.problem, stored))
        what = click["outcome"] + (f" ({reason.replace('_', ' ')})" if reason else "")
        return JSONResponse(recorded_canvas(what, stored))

    salesforce = settings.salesforce_adapter()
    salesforce_token = (
        settings.salesforce.api_token.get_secret_value().encode() if settings.salesforce else b""
    )

    async def outbound(request: Request) -> Response:
        """Salesforce Outbound Message: the SOAP acknowledgement once every notification is
        recorded; 503 (no acknowledgement, Salesforce retries) otherwise."""
        assert salesforce is not None
        try:
            body = await _body(request, settings.max_body_bytes)
            salesforce.verify_path(request.path_params["path"])
            notifications = salesforce.parse(body)
        except Rejected as exc:
            log.info("salesforce outbound message refused (%d): %s", exc.status, exc)
            return _error(exc.status, exc.field, exc.problem)
        for notification in notifications:
            if notification.request is None:
                continue
            answer = await _call(state["stub"].Decide, notification.request, settings)
            if isinstance(answer, Failure):
                return answer.response()
        return Response(ACK, media_type="text/xml; charset=utf-8")

    def api_caller(request: Request) -> None:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(salesforce_token, given.encode()):
            raise Rejected(401, "authorization", "not the Salesforce API token")

    async def generate(request: Request) -> JSONResponse:
        """For the Apex Generate action: the case's latest decision (GetDecision by ticket)
        as Recommendation fields."""
        try:
            api_caller(request)
            body = json_object(await _body(request, settings.max_body_bytes))
            ticket = pb.TicketRef(helpdesk="salesforce", ticket_id=text(body, "case_id"))
        except Rejected as exc:
            return _error(exc.status, exc.field, exc.problem)
        answer = await _call(
            state["stub"].GetDecision, pb.GetDecisionRequest(ticket=ticket), settings
        )
        if isinstance(answer, Failure):
            if answer.status == 404:
                return JSONResponse({"offer": False, "message": "", "decision_id": ""})
            return answer.response()
        document = json_format.MessageToDict(answer, preserving_proto_field_name=True)
        return JSONResponse(recommendation(document, outcome_token(key_bytes, answer.decision_id)))

    async def feedback(request: Request) -> JSONResponse:
        """For the reaction flow (Accept; Reject too when the component launches the flow on
        rejection): the Recommendation's ExternalId back, recorded. A flow that has only the
        case (`recordId`) may send case_id instead: the case's latest decision, which is the
        one the component showed; the bearer token already proves the caller is Salesforce."""
        try:
            api_caller(request)
            body = json_object(await _body(request, settings.max_body_bytes))
            external = text(body, "external_id", required=False)
            case_id = text(body, "case_id", required=False)
            if not external and not case_id:
                raise Rejected(400, "external_id", "required (or case_id)")
            decision_id, _, token = external.partition(".")
            if external and not hmac.compare_digest(outcome_token(key_bytes, decision_id), token):
                raise Rejected(401, "external_id", "not a decision this gateway handed out")
            reaction = text(body, "reaction").lower()
            if reaction not in ("accepted", "rejected"):
                raise Rejected(400, "reaction", "must be Accepted or Rejected")
            click = {"outcome": "accepted", "agent_id": text(body, "agent_id")}
            if reaction == "rejected":
                reason = text(body, "decline_reason", required=False) or "other"
                click = {**click, "outcome": "declined", "decline_reason": reason}
        except Rejected as exc:
            return _error(exc.status, exc.field, exc.problem)
        if not external:
            ticket = pb.TicketRef(helpdesk="salesforce", ticket_id=case_id)
            found = await _call(
                state["stub"].GetDecision, pb.GetDecisionRequest(ticket=ticket), settings
            )
            if isinstance(found, Failure):
                return found.response()
            decision_id = found.decision_id
        try:
            call = _outcome_request(click, decision_id)
        except Rejected as exc:
            return _error(exc.status, exc.field, exc.problem)
        answer = await _call(state["stub"].RecordOutcome, call, settings)
        if isinstance(answer, Failure):
            return answer.response()
        return JSONResponse(json_format.MessageToDict(answer, preserving_proto_field_name=True))

    async def health(request: Request) -> JSONResponse:
        try:
            reply = await state["health"].Check(
                health_pb2.HealthCheckRequest(service=""), timeout=settings.call_timeout_seconds
            )
            service = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.aio.AioRpcError as exc:
            service = f"unreachable ({exc.code().name})"
        ok = service == "SERVING"
        return JSONResponse(
            {
                "gateway": "ok",
                "service": service,
                "adapters": sorted([*adapters, *(["salesforce"] if salesforce else [])]),
            },
            status_code=200 if ok else 503,
        )

    canvas_routes = (
        [
            Route("/intercom/initialize", canvas_initialize, methods=["POST"]),
            Route("/intercom/submit", canvas_submit, methods=["POST"]),
        ]
        if intercom is not None
        else []
    )
    salesforce_routes = (
        [
            Route("/salesforce/outbound/{path}", outbound, methods=["POST"]),
            Route("/salesforce/generate", generate, methods=["POST"]),
            Route("/salesforce/feedback", feedback, methods=["POST"]),
        ]
        if salesforce is not None
        else []
    )
    sidebar_page = ZENDESK_SIDEBAR.read_text() if signed is not None else ""
    if signed is not None and _SESSION_META not in sidebar_page:
        raise ValueError(f"{ZENDESK_SIDEBAR}: no {_SESSION_META} for the session token")
    signed_routes = (
        [Route("/zendesk/sidebar", zendesk_sidebar, methods=["POST"])] if signed is not None else []
    )
    return Starlette(
        routes=[
            *canvas_routes,
            *signed_routes,
            *salesforce_routes,
            Route("/webhooks/{helpdesk}", webhook, methods=["POST"]),
            Route("/outcomes", outcome, methods=["POST"]),
            Route("/lookup/{helpdesk}", lookup, methods=["POST"]),
            Route("/api/decisions/{decision_id}", decision, methods=["GET"]),
            Mount("/card/static", StaticFiles(directory=CARD_DIR), name="card-static"),
            Route("/card/{decision_id}", card, methods=["GET"]),
            Route("/healthz", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


async def _body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejected(413, "body", f"larger than {limit:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Rejected(413, "body", f"larger than {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class Failure:
    """The service's refusal, as the HTTP status, field and problem that stand for it."""

    status: int
    field: str
    problem: str
    retry_after: int | None = None  # set for 503: the helpdesk should try again

    def response(self) -> JSONResponse:
        response = _error(self.status, self.field, self.problem)
        if self.retry_after is not None:
            response.headers["Retry-After"] = str(self.retry_after)
        return response


async def _call(method: Any, request: Any, settings: GatewaySettings) -> Any:
    """Call the service; its answer, or the Failure that stands for its status."""
    try:
        return await method(request, timeout=settings.call_timeout_seconds)
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code(), exc.details() or ""
        if code in _RETRY:
            log.warning("service %s: %s (503, retry after)", code.name, details)
            return Failure(503, "service", f"{code.name}: {details}", settings.retry_after_seconds)
        status = _HTTP_FOR.get(code, 502)
        field, _, problem = details.partition(": ")
        if status == 400 and problem:
            return Failure(400, field, problem)
        return Failure(status, "service", f"{code.name}: {details}")


def _outcome_request(body: Mapping[str, Any], decision_id: str) -> pb.RecordOutcomeRequest:
    name = text(body, "outcome").lower()
    if name not in _OUTCOMES:
        raise Rejected(400, "outcome", f"must be one of {', '.join(_OUTCOMES)}")
    reason = text(body, "decline_reason", required=False).lower()
    if reason and reason not in _DECLINE_REASONS:
        raise Rejected(400, "decline_reason", f"must be one of {', '.join(_DECLINE_REASONS)}")
    return pb.RecordOutcomeRequest(
        decision_id=decision_id,
        outcome=_OUTCOMES[name],  # type: ignore[arg-type]
        decline_reason=_DECLINE_REASONS.get(reason, 0),  # type: ignore[arg-type]
        decline_note=text(body, "decline_note", required=False),
        agent_id=text(body, "agent_id"),
        occurred_at=timestamp(datetime.now(UTC)),
    )


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _error(status: int, field: str, problem: str) -> JSONResponse:
    return JSONResponse({"error": {"field": field, "problem": problem}}, status_code=status)


def serve(settings: GatewaySettings, log_level: Literal["info", "warning"] = "info") -> None:
    """Run the gateway under uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    host, _, port = settings.listen.rpartition(":")
    options = uvicorn_options(settings)  # a missing TLS file stops here, named
    if settings.service_tls is not None:
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(settings.service_tls, name)
            if path is not None and not path.is_file():
                raise ValueError(f"service_tls.{name}: no such file {path}")
    uvicorn.run(create_app(settings), host=host, port=int(port), log_level=log_level, **options)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="offerdesk's HTTP gateway for helpdesks")
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args(argv)
    serve(load(args.config))


__all__ = ["GatewaySettings", "create_app", "load", "outcome_token", "serve"]
