"""The audit API: compliance reads of the running service's log, authenticated and logged.

DuckDB allows no second process on the file, so while the service runs this is how the
named views, `why`, proofs and sealed exports are reached. Each call checks the bearer token
in constant time, does its read on the store's own reader connection, then appends an
`audit_access` record (who, what, how many rows) and answers only once that is durable.
It must never write anything but that record, and never log or echo the token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc
from offerdesk.v1 import audit_pb2 as apb
from offerdesk.v1 import audit_pb2_grpc as apb_grpc

from audit.checkpoint import CheckpointLog, KeyRing, SignedCheckpoint
from audit.checkpointer import Checkpointer
from audit.export import export_segment
from audit.proofs import consistency_document, inclusion_document
from audit.records import NewRecord, encode_time
from audit.views import catalog_versions, install_views, query_view
from audit.why import document, why
from service.compliance import contact_caps
from service.desk import Desk
from service.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from service.status import grpc_errors

log = logging.getLogger("offerdesk.audit")

#: rows a Query answers at most (a compliance question, not a bulk export: use Export)
MAX_ROWS = 10_000


@dataclass(frozen=True)
class AuditContext:
    """What the audit API reads: the desk's store and vault, the keys and checkpoints."""

    desk: Desk
    keys: KeyRing
    checkpointer: Checkpointer
    checkpoint_path: Path
    export_dir: Path
    registry_dir: Path
    token: bytes


def token_id(token: bytes) -> str:
    """A short, non-secret name for a token, for the access log (never the token itself)."""
    return "tok_" + hashlib.sha256(b"offerdesk audit token\x00" + token).hexdigest()[:12]


def authenticate(context: grpc.ServicerContext, token: bytes, setting: str) -> None:
    """Raise Unauthenticated unless the call carries `authorization: Bearer <token>`."""
    presented = b""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            presented = value.removeprefix("Bearer ").strip().encode()
    if not hmac.compare_digest(presented, token):
        raise Unauthenticated(f"authorization: send `authorization: Bearer <{setting}>` metadata")


class AuditServicer(apb_grpc.AuditServicer):
    """Thin shell: authenticate, read, log the access, answer."""

    def __init__(
        self, ctx: AuditContext, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.ctx = ctx
        self.clock = clock
        self._caller = token_id(ctx.token)

    # -- plumbing -------------------------------------------------------------------------
    def _authenticate(self, context: grpc.ServicerContext) -> None:
        authenticate(context, self.ctx.token, "audit.api_token")

    def _answer(
        self, method: str, arguments: dict[str, Any], result: Any, rows: int
    ) -> apb.JsonResult:
        record = NewRecord(
            "audit_access",
            self.clock(),
            None,
            None,
            {
                "method": method,
                "caller": self._caller,
                "arguments": arguments,
                "rows": rows,
            },
        )
        stored = self.ctx.desk.store.append([record])[0]
        return apb.JsonResult(
            json=json.dumps(result, sort_keys=True, ensure_ascii=False),
            audit_sequence=stored.seq,
        )

    def _signed(self) -> list[SignedCheckpoint]:
        return CheckpointLog.read(self.ctx.checkpoint_path, self.ctx.keys.verifier_keys())

    # -- methods --------------------------------------------------------------------------
    def Status(self, request: apb.StatusRequest, context: grpc.ServicerContext) -> Any:
        with grpc_errors(context):
            self._authenticate(context)
            head = self.ctx.desk.store.tree_head()
            status = self.ctx.checkpointer.status()
            latest = status.latest
            result = {
                "records": head.size,
                "chain_head": head.chain_head.hex(),
                "root": head.root.hex(),
                "latest_checkpoint": None
                if latest is None
                else {
                    "size": latest.size,
                    "root": latest.root.hex(),
                    "signed_at": encode_time(latest.time),
                },
                "unsealed": status.unsealed,
                "publications": [
                    {"name": p.name, "published_size": p.published_size, "error": p.last_error}
                    for p in status.publications
                ],
                "keys": [str(key) for key in self.ctx.keys.verifier_keys()],
            }
            return self._answer("Status", {}, result, 1)

    def Prove(self, request: apb.ProveRequest, context: grpc.ServicerContext) -> Any:
        with grpc_errors(context):
            self._authenticate(context)
            if not request.decision_id:
                raise InvalidArgument("decision_id", "required")
            record = self.ctx.desk.find_decision(decision_id=request.decision_id)
            covering = self._covering(record.seq)
            hashes = self.ctx.desk.store.chain_hashes(covering.checkpoint.size)
            document = inclusion_document(record, hashes, covering)
            return self._answer("Prove", {"decision_id": request.decision_id}, document, 1)

    def _covering(self, seq: int) -> SignedCheckpoint:
        """The oldest checkpoint that seals record ``seq``, sealing now if none does yet."""
        for signed in self._signed():
            if signed.checkpoint.size > seq:
                return signed
        sealed = self.ctx.checkpointer.seal()
        if sealed is None or sealed.checkpoint.size <= seq:  # pragma: no cover - seq committed
            raise FailedPrecondition(f"record {seq} is not sealed by any checkpoint yet")
        return sealed

    def Consistency(self, request: apb.ConsistencyRequest, context: grpc.ServicerContext) -> Any:
        with grpc_errors(context):
            self._authenticate(context)
            signed = self._signed()
            by_size = {s.checkpoint.size: s for s in signed}
            if not signed:
                raise FailedPrecondition("no checkpoint has been signed yet")
            new_size = request.new_size or signed[-1].checkpoint.size
            for name, size in (("old_size", request.old_size), ("new_size", new_size)):
                if size not in by_size:
                    raise InvalidArgument(name, f"no checkpoint of size {size}")
            if request.old_size > new_size:
                raise InvalidArgument("old_size", "must not exceed new_size")
            hashes = self.ctx.desk.store.chain_hashes(new_size)
            document = consistency_document(by_size[request.old_size], by_size[new_size], hashes)
            arguments = {"old_size": request.old_size, "new_size": new_size}
            return self._answer("Consistency", arguments, document, 1)

    def Export(self, request: apb.ExportRequest, context: grpc.ServicerContext) -> Any:
        with grpc_errors(context):
            self._authenticate(context)
            self.ctx.checkpointer.seal()
            signed = self._signed()
            cursor = self.ctx.desk.store.reader()
            try:
                manifest = export_segment(
                    cursor, signed, self.ctx.keys.verifier_keys(), self.ctx.export_dir
                )
            finally:
                cursor.close()
            size = manifest["records"]
            manifest["path"] = str(self.ctx.export_dir / f"segment-{size:012d}")
            return self._answer("Export", {}, manifest, size)

    def Why(self, request: apb.WhyRequest, context: grpc.ServicerContext) -> Any:
        with grpc_errors(context):
            self._authenticate(context)
            if not request.customer_id:
                raise InvalidArgument("customer_id", "required")
            pseudonym = self.ctx.desk.vault.lookup(request.customer_id)
            if pseudonym is None:
                raise NotFound("customer_id: no such customer in the pseudonym map (or erased)")
            offer = request.offer_id or None
            since = _time(request, "since")
            until = _time(request, "until")
            cursor = self.ctx.desk.store.reader()
            try:
                decisions = why(cursor, [pseudonym], offer, since, until)
            except ValueError as e:
                raise InvalidArgument("since", str(e)) from None
            finally:
                cursor.close()
            result = document(decisions, [pseudonym], offer, since, until)
            # The access record names the pseudonym, never the customer id.
            arguments = {k: result[k] for k in ("subjects", "offer", "since", "until")}
            return self._answer("Why", arguments, result, len(decisions))

    def Query(self, request: apb.QueryRequest, context: grpc.ServicerContext) -> Any:
        with grpc_errors(context):
            self._authenticate(context)
            limit = min(request.limit or MAX_ROWS, MAX_ROWS)
            cursor = self.ctx.desk.store.reader()
            try:
                caps, _ = contact_caps(self.ctx.registry_dir, catalog_versions(cursor))
                install_views(cursor, caps)
                table = query_view(cursor, request.view, limit=limit)
            except ValueError as e:
                raise InvalidArgument("view", str(e).removeprefix("view: ")) from None
            finally:
                cursor.close()
            arguments = {"view": request.view, "limit": limit}
            return self._answer("Query", arguments, table.document(), len(table.rows))


def _time(request: Any, name: str) -> datetime | None:
    if not request.HasField(name):
        return None
    return cast(datetime, getattr(request, name).ToDatetime(tzinfo=UTC))


class AuditAdminServicer(apb_grpc.AuditAdminServicer):
    """Erasure and retention cuts through the running service: the offline commands' code."""

    def __init__(
        self,
        desk: Desk,
        admin_token: bytes,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        retention_days: Mapping[str, int] | None = None,
        seal: Callable[[], object] | None = None,
    ) -> None:
        self.desk = desk
        self.token = admin_token
        self.clock = clock
        self.retention_days = dict(retention_days or {})
        self.seal = seal  # signs a checkpoint right after a cut

    def Erase(self, request: apb.EraseRequest, context: grpc.ServicerContext) -> Any:
        with grpc_errors(context):
            authenticate(context, self.token, "audit.admin_token")
            result = self.desk.erase(request.customer_id, request.requested_by, self.clock())
            return apb.JsonResult(
                json=json.dumps(result.to_json(), sort_keys=True),
                audit_sequence=result.audit_sequence or 0,
            )

    def CutRetention(self, request: apb.CutRetentionRequest, context: grpc.ServicerContext) -> Any:
        with grpc_errors(context):
            authenticate(context, self.token, "audit.admin_token")
            summary = self.desk.cut(
                self.retention_days, request.requested_by, self.clock(), dry_run=request.dry_run
            )
            if not summary.dry_run and self.seal is not None:
                self.seal()
            return apb.JsonResult(
                json=json.dumps(summary.to_json(), sort_keys=True),
                audit_sequence=summary.audit_sequence or 0,
            )
