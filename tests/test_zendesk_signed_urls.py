"""Zendesk signed URLs (zendesk.SignedUrls, the gateway's POST /zendesk/sidebar).

Zendesk's key pair cannot be had here: a locally generated RSA key stands in for the app's.
The crypto is real (PyJWT, cryptography), and so are the gateway (over HTTP) and the service
behind it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from adapter_kit import Helpdesk, error_of, now, post, running_gateway
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError
from test_adapters import ZENDESK, ZENDESK_APP_TOKEN, gateway_settings
from test_server import treated_customers

from console_adapters.gateway import GatewaySettings
from service.server import Running
from service.settings import Settings
from service.simulator import World

ZENDESK_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ANOTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = (
    ZENDESK_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
AUDIENCE = "https://acme.zendesk.com/api/v2/apps/installations/360001234.json"
ISSUER = "acme.zendesk.com"
#: what Zendesk appends to a server-side app's URL
QUERY = "origin=https%3A%2F%2Facme.zendesk.com&app_guid=7c2b1f0e-1d2c-4a3b-9f8e-0a1b2c3d4e5f"
APP_DIR = Path(__file__).resolve().parent.parent / "console_adapters" / "zendesk_app_signed"

SIGNED = replace(
    ZENDESK,
    settings={
        "zendesk": {
            **ZENDESK.settings["zendesk"],
            "app_public_key": PUBLIC_PEM,
            "app_audience": AUDIENCE,
        }
    },
)


def claims(**change: Any) -> dict[str, Any]:
    """A ZAF JWT's claims as Zendesk documents them; a None value drops the claim."""
    issued = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": issued,
        "exp": issued + 300,
        "sub": "381944",
        "context": {"product": "support", "location": "ticket_sidebar"},
    }
    return {k: v for k, v in {**base, **change}.items() if v is not None}


def zaf_token(key: rsa.RSAPrivateKey = ZENDESK_KEY, **change: Any) -> str:
    return jwt.encode(claims(**change), key, algorithm="RS256")


def hs256_with_the_public_key() -> str:
    """The algorithm-confusion attack: HS256 keyed with the (public) PEM text."""

    def part(obj: dict[str, Any]) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=")

    signing = part({"alg": "HS256", "typ": "JWT"}) + b"." + part(claims())
    mac = hmac.new(PUBLIC_PEM.encode(), signing, hashlib.sha256).digest()
    return (signing + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()


def sidebar(gateway: str, token: str | None) -> httpx.Response:
    """Zendesk's first request of a signed-URL sidebar: a form POST carrying `token`."""
    return httpx.post(
        f"{gateway}/zendesk/sidebar?{QUERY}",
        data={} if token is None else {"token": token},
        timeout=10,
    )


def session_of(page: str) -> str:
    found = re.search(r'<meta name="offerdesk-session" content="([^"]*)">', page)
    assert found is not None, "the page has no session meta"
    return found.group(1)


def lookup(gateway: str, bearer: str, ticket: str) -> httpx.Response:
    return httpx.post(
        f"{gateway}/lookup/zendesk",
        json={"ticket_id": ticket, "agent_id": "381944"},
        headers={"authorization": f"Bearer {bearer}"},
        timeout=10,
    )


@pytest.fixture
def gateway(server: Running, settings: Settings) -> Iterator[str]:
    with running_gateway(gateway_settings(SIGNED, f"127.0.0.1:{server.port}", settings)) as base:
        yield base


def solved(gateway: str, helpdesk: Helpdesk, world: World, settings: Settings, ticket: str) -> str:
    customer = next(
        ids["zendesk"]
        for ids in (world.external_ids(c) for c in treated_customers(world, settings))
        if "zendesk" in ids
    )
    body = helpdesk.solved(customer, ticket)
    reply = post(gateway, helpdesk, body, helpdesk.sign(body, now(), ticket))
    assert reply.status_code == 200, reply.text
    return str(reply.json()["decision_id"])


def test_a_verified_zaf_token_serves_the_sidebar_whose_session_looks_the_ticket_up(
    gateway: str, world: World, settings: Settings
) -> None:
    decision_id = solved(gateway, SIGNED, world, settings, "35470")
    page = sidebar(gateway, zaf_token())
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "ZAFClient.init()" in page.text  # the app's own sidebar page
    assert page.headers["cache-control"] == "no-store"
    session = session_of(page.text)
    assert session.count(".") == 2

    found = lookup(gateway, session, "35470")
    assert found.status_code == 200, found.text
    assert found.json()["decision"]["decision_id"] == decision_id
    assert lookup(gateway, session, "never-solved").status_code == 404

    # The session is the gateway's own: altered, or a ZAF token passed off as one, is refused.
    for forged in (session[:-2] + ("AA" if not session.endswith("AA") else "BB"), zaf_token()):
        refused = lookup(gateway, forged, "35470")
        assert refused.status_code == 401 and error_of(refused)["field"] == "authorization"


def test_a_token_within_the_leeway_is_accepted(gateway: str) -> None:
    issued = int(time.time()) - 320
    late = sidebar(gateway, zaf_token(iat=issued, exp=issued + 300))  # expired 20 s ago
    assert late.status_code == 200, late.text


@pytest.mark.parametrize(
    ("token", "field", "problem"),
    [
        (lambda: None, "token", "missing"),
        (lambda: "", "token", "missing"),
        (lambda: "not-a-jwt", "token", "not a JWT"),
        (lambda: zaf_token(key=ANOTHER_KEY), "token", "signature does not verify"),
        (hs256_with_the_public_key, "token", "RS256"),
        (
            lambda: zaf_token(iat=int(time.time()) - 900, exp=int(time.time()) - 600),
            "token.exp",
            "expired",
        ),
        (lambda: zaf_token(iat=int(time.time()) + 600), "token.iat", "future"),
        (
            lambda: zaf_token(aud=AUDIENCE.replace("360001234", "360009999")),
            "token.aud",
            "not this installation",
        ),
        (lambda: zaf_token(iss="evil.zendesk.com"), "token.iss", "acme.zendesk.com"),
        (lambda: zaf_token(exp=None), "token.exp", "missing"),
        (lambda: zaf_token(iss=None), "token.iss", "missing"),
    ],
    ids=[
        "no-field",
        "empty",
        "not-a-jwt",
        "bad-signature",
        "hs256-confusion",
        "expired",
        "issued-in-future",
        "wrong-audience",
        "wrong-issuer",
        "no-exp",
        "no-iss",
    ],
)
def test_a_bad_zaf_token_is_401_naming_the_problem_and_nothing_reaches_the_service(
    gateway: str, server: Running, token: Any, field: str, problem: str
) -> None:
    logged = server.desk.store.head()[0]
    reply = sidebar(gateway, token())
    assert reply.status_code == 401, reply.text
    error = error_of(reply)
    assert error["field"] == field
    assert problem in error["problem"]
    assert "offerdesk-session" not in reply.text  # no page, no session
    assert server.desk.store.head()[0] == logged


def test_the_app_token_still_works_next_to_signed_urls(
    server: Running, settings: Settings, world: World
) -> None:
    both = replace(
        SIGNED, settings={"zendesk": {**SIGNED.settings["zendesk"], "app_token": ZENDESK_APP_TOKEN}}
    )
    with running_gateway(gateway_settings(both, f"127.0.0.1:{server.port}", settings)) as base:
        decision_id = solved(base, both, world, settings, "35471")
        by_token = lookup(base, ZENDESK_APP_TOKEN, "35471")
        assert by_token.status_code == 200, by_token.text
        assert by_token.json()["decision"]["decision_id"] == decision_id
        by_session = lookup(base, session_of(sidebar(base, zaf_token()).text), "35471")
        assert by_session.status_code == 200
        refused = lookup(base, ZENDESK_APP_TOKEN[:-1] + "x", "35471")
        assert refused.status_code == 401 and "app's token" in error_of(refused)["problem"]


def test_without_signed_urls_there_is_no_signed_sidebar(
    server: Running, settings: Settings
) -> None:
    with running_gateway(gateway_settings(ZENDESK, f"127.0.0.1:{server.port}", settings)) as base:
        assert sidebar(base, zaf_token()).status_code in (404, 405)


def zendesk(**change: Any) -> GatewaySettings:
    return GatewaySettings(zendesk={**SIGNED.settings["zendesk"], **change})


def test_the_public_key_is_read_from_pem_text_or_a_file(tmp_path: Path) -> None:
    path = tmp_path / "zendesk-app.pem"
    path.write_text(PUBLIC_PEM)
    from_file = zendesk(app_public_key=str(path))
    assert from_file.zendesk is not None and from_file.zendesk.app_public_key == PUBLIC_PEM
    assert from_file.zendesk.signed_urls(b"k" * 32) is not None


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"app_public_key": "/no/such/zendesk.pem"}, "zendesk.app_public_key", "readable file"),
        (
            {"app_public_key": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"},
            "zendesk.app_public_key",
            "not a PEM public key",
        ),
        ({"app_audience": "https://acme.zendesk.com/"}, "zendesk.app_audience", "pattern"),
        ({"app_audience": None}, "zendesk", "go together"),
    ],
    ids=["missing-file", "not-pem", "audience-not-an-installation", "key-without-audience"],
)
def test_bad_signed_url_settings_name_the_field(
    change: dict[str, Any], field: str, problem: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        zendesk(**change)
    errors = refused.value.errors()
    assert any(
        ".".join(str(p) for p in e["loc"]) == field and problem in str(e["msg"]) for e in errors
    ), errors


def test_an_ec_key_is_refused_naming_rs256(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(ValidationError, match="RSA public key"):
        zendesk(app_public_key=pem)


def test_the_signed_url_app_manifest() -> None:
    manifest = json.loads((APP_DIR / "manifest.json").read_text())
    assert manifest["signedUrls"] is True
    sidebar_location = manifest["location"]["support"]["ticket_sidebar"]
    assert sidebar_location["url"].startswith("https://")
    assert sidebar_location["url"].endswith("/zendesk/sidebar")  # the gateway's route
    assert "parameters" not in manifest  # nothing secret in the app: the JWT authenticates
    assert json.loads((APP_DIR / "translations" / "en.json").read_text())["app"]["name"]
