"""Crash recovery of the audit log: copy the WAL aside before anything replays it, and check a
log read-only before it is opened for writing again.

DuckDB replays ``<file>.wal`` when the file is opened and drops the WAL at the next checkpoint.
A replay that fails, or one that stops early at a damaged entry (DuckDB 2.0 takes that as the
end of the WAL, silently), must never cost the only copy of committed records. This module must
never delete, move or write a WAL or a database file: it copies, reads, and removes only the
copies it made.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from audit.errors import AuditCorrupt, AuditError
from audit.store import COLUMNS, TABLE, connect

# The walker of audit.verify is the one reference algorithm and can start mid-chain, but has no
# public way in yet (that module is being reworked for checkpoints by its owner).
from audit.verify import VerifyReport, _Bad, _Walk, verify_file

log = logging.getLogger("offerdesk.audit")

QUARANTINE_DIR = "quarantine"
_NOTE = "note.json"
_VERIFIED = "verified.json"
# Copies whose log verified afterwards are kept, newest first, up to this many. They are not
# needed when the replay was complete, but nothing here can prove that it was: DuckDB 2.0
# replays a WAL with a damaged entry up to that entry without an error (measured), and the
# chain cannot see a cut-off tail. Only a signed checkpoint can; until someone has checked
# against one, the copy is the only place those records still exist. Copies of refused
# opens are never removed here.
KEEP_VERIFIED = 10
_FETCH_ROWS = 4096
_DOCS = 'docs/operations.md, "Crash safety and recovery"'


def wal_path(db: Path) -> Path:
    """Where DuckDB keeps the write-ahead log of ``db``."""
    return db.with_name(db.name + ".wal")


@dataclass(frozen=True, slots=True)
class Quarantine:
    """A WAL copied aside (and fsynced) before DuckDB replayed it."""

    dir: Path  # <data_dir>/quarantine/<UTC timestamp>/
    copy: Path  # the copy of the WAL, in dir
    wal: Path  # the WAL it copies
    db: Path
    wal_bytes: int

    def verified(self, size: int, head: bytes) -> None:
        """Note that the log opened and verified after this copy was taken; prune old ones."""
        try:
            _write_json(
                self.dir / _VERIFIED,
                {"size": size, "chain_head": head.hex(), "verified_at": _now_text()},
            )
            _prune(self.dir.parent, keep=KEEP_VERIFIED)
        except OSError as exc:  # the log is fine; only the bookkeeping of copies failed
            log.warning("could not mark %s as verified: %s", self.dir, exc)

    def discard(self) -> None:
        """Remove the copy: it turned out not to be one (the WAL of a live process)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        _fsync_dir(self.dir.parent)


def quarantine_wal(db: Path, reason: str) -> Quarantine | None:
    """Copy ``db``'s WAL into ``<db's directory>/quarantine/<UTC timestamp>/``, if there is one.

    The copy, a note (sizes and modification times of the database and the WAL, the copy's
    SHA-256, the reason) and the directories are fsynced before this returns. Raises
    AuditError, leaving no partial copy behind, when the copy cannot be made (a full disk):
    the caller must not replay the WAL then.
    """
    wal = wal_path(db)
    if not wal.exists():
        return None
    root = db.parent / QUARANTINE_DIR
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = root / stamp
    try:
        created_root = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        target.mkdir()
        copy = target / wal.name
        before = wal.stat()
        digest = _copy_synced(wal, copy)
        after = wal.stat()
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise AuditError(f"{wal} changed while it was copied: is another process using it?")
        note: dict[str, Any] = {
            "reason": reason,
            "copied_at": _now_text(),
            "wal": str(wal),
            "wal_bytes": before.st_size,
            "wal_mtime": _time_text(before.st_mtime),
            "copy_sha256": digest,
            "database": str(db),
            **_file_facts(db, "database"),
        }
        _write_json(target / _NOTE, note)
        _fsync_dir(target)
        _fsync_dir(root)
        if created_root:
            _fsync_dir(root.parent)
    except FileNotFoundError:
        # The WAL went between exists() and the copy: the log was closed cleanly meanwhile.
        shutil.rmtree(target, ignore_errors=True)
        if wal.exists():
            raise
        return None
    except (OSError, AuditError) as exc:
        shutil.rmtree(target, ignore_errors=True)  # only our own partial copy
        raise AuditError(
            f"cannot copy the write-ahead log {wal} aside into {root} ({exc}); it was not "
            "replayed, so it still holds whatever it held. Free space on that volume"
        ) from exc
    log.warning(
        "audit log %s: found its write-ahead log %s (%s bytes, %s); copied it to %s",
        db,
        wal,
        f"{before.st_size:,}",
        reason,
        copy,
    )
    return Quarantine(target, copy, wal, db, before.st_size)


def check_log(db: Path, trusted: tuple[int, bytes] | None) -> tuple[int, bytes]:
    """Check the log read-only and return its (size, chain head); never writes to it.

    With no ``trusted`` head (a start after an unclean shutdown) the whole chain is verified
    (verify_file's single pass, about 0.6 s per 100,000 records of 4 KB measured on 2 cores,
    less than the state rebuild every start already does). With the (size, hash) the
    store last acknowledged, the records up to it must still be there, ending in that hash,
    and every record after it must chain from it (the reference check, row by row). Raises
    AuditCorrupt when records were lost or do not verify, AuditLocked when another process
    holds the file, AuditError when it cannot be opened (a WAL that fails to replay).
    """
    if trusted is None:
        report = verify_file(db)
        if not report.ok:
            raise AuditCorrupt(
                f"audit log {db} does not verify: {report.problem} (the first "
                f"{report.count:,} records are intact)"
            )
        return report.count, report.head_hash
    size, head = trusted
    con = connect(db, read_only=True)
    try:
        return _check_tail(con, db, size, head)
    except duckdb.Error as exc:
        raise AuditCorrupt(f"cannot read audit log {db} back: {exc}") from exc
    finally:
        con.close()


def _check_tail(
    con: duckdb.DuckDBPyConnection, db: Path, size: int, head: bytes
) -> tuple[int, bytes]:
    row = con.execute(f"SELECT count(*), max(seq) FROM {TABLE}").fetchone()
    assert row is not None
    count = int(row[0])
    if count < size:
        raise AuditCorrupt(
            f"DATA LOSS: audit log {db} has {count:,} records after reopening, but "
            f"{size:,} were acknowledged"
        )
    if size:
        found = con.execute(f"SELECT hash FROM {TABLE} WHERE seq = ?", [size - 1]).fetchall()
        if [bytes(r[0]) for r in found] != [head]:
            raise AuditCorrupt(
                f"DATA LOSS: audit log {db}: record {size - 1}, the last one acknowledged, is "
                "missing or not the one written"
            )
    cursor = con.execute(
        f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE seq >= ? ORDER BY seq", [size]
    )
    report = _verify_from(size, head, _rows(cursor))
    if not report.ok:
        raise AuditCorrupt(
            f"audit log {db}: the records after the last acknowledged one ({size - 1}) do not "
            f"verify: {report.problem}"
        )
    if report.count != count:
        raise AuditCorrupt(
            f"audit log {db} has {count:,} records but its seqs are not 0..{count - 1} "
            f"(max {row[1]})"
        )
    return report.count, report.head_hash


def _rows(cursor: duckdb.DuckDBPyConnection) -> Iterator[tuple[Any, ...]]:
    while rows := cursor.fetchmany(_FETCH_ROWS):
        yield from rows


def _verify_from(size: int, head: bytes, rows: Iterable[tuple[Any, ...]]) -> VerifyReport:
    """verify_records, started at a trusted (size, head) instead of the genesis record."""
    walk = _Walk([], size, head)
    try:
        for row in rows:
            walk.row(tuple(row))
    except _Bad as bad:
        return walk._report(bad)
    return walk.report()


def refusal(db: Path, quarantine: Quarantine | None, error: Exception) -> str:
    """What an operator reads when the log was not opened: which files, and what to do."""
    wal = wal_path(db)
    if quarantine is not None:
        kept = (
            f"Its write-ahead log {wal} ({quarantine.wal_bytes:,} bytes) was copied to "
            f"{quarantine.copy} before anything replayed it. Nothing was deleted: keep "
            f"{db}, {wal} and the copy, since the WAL may hold committed records."
        )
    elif wal.exists():
        kept = f"Nothing was deleted: keep {db} and {wal}: the WAL may hold committed records."
    else:
        kept = f"There is no write-ahead log ({wal}); nothing was deleted."
    return (
        f"audit log {db} was not opened: {error} {kept} The service answers UNAVAILABLE "
        "and health NOT_SERVING until it is restarted on a log that opens and verifies. "
        f"Stop it, copy the whole data directory, and follow {_DOCS}."
    )


def _copy_synced(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as src, target.open("xb") as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with path.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _prune(root: Path, keep: int) -> None:
    """Remove verified copies beyond the newest ``keep``; never one that did not verify."""
    verified = sorted(
        (d for d in root.iterdir() if (d / _VERIFIED).is_file()),
        key=lambda d: d.name,
        reverse=True,
    )
    for old in verified[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    if verified[keep:]:
        _fsync_dir(root)


def _file_facts(path: Path, name: str) -> dict[str, Any]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return {f"{name}_bytes": None, f"{name}_mtime": None}
    return {f"{name}_bytes": st.st_size, f"{name}_mtime": _time_text(st.st_mtime)}


def _time_text(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def _now_text() -> str:
    return datetime.now(UTC).isoformat()
