"""TLS and mTLS on the gRPC port, with certificates made here (a throwaway CA)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from adapter_kit import free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service import tls
from service.errors import Unavailable
from service.server import start
from service.settings import load_settings


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    usage: ExtendedKeyUsageOID | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name = (
        name if issuer is None else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])])
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            False,
        ).add_extension(x509.ExtendedKeyUsage([usage]), False)
    return builder.sign(key if issuer is None else issuer[1], hashes.SHA256())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, other_key = _key(), _key()
    ca = _cert("offerdesk test CA", ca_key, None)
    other = _cert("someone else's CA", other_key, None)
    server_key, client_key = _key(), _key()
    server = _cert(
        "offerdesk", server_key, ("offerdesk test CA", ca_key), ExtendedKeyUsageOID.SERVER_AUTH
    )
    client = _cert(
        "gateway", client_key, ("offerdesk test CA", ca_key), ExtendedKeyUsageOID.CLIENT_AUTH
    )
    pem = serialization.Encoding.PEM
    return Pki(
        _write(d / "ca.pem", ca.public_bytes(pem)),
        _write(d / "server.pem", server.public_bytes(pem)),
        _write(d / "server.key", _pem_key(server_key)),
        _write(d / "client.pem", client.public_bytes(pem)),
        _write(d / "client.key", _pem_key(client_key)),
        _write(d / "other-ca.pem", other.public_bytes(pem)),
    )


def _healthy(target: str, client: tls.ClientTls | None) -> bool:
    with tls.channel(target, client) as ch:
        try:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            return True
        except grpc.RpcError:
            return False


def test_tls_serves_only_clients_that_trust_it(pki: Pki, data_dir: Path) -> None:
    server_tls = {"cert_file": pki.server_cert, "key_file": pki.server_key}
    running = start(load_settings(None, data_dir=data_dir, listen="127.0.0.1:0", tls=server_tls))
    target = f"127.0.0.1:{running.port}"
    try:
        assert _healthy(target, tls.ClientTls(ca_file=pki.ca))
        assert not _healthy(target, None)  # plaintext is not spoken
        assert not _healthy(target, tls.ClientTls(ca_file=pki.other_ca))  # wrong CA
    finally:
        running.stop()


def test_mtls_requires_a_client_certificate_from_its_ca(pki: Pki, data_dir: Path) -> None:
    server_tls = {
        "cert_file": pki.server_cert,
        "key_file": pki.server_key,
        "client_ca_file": pki.ca,
    }
    port = free_port()
    running = start(
        load_settings(None, data_dir=data_dir, listen=f"127.0.0.1:{port}", tls=server_tls)
    )
    target = f"127.0.0.1:{port}"
    try:
        assert not _healthy(target, tls.ClientTls(ca_file=pki.ca))  # no client certificate
        with_cert = tls.ClientTls(
            ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key
        )
        assert _healthy(target, with_cert)
        # offerdesk's own commands reach it through client_tls (here: the audit API).
        env = {
            **os.environ,
            "OFFERDESK_LISTEN": target,
            "OFFERDESK_CLIENT_TLS__CA_FILE": str(pki.ca),
            "OFFERDESK_CLIENT_TLS__CERT_FILE": str(pki.client_cert),
            "OFFERDESK_CLIENT_TLS__KEY_FILE": str(pki.client_key),
        }
        out = subprocess.run(
            [sys.executable, "-m", "service.cli", "audit", "status", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            env=env,
        )
        assert out.returncode == 0, out.stderr
        assert "answered by the running service" in out.stderr
    finally:
        running.stop()


def test_an_unreadable_tls_file_stops_the_start_naming_it(pki: Pki, data_dir: Path) -> None:
    settings = load_settings(
        None,
        data_dir=data_dir,
        listen="127.0.0.1:0",
        tls={"cert_file": pki.server_cert, "key_file": data_dir / "missing.key"},
    )
    with pytest.raises(Unavailable, match=r"tls\.key_file: cannot read"):
        start(settings)
    # Nothing was left open: the same data directory starts in plaintext at once.
    start(load_settings(None, data_dir=data_dir, listen="127.0.0.1:0")).stop()


def test_the_gateway_serves_https_and_calls_a_tls_service(pki: Pki, data_dir: Path) -> None:
    import ssl
    import threading
    import time

    import httpx
    import uvicorn

    from console_adapters.gateway import GatewaySettings, create_app, uvicorn_options

    server_tls = {"cert_file": pki.server_cert, "key_file": pki.server_key}
    running = start(load_settings(None, data_dir=data_dir, listen="127.0.0.1:0", tls=server_tls))

    def health(service_ca: Path) -> httpx.Response:
        port = free_port()
        settings = GatewaySettings(
            listen=f"127.0.0.1:{port}",
            service=f"127.0.0.1:{running.port}",
            data_dir=data_dir,
            generic=[{"name": "acme", "secret": "whsec_" + "A" * 32}],
            tls={"cert_file": pki.server_cert, "key_file": pki.server_key},
            service_tls={"ca_file": service_ca},
        )
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            **uvicorn_options(settings),
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            while not server.started:
                time.sleep(0.01)
            # The gateway's certificate is checked against the CA, over HTTPS only.
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            trust = ssl.create_default_context(cafile=str(pki.ca))
            return httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trust, timeout=10)
        finally:
            server.should_exit = True
            thread.join(10)

    try:
        ok = health(pki.ca)
        assert ok.status_code == 200 and ok.json()["service"] == "SERVING"
        # A gateway that does not trust the service's certificate cannot reach it.
        refused = health(pki.other_ca)
        assert refused.status_code == 503 and refused.json()["service"].startswith("unreachable")
    finally:
        running.stop()
