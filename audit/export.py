"""Sealed segments: the records a signed checkpoint covers, as Parquet, with the proof of them.

A segment directory holds `records.parquet` (records 0..size-1 in seq order, the table's
columns), `checkpoints.jsonl` (every signed checkpoint up to that size), `keys.txt` (the
public keys) and `manifest.json` (sizes, the SHA-256 of each file, the covering checkpoint
and the command that verifies it). Any DuckDB reads it while the service keeps writing the
log. It must never include a record the covering checkpoint does not seal, and never leave
a half-written segment under its final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from audit.checkpoint import SignedCheckpoint, VerifierKey
from audit.errors import AuditError
from audit.records import canonical_json, encode_time
from audit.store import COLUMNS, TABLE

FORMAT = "offerdesk-audit-export/1"
RECORDS = "records.parquet"
CHECKPOINTS = "checkpoints.jsonl"
KEYS = "keys.txt"
MANIFEST = "manifest.json"


def export_segment(
    con: duckdb.DuckDBPyConnection,
    signed: Sequence[SignedCheckpoint],
    keys: Sequence[VerifierKey],
    out_dir: Path,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Write the segment sealed by the last of ``signed`` under ``out_dir``; return its manifest.

    ``con`` reads the audit table (the service's reader cursor, or the file opened
    read-only). The segment is built in a temporary directory and renamed into place, so
    ``out_dir/<origin-safe name>-<size>`` either is complete or does not exist.
    """
    if not signed:
        raise AuditError("nothing to export: the log has no signed checkpoint yet")
    covering = signed[-1]
    size = covering.checkpoint.size
    out_dir = Path(out_dir)
    final = out_dir / f"segment-{size:012d}"
    if final.exists():
        return json.loads((final / MANIFEST).read_text())
    work = out_dir / f".segment-{size:012d}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        parquet = work / RECORDS
        copied = con.execute(
            f"COPY (SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE seq < {int(size)} "
            f"ORDER BY seq) TO '{_sql_path(parquet)}' (FORMAT parquet)"
        ).fetchone()
        if copied is not None and int(copied[0]) != size:
            raise AuditError(f"export wrote {copied[0]} records, the checkpoint seals {size}")
        # The checkpoint file's own line format (canonical JSON), so it reads back as one.
        (work / CHECKPOINTS).write_bytes(
            b"".join(canonical_json({"note": s.note}) + b"\n" for s in signed)
        )
        (work / KEYS).write_text("".join(f"{key}\n" for key in keys))
        checkpoint = covering.checkpoint
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "origin": checkpoint.origin,
            "records": size,
            "created_at": encode_time(now or datetime.now(UTC)),
            "checkpoint": {
                "size": size,
                "root": checkpoint.root.hex(),
                "chain_head": checkpoint.chain_head.hex(),
                "signed_at": encode_time(checkpoint.time),
            },
            "files": {
                name: {"sha256": _sha256(work / name), "bytes": (work / name).stat().st_size}
                for name in (RECORDS, CHECKPOINTS, KEYS)
            },
            "verify": (
                f"offerdesk audit verify {RECORDS} --checkpoints {CHECKPOINTS} --pubkey {KEYS}"
            ),
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for path in work.iterdir():
            _fsync(path)
        _fsync(work)
        os.replace(work, final)
        _fsync(out_dir)
    except duckdb.Error as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise AuditError(f"cannot export the audit log to {out_dir}: {exc}") from exc
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def check_manifest(segment: Path) -> dict[str, Any]:
    """Read a segment's manifest and check every file's size and SHA-256 against it."""
    try:
        manifest = json.loads((segment / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise AuditError(f"{segment}: cannot read {MANIFEST}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise AuditError(f"{segment}: {MANIFEST} is not an {FORMAT} manifest")
    for name, expected in manifest.get("files", {}).items():
        path = segment / name
        if not path.is_file() or _sha256(path) != expected.get("sha256"):
            raise AuditError(f"{segment}: {name} does not match the manifest (changed?)")
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
