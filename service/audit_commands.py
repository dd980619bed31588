"""`offerdesk audit` commands for proofs: verify, pubkey, rotate-key, prove, consistency,
check-proof, export, status.

Each works on the files when the service is stopped and through the running service's audit
API when it holds the log (DuckDB allows one process per file). Exit codes: 0 good, 1 the
log or proof does not verify, 2 bad input or unreadable file, 3 the log is held and the
service cannot be reached.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from google.protobuf.timestamp_pb2 import Timestamp

from audit.checkpoint import CheckpointLog, KeyRing, SignedCheckpoint, VerifierKey
from audit.errors import AuditError, AuditLocked
from service.cli import ConfigOpt, DataDirOpt, _settings, audit_app, console, err
from service.settings import Settings

T = TypeVar("T")

OutOpt = Annotated[
    Path | None, typer.Option("--out", help="Write the document here instead of printing it.")
]
PubkeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--pubkey",
        help="Verifier keys, one per line (`offerdesk audit pubkey`); default: the data dir's.",
    ),
]


def _keys(settings: Settings) -> KeyRing:
    return KeyRing.open(settings.signing_key_dir, settings.audit.origin)


def _verifier_keys(settings: Settings, pubkey: Path | None) -> list[VerifierKey]:
    if pubkey is None:
        if not settings.signing_key_dir.exists():
            err.print(
                f"[red]no signing keys at {settings.signing_key_dir}[/red]: pass --pubkey with "
                "the keys `offerdesk audit pubkey` printed"
            )
            raise typer.Exit(2)
        return _keys(settings).verifier_keys()
    try:
        lines = [line.strip() for line in pubkey.read_text().splitlines()]
        return [VerifierKey.parse(line) for line in lines if line and not line.startswith("#")]
    except (OSError, ValueError) as e:
        err.print(f"[red]--pubkey {pubkey}: {e}[/red]")
        raise typer.Exit(2) from None


def _checkpoints(path: Path, keys: Sequence[VerifierKey]) -> list[SignedCheckpoint]:
    try:
        return CheckpointLog.read(path, keys)
    except AuditError as e:
        err.print(f"[red]✗[/red] {path}: {e}")
        raise typer.Exit(1) from None
    except OSError as e:
        err.print(f"[red]--checkpoints {path}: {e}[/red]")
        raise typer.Exit(2) from None


def _emit(document: Any, out: Path | None) -> None:
    from audit.proofs import dumps

    text = dumps(document)
    if out is None:
        console.print_json(text)
    else:
        out.write_text(text)
        console.print(f"wrote {out}")


def live(settings: Settings, method: str, request: Any) -> Any:
    """Ask the running service (it holds the log); exit 3 when it does not answer."""
    from service.audit_client import AuditApiError, call
    from service.errors import Unavailable

    try:
        document, seq = call(settings, method, request)
    except Unavailable as e:
        err.print(f"[yellow]{e}[/yellow]")
        raise typer.Exit(3) from None
    except AuditApiError as e:
        err.print(f"[red]audit API: {e}[/red]")
        raise typer.Exit(1 if "NOT_FOUND" in str(e) else 2) from None
    err.print(f"[dim]answered by the running service (access logged as record {seq})[/dim]")
    return document


def timestamp(at: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp for an aware datetime (None stays None: the field is unset)."""
    if at is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(at.astimezone(UTC).replace(tzinfo=None))
    return ts


def _file_or_live(
    settings: Settings, offline: Callable[[], T], method: str, request: Any
) -> T | Any:
    try:
        return offline()
    except AuditLocked:
        return live(settings, method, request)


def checkpoints_for(
    settings: Settings, checkpoints: Path | None, pubkey: Path | None
) -> list[SignedCheckpoint]:
    """The signed checkpoints `verify` checks against: given, or the data dir's if any."""
    path = checkpoints or settings.checkpoint_path
    if not path.exists():
        if checkpoints is not None:
            err.print(f"[red]--checkpoints {checkpoints}: no such file[/red]")
            raise typer.Exit(2)
        return []
    return _checkpoints(path, _verifier_keys(settings, pubkey))


def segment_inputs(
    segment: Path, checkpoints: Path | None, pubkey: Path | None
) -> tuple[Path, Path, Path]:
    """An export segment's records, checkpoints and keys, after checking its manifest."""
    from audit.export import CHECKPOINTS, KEYS, RECORDS, check_manifest

    try:
        check_manifest(segment)
    except AuditError as e:
        err.print(f"[red]✗[/red] {e}")
        raise typer.Exit(1) from None
    return segment / RECORDS, checkpoints or segment / CHECKPOINTS, pubkey or segment / KEYS


def live_segment(settings: Settings) -> Path:
    """Ask the running service to seal and export its log; the segment's directory."""
    from offerdesk.v1 import audit_pb2 as apb

    err.print("[dim]the service holds the log: verifying a sealed segment it exports[/dim]")
    manifest = live(settings, "Export", apb.ExportRequest())
    return Path(manifest["path"])


@audit_app.command("pubkey")
def audit_pubkey(config: ConfigOpt = None, data_dir: DataDirOpt = None, out: OutOpt = None) -> None:
    """Print the public keys that verify this log's checkpoints (all of them, oldest first)."""
    settings = _settings(config, data_dir)
    text = "".join(f"{key}\n" for key in _keys(settings).verifier_keys())
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        console.print(f"wrote {out}")


@audit_app.command("rotate-key")
def audit_rotate_key(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Make a new signing key the active one; old keys stay, so old checkpoints verify."""
    settings = _settings(config, data_dir)
    key = _keys(settings).rotate()
    console.print(
        f"new signing key {key.key_id} is active; publish its public key:\n{key.public()}"
    )


@audit_app.command("prove")
def audit_prove(
    decision_id: Annotated[str, typer.Argument(help="The decision to prove.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    out: OutOpt = None,
) -> None:
    """An inclusion proof of one decision against the signed checkpoint that seals it."""
    from offerdesk.v1 import audit_pb2 as apb

    settings = _settings(config, data_dir)

    def offline() -> dict[str, Any]:
        from audit.proofs import inclusion_document

        with _read_only(settings) as log:
            record = log.decision(decision_id)
            signed = _checkpoints(settings.checkpoint_path, _keys(settings).verifier_keys())
            covering = next((s for s in signed if s.checkpoint.size > record.seq), None)
            if covering is None:
                err.print(
                    f"[red]decision {decision_id} (record {record.seq}) is after the last "
                    "signed checkpoint[/red]: start the service (it seals the log on start) "
                    "and ask again"
                )
                raise typer.Exit(1)
            return inclusion_document(record, log.hashes(covering.checkpoint.size), covering)

    _emit(_file_or_live(settings, offline, "Prove", apb.ProveRequest(decision_id=decision_id)), out)


@audit_app.command("consistency")
def audit_consistency(
    old_size: Annotated[int, typer.Argument(help="Size of the earlier checkpoint.", min=0)],
    new_size: Annotated[
        int, typer.Argument(help="Size of the later checkpoint (0: the newest).", min=0)
    ] = 0,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    out: OutOpt = None,
) -> None:
    """A proof that a later checkpoint's log extends an earlier one's."""
    from offerdesk.v1 import audit_pb2 as apb

    settings = _settings(config, data_dir)

    def offline() -> dict[str, Any]:
        from audit.proofs import consistency_document

        signed = _checkpoints(settings.checkpoint_path, _keys(settings).verifier_keys())
        by_size = {s.checkpoint.size: s for s in signed}
        new = new_size or (signed[-1].checkpoint.size if signed else 0)
        for name, size in (("OLD_SIZE", old_size), ("NEW_SIZE", new)):
            if size not in by_size:
                known = ", ".join(str(s) for s in sorted(by_size)) or "none"
                err.print(f"[red]{name}: no checkpoint of size {size}[/red] (sizes: {known})")
                raise typer.Exit(2)
        if old_size > new:
            err.print("[red]OLD_SIZE must not exceed NEW_SIZE[/red]")
            raise typer.Exit(2)
        with _read_only(settings) as log:
            return consistency_document(by_size[old_size], by_size[new], log.hashes(new))

    request = apb.ConsistencyRequest(old_size=old_size, new_size=new_size)
    _emit(_file_or_live(settings, offline, "Consistency", request), out)


@audit_app.command("check-proof")
def audit_check_proof(
    proof: Annotated[Path, typer.Argument(help="A proof document (JSON).", exists=True)],
    pubkey: PubkeyOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Check an inclusion or consistency proof with nothing but the public keys."""
    from audit.merkle import ProofError
    from audit.proofs import CheckedInclusion, check_document

    settings = _settings(config, data_dir)
    keys = _verifier_keys(settings, pubkey)
    try:
        document = json.loads(proof.read_text())
    except ValueError as e:
        err.print(f"[red]{proof}: not JSON: {e}[/red]")
        raise typer.Exit(2) from None
    try:
        checked = check_document(document, keys)
    except (ProofError, AuditError, ValueError) as e:
        err.print(f"[red]✗[/red] {proof}: {e}")
        raise typer.Exit(1) from None
    if isinstance(checked, CheckedInclusion):
        body = checked.record.get("body", {})
        what = body.get("decision_id") or checked.record.get("kind")
        console.print(
            f"[green]✓[/green] record {checked.seq} ({what}) is in log {checked.origin} as "
            f"signed at size {checked.tree_size:,}"
        )
    else:
        console.print(
            f"[green]✓[/green] log {checked.origin} at size {checked.new_size:,} extends "
            f"its checkpoint at size {checked.old_size:,}"
        )


@audit_app.command("export")
def audit_export(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Directory for segments (default data_dir/exports)."),
    ] = None,
) -> None:
    """Write a sealed segment: Parquet of every sealed record, the checkpoints, a manifest."""
    from offerdesk.v1 import audit_pb2 as apb

    settings = _settings(config, data_dir)
    target = out or settings.export_dir

    def offline() -> dict[str, Any]:
        from audit.export import export_segment

        keys = _keys(settings)
        signed = _checkpoints(settings.checkpoint_path, keys.verifier_keys())
        with _read_only(settings) as log:
            if not signed or signed[-1].checkpoint.size < log.size:
                err.print(
                    f"[yellow]records after the last checkpoint are not exported[/yellow]: "
                    f"{log.size - (signed[-1].checkpoint.size if signed else 0):,} unsealed; "
                    "start the service (it seals on start) to include them"
                )
            manifest = export_segment(log.con, signed, keys.verifier_keys(), target)
        manifest["path"] = str(target / f"segment-{manifest['records']:012d}")
        return manifest

    manifest = _file_or_live(settings, offline, "Export", apb.ExportRequest())
    console.print(
        f"[green]✓[/green] sealed segment of {manifest['records']:,} records at "
        f"{manifest['path']}\n  verify with: cd {manifest['path']} && {manifest['verify']}"
    )


@audit_app.command("status")
def audit_status(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """The running service's log: size, newest checkpoint, unsealed tail, publications."""
    from offerdesk.v1 import audit_pb2 as apb

    settings = _settings(config, data_dir)
    console.print_json(json.dumps(live(settings, "Status", apb.StatusRequest())))


class _ReadOnlyLog:
    """The audit file opened read-only (raises AuditLocked while the service holds it)."""

    def __init__(self, path: Path) -> None:
        from audit.store import connect

        if not path.exists():
            err.print(f"[red]{path}: no such file[/red]")
            raise typer.Exit(2)
        self.con = connect(path, read_only=True)

    def __enter__(self) -> _ReadOnlyLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.con.close()

    @property
    def size(self) -> int:
        row = self.con.execute("SELECT count(*) FROM audit_records").fetchone()
        return int(row[0]) if row else 0

    def hashes(self, size: int) -> list[bytes]:
        rows = self.con.execute(
            "SELECT hash FROM audit_records WHERE seq < ? ORDER BY seq", [size]
        ).fetchall()
        return [bytes(row[0]) for row in rows]

    def decision(self, decision_id: str) -> Any:
        from audit.store import _SELECT, _stored

        row = self.con.execute(
            f"{_SELECT} WHERE kind = 'decision' AND ref = ? ORDER BY seq LIMIT 1", [decision_id]
        ).fetchone()
        if row is None:
            err.print(
                f"[red]decision_id: no decision {decision_id} in the log[/red] (or it is past "
                "its retention period: `audit query retention_cuts`)"
            )
            raise typer.Exit(1)
        return _stored(row)


def _read_only(settings: Settings) -> _ReadOnlyLog:
    return _ReadOnlyLog(settings.audit_path)


@audit_app.command("cut")
def audit_cut(
    requested_by: Annotated[
        str,
        typer.Option("--requested-by", help="Operator id of who asked (no name, no email)."),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what is due per kind; change nothing.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Apply the retention periods in settings (audit.retention_days) now: chain a
    `retention` record and remove the content of every record past its kind's period (its
    place in the chain stays, so every proof and checkpoint still verifies), then seal."""
    from offerdesk.v1 import audit_pb2 as apb

    from audit.checkpointer import Checkpointer
    from audit.store import AuditStore
    from service import retention
    from service.errors import CatalogError, ModelError, OfferDeskError
    from service.registry import Registry
    from service.server import _publishers

    settings = _settings(config, data_dir)
    days = settings.audit.retention_days
    if not days:
        err.print(
            "[yellow]audit.retention_days is empty[/yellow]: every record is kept, so there is "
            "nothing to cut (docs/compliance.md#retention)"
        )
        raise typer.Exit(2)
    if not settings.audit_path.exists():
        err.print(f"[red]✗[/red] {settings.audit_path}: no such file (--data-dir?)")
        raise typer.Exit(2)
    periods = ", ".join(f"{kind} {n} days" for kind, n in sorted(days.items()))
    if (
        not dry_run
        and not yes
        and not typer.confirm(
            f"Remove the content of records older than their retention ({periods})? "
            "This cannot be undone.",
            err=True,
        )
    ):
        err.print("nothing was changed")
        raise typer.Exit(1)
    try:
        store = AuditStore.open(settings.audit_path)
    except AuditLocked:
        request = apb.CutRetentionRequest(requested_by=requested_by, dry_run=dry_run)
        _show_cut(live(settings, "CutRetention", request), periods, as_json)
        return
    except AuditError as e:
        err.print(f"[red]✗[/red] {settings.audit_path}: {e}")
        raise typer.Exit(2) from None
    try:
        contact = None
        try:  # the catalog only: decisions and outcomes must outlive its contact windows
            registry = Registry(settings.registry_dir)
            contact = registry.load_catalog(registry.active().catalog).policy.contact
        except (ModelError, CatalogError):
            pass
        checkpointer = None
        if not dry_run:  # seals what is unsealed now, and the cut record on close
            checkpointer = Checkpointer.start(
                store,
                _keys(settings),
                settings.checkpoint_path,
                _publishers(settings),
                every_records=10**9,
                every_seconds=10**9,
            )
        try:
            summary = retention.cut(
                store, days, requested_by, datetime.now(UTC), contact, dry_run=dry_run
            )
        finally:
            if checkpointer is not None:
                checkpointer.close()
    except OfferDeskError as e:
        err.print(f"[red]✗[/red] {e}; nothing was changed")
        raise typer.Exit(2) from None
    except AuditError as e:
        err.print(f"[red]✗[/red] retention cut failed: {e}; nothing was cut")
        raise typer.Exit(2) from None
    finally:
        store.close()
    _show_cut(summary.to_json(), periods, as_json)


def _show_cut(result: dict[str, Any], periods: str, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    kinds = ", ".join(f"{kind} {n:,}" for kind, n in result["count_by_kind"].items())
    if result["dry_run"]:
        console.print(f"due now under {periods}: {result['count']:,} records ({kinds})")
        return
    console.print(
        f"[green]✓[/green] cut {result['count']:,} records ({kinds}); `retention` record at seq "
        f"{result['audit_sequence']}, sealed by a new checkpoint"
    )
