"""Zendesk: a trigger ("Ticket status changed to Solved") notifies a webhook with a JSON body
the admin writes from placeholders (docs/adapters/zendesk.md has the exact body).

Signature (developer.zendesk.com/documentation/webhooks/verifying): the headers
``X-Zendesk-Webhook-Signature`` = base64(HMAC-SHA256(signing secret as UTF-8, timestamp +
raw body)) and ``X-Zendesk-Webhook-Signature-Timestamp`` (ISO-8601). Zendesk states no
tolerance; we refuse a timestamp more than 5 minutes from now.

Request key: ``zendesk:<ticket id>:<updated_at>``. Zendesk delivers at least once and retries:
a retry carries the same body, so the same key and the same decision. A ticket solved again
after it was reopened has a new ``updated_at``, so a new key and a new decision.

Signed URLs (an app whose manifest has ``signedUrls: true``): Zendesk POSTs a ZAF JWT in the
form field ``token`` on the sidebar page's first request. ``SignedUrls`` verifies it with the
app's public key and issues the gateway's own short-lived session token for the page's later
lookups. It never trusts a token it could not verify, and never accepts an algorithm but RS256.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from console_adapters.adapter import Event, Rejected, check_fresh, header, same, trigger_event

SIGNATURE = "x-zendesk-webhook-signature"
SIGNATURE_TIMESTAMP = "x-zendesk-webhook-signature-timestamp"


def sign(secret: str, stamp: str, body: bytes) -> str:
    """The X-Zendesk-Webhook-Signature value Zendesk sends for this timestamp and body."""
    mac = hmac.new(secret.encode("utf-8"), stamp.encode("utf-8") + body, hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


class ZendeskAdapter:
    """Zendesk Support webhooks (trigger → "Notify active webhook")."""

    name = "zendesk"

    def __init__(
        self,
        signing_secret: str,
        *,
        tolerance: timedelta = timedelta(minutes=5),
        external_id_prefix: str = "",
    ) -> None:
        if not signing_secret:
            raise ValueError("the Zendesk webhook's signing secret is required")
        self._secret = signing_secret
        self._tolerance = tolerance
        self._prefix = external_id_prefix

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        stamp = header(headers, SIGNATURE_TIMESTAMP)
        given = header(headers, SIGNATURE)
        try:
            sent = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            raise Rejected(401, SIGNATURE_TIMESTAMP, "not an ISO-8601 time") from None
        check_fresh(sent, now, self._tolerance, SIGNATURE_TIMESTAMP)
        if not same(sign(self._secret, stamp, body).encode(), given.encode()):
            raise Rejected(401, SIGNATURE, "does not match the body (wrong secret?)")

    def parse(self, headers: Mapping[str, str], body: bytes) -> Event:
        return trigger_event(self.name, body, solved={"solved"}, external_id_prefix=self._prefix)


def public_key(pem: str) -> rsa.RSAPublicKey:
    """The app's RSA public key from PEM text; ValueError saying what is wrong with it."""
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError, TypeError) as exc:
        raise ValueError(f"not a PEM public key ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("must be an RSA public key (Zendesk signs with RS256)")
    return key


# The ZAF JWT, as Zendesk documents it ("Building a server-side app, Part 5: Securing the app",
# developer.zendesk.com/documentation/apps/build-an-app/building-a-server-side-app/
# part-5-secure-the-app): signed RS256 with the app's key pair; verified with the app's public
# key and the audience, which is the installation's URL
# https://<subdomain>.zendesk.com/api/v2/apps/installations/<installation id>.json.
# `iss` is the account's host, <subdomain>.zendesk.com, as verifiers in use check it (some
# write it with https://; both are taken). `exp` and `iat` are required.
_SIGNED_ALGORITHMS = ["RS256"]
_SESSION_ALGORITHM = "HS256"
_SESSION_ISSUER = "offerdesk-gateway"
_SESSION_AUDIENCE = "offerdesk:zendesk-sidebar"


class SignedUrls:
    """Zendesk's signed sidebar requests in, the gateway's own sidebar sessions out."""

    def __init__(
        self,
        key: rsa.RSAPublicKey,
        audience: str,
        session_key: bytes,
        *,
        session_ttl: timedelta = timedelta(minutes=30),
        leeway: timedelta = timedelta(seconds=30),
    ) -> None:
        host = urlsplit(audience).hostname
        if not audience.startswith("https://") or not host:
            raise ValueError("app_audience: must be the installation's https:// URL")
        self._key = key
        self._audience = audience
        self._issuers = (host, f"https://{host}")
        self._session_key = session_key
        self._session_ttl = session_ttl
        self._leeway = leeway

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a ZAF JWT, or Rejected(401) naming what failed. Times are checked
        against this host's clock (keep it in sync), with ``leeway`` either side."""
        if not token:
            raise Rejected(401, "token", "missing: the app must be installed with signedUrls")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=_SIGNED_ALGORITHMS,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "aud", "iss"]},
            )
        except jwt.PyJWTError as exc:
            raise _rejected(exc, "zendesk.app_public_key", "zendesk.app_audience") from None
        if claims["iss"] not in self._issuers:
            raise Rejected(401, "token.iss", f"not {self._issuers[0]} (zendesk.app_audience)")
        return claims

    def session(self, claims: Mapping[str, Any], now: datetime) -> str:
        """The gateway's own token for the page's later lookups: short-lived, HMAC-signed."""
        issued = int(now.timestamp())
        return jwt.encode(
            {
                "iss": _SESSION_ISSUER,
                "aud": _SESSION_AUDIENCE,
                "sub": str(claims.get("sub", "")),
                "iat": issued,
                "exp": issued + int(self._session_ttl.total_seconds()),
            },
            self._session_key,
            algorithm=_SESSION_ALGORITHM,
        )

    def check_session(self, token: str) -> None:
        """Rejected(401, "authorization", …) unless ``token`` is a live session of ours."""
        try:
            jwt.decode(
                token,
                self._session_key,
                algorithms=[_SESSION_ALGORITHM],
                audience=_SESSION_AUDIENCE,
                issuer=_SESSION_ISSUER,
                options={"require": ["exp", "iat"]},
            )
        except jwt.ExpiredSignatureError:
            raise Rejected(401, "authorization", "the sidebar session has expired") from None
        except jwt.PyJWTError:
            raise Rejected(401, "authorization", "not a sidebar session of this gateway") from None


def _rejected(exc: jwt.PyJWTError, key_setting: str, audience_setting: str) -> Rejected:
    """A PyJWT refusal as the field and problem the caller sees (most specific first)."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return Rejected(401, "token.exp", "expired")
    if isinstance(exc, jwt.ImmatureSignatureError):
        return Rejected(401, "token.iat", "issued in the future")
    if isinstance(exc, jwt.InvalidIssuedAtError):
        return Rejected(401, "token.iat", "must be a number of seconds")
    if isinstance(exc, jwt.InvalidAudienceError):
        return Rejected(401, "token.aud", f"not this installation ({audience_setting})")
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return Rejected(401, f"token.{exc.claim}", "missing")
    if isinstance(exc, jwt.InvalidSignatureError):
        return Rejected(401, "token", f"signature does not verify with {key_setting}")
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return Rejected(401, "token", f"must be signed {' or '.join(_SIGNED_ALGORITHMS)}")
    if isinstance(exc, jwt.DecodeError):
        return Rejected(401, "token", "not a JWT")
    return Rejected(401, "token", str(exc))


__all__ = ["SIGNATURE", "SIGNATURE_TIMESTAMP", "SignedUrls", "ZendeskAdapter", "public_key", "sign"]
