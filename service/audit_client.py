"""Client of the running service's audit API, for the `offerdesk audit` commands.

When the service holds the DuckDB file, the commands ask it instead (same settings, so the
same address and token). Answers are the JSON documents the API returns.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from offerdesk.v1 import audit_pb2 as apb
from offerdesk.v1 import audit_pb2_grpc as apb_grpc

from service import tls
from service.errors import OfferDeskError, Unavailable
from service.settings import Settings

#: generous: Export of a large log writes Parquet before it answers
_TIMEOUT_SECONDS = 300.0
#: the methods of the AuditAdmin service (the admin token); every other is Audit's
ADMIN_METHODS = frozenset(apb.DESCRIPTOR.services_by_name["AuditAdmin"].methods_by_name)


class AuditApiError(OfferDeskError):
    """The audit API answered with an error status; the message is the server's."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code


def call(settings: Settings, method: str, request: Any) -> tuple[Any, int]:
    """Call one Audit (or AuditAdmin) method on the service at settings.listen; return
    (document, audit seq of the call's record)."""
    admin = method in ADMIN_METHODS
    token = (settings.audit_admin_token() if admin else settings.audit_api_token()).decode()
    with tls.channel(settings.listen, settings.client_tls) as channel:
        stub: Any = apb_grpc.AuditAdminStub(channel) if admin else apb_grpc.AuditStub(channel)
        try:
            response: apb.JsonResult = getattr(stub, method)(
                request,
                metadata=[("authorization", f"Bearer {token}")],
                timeout=_TIMEOUT_SECONDS,
            )
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = exc.details() if hasattr(exc, "details") else str(exc)
            if code == grpc.StatusCode.UNAVAILABLE:
                raise Unavailable(
                    f"the audit log is held by a process, but no offerdesk service answers "
                    f"on {settings.listen}: {details}"
                ) from None
            raise AuditApiError(code, details or "") from None
    return json.loads(response.json), response.audit_sequence
