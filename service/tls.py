"""TLS for the gRPC service: the server's credentials and its own clients' channels.

Off by default (the service listens on loopback in plaintext). With `tls` set the server
speaks only TLS; with `tls.client_ca_file` too it requires a client certificate signed by that
CA (mTLS). offerdesk's own commands that call the running service (the audit API client) use
`client_tls`. Files are read when the server starts, so a missing or unreadable one stops the
start with its setting named.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from pydantic import BaseModel, ConfigDict


class ServerTls(BaseModel):
    """The server's certificate chain and key (PEM), and for mTLS the clients' CA."""

    model_config = ConfigDict(extra="forbid")

    cert_file: Path
    key_file: Path
    #: when set, clients must present a certificate signed by this CA (mTLS)
    client_ca_file: Path | None = None


class ClientTls(BaseModel):
    """How a client checks the server (its CA) and, for mTLS, its own certificate and key."""

    model_config = ConfigDict(extra="forbid")

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ValueError(f"{setting}: cannot read {path}: {e.strerror or e}") from None


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    chain = _read(tls.cert_file, "tls.cert_file")
    key = _read(tls.key_file, "tls.key_file")
    if tls.client_ca_file is None:
        return grpc.ssl_server_credentials([(key, chain)])
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=_read(tls.client_ca_file, "tls.client_ca_file"),
        require_client_auth=True,
    )


def channel(target: str, tls: ClientTls | None) -> grpc.Channel:
    """A channel to the service: TLS when `tls` is given, plaintext otherwise."""
    if tls is None:
        return grpc.insecure_channel(target)
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ValueError("client_tls: cert_file and key_file go together (mTLS)")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file, "client_tls.ca_file"),
        private_key=None if tls.key_file is None else _read(tls.key_file, "client_tls.key_file"),
        certificate_chain=None
        if tls.cert_file is None
        else _read(tls.cert_file, "client_tls.cert_file"),
    )
    return grpc.secure_channel(target, credentials)
