"""The vault: personal data kept outside the chained log (pseudonym map, decline notes, and
the keyed hashes of erased customer ids).

The chain stores only random pseudonyms; deleting a customer's row here makes their chained
records unlinkable without touching the chain. SQLite (WAL, synchronous=FULL), not DuckDB,
because the service and the CLI may have it open at the same time. Nothing from this file
may ever be written into the audit log; pseudonymous is not anonymous while the map exists.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import TracebackType

from audit.errors import AuditError
from audit.records import decode_time, encode_time

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pseudonyms (
  customer_id TEXT PRIMARY KEY,
  pseudonym TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS notes (
  id INTEGER PRIMARY KEY,
  decision_id TEXT NOT NULL,
  pseudonym TEXT NOT NULL,
  note TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notes_by_decision ON notes (decision_id);
CREATE INDEX IF NOT EXISTS notes_by_pseudonym ON notes (pseudonym);
CREATE TABLE IF NOT EXISTS erased (
  customer_hash TEXT PRIMARY KEY,
  erased_at TEXT NOT NULL
);
"""
# How long a writer waits for another process's transaction before giving up.
_BUSY_TIMEOUT_SECONDS = 10.0


def new_pseudonym() -> str:
    """``p_`` + 26 lowercase base32 characters of 16 random bytes: not derived from any id."""
    return "p_" + base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("=").lower()


def _text(name: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty str")
    return value


class Vault:
    """Customer id ↔ pseudonym map and decline notes, in one SQLite file. Thread-safe."""

    def __init__(self, con: sqlite3.Connection, path: Path) -> None:
        self._con = con
        self._path = path
        self._lock = threading.Lock()
        self._cache: dict[str, str] = {}
        self._erased: dict[str, datetime] | None = None  # loaded on first use
        self._data_version = self._read_data_version()
        self._closed = False

    @classmethod
    def open(cls, path: Path) -> Vault:
        """Open or create the vault file (readable by its owner only)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Create it private before SQLite does (SQLite would use the umask); the -wal
            # and -shm files take the main file's permissions.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            con = sqlite3.connect(
                path,
                timeout=_BUSY_TIMEOUT_SECONDS,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,  # guarded by Vault._lock instead
            )
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()
            if mode is None or mode[0] != "wal":
                raise AuditError(f"vault {path}: cannot switch to WAL journal mode ({mode})")
            # FULL: a pseudonym handed out is on disk first, so the log never names one the
            # vault has lost. secure_delete: erased rows are overwritten, not left in pages.
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA secure_delete=ON")
            con.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise AuditError(f"cannot open vault {path}: {exc}") from exc
        return cls(con, path)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise AuditError("vault is closed")
        try:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                yield self._con
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")
        except sqlite3.Error as exc:
            raise AuditError(f"vault {self._path}: {exc}") from exc

    def _read_data_version(self) -> int:
        row = self._con.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def _fresh_cache(self) -> dict[str, str]:
        # data_version changes when another connection (the CLI erasing someone, say) has
        # committed: then a cached pseudonym may be stale, so the whole cache goes.
        if self._closed:
            raise AuditError("vault is closed")
        version = self._read_data_version()
        if version != self._data_version:
            self._cache.clear()
            self._erased = None
            self._data_version = version
        return self._cache

    def pseudonym_for(self, customer_id: str) -> str:
        """The customer's pseudonym, created (and durably committed) on first use."""
        _text("customer_id", customer_id)
        with self._lock:
            cache = self._fresh_cache()
            if (cached := cache.get(customer_id)) is not None:
                return cached
            with self._transaction() as con:
                row = con.execute(
                    "SELECT pseudonym FROM pseudonyms WHERE customer_id = ?", (customer_id,)
                ).fetchone()
                pseudonym = row[0] if row else new_pseudonym()
                if row is None:
                    con.execute(
                        "INSERT INTO pseudonyms (customer_id, pseudonym) VALUES (?, ?)",
                        (customer_id, pseudonym),
                    )
            cache[customer_id] = pseudonym
            return pseudonym

    def lookup(self, customer_id: str) -> str | None:
        """The customer's pseudonym if they have one; never creates one."""
        _text("customer_id", customer_id)
        with self._lock:
            cache = self._fresh_cache()
            if (cached := cache.get(customer_id)) is not None:
                return cached
            row = self._select(
                "SELECT pseudonym FROM pseudonyms WHERE customer_id = ?", customer_id
            )
            if row is not None:
                cache[customer_id] = row
            return row

    def customer_for(self, pseudonym: str) -> str | None:
        """The customer behind a pseudonym, or None (unknown or erased)."""
        _text("pseudonym", pseudonym)
        with self._lock:
            return self._select("SELECT customer_id FROM pseudonyms WHERE pseudonym = ?", pseudonym)

    def _select(self, sql: str, value: str) -> str | None:
        if self._closed:
            raise AuditError("vault is closed")
        try:
            row = self._con.execute(sql, (value,)).fetchone()
        except sqlite3.Error as exc:
            raise AuditError(f"vault {self._path}: {exc}") from exc
        return None if row is None else str(row[0])

    def erase(
        self,
        customer_id: str,
        *,
        customer_hash: str | None = None,
        erased_at: datetime | None = None,
    ) -> str | None:
        """Delete the customer's pseudonym mapping and notes; return the pseudonym erased.

        Their chained records stay (and stay verifiable) but no longer lead to them. A later
        pseudonym_for() for the same id creates a new, unrelated pseudonym. With
        ``customer_hash`` (a keyed hash of the id, never the id) and ``erased_at``, the same
        transaction puts the hash on the erased list, so "unlinked" and "known to be erased"
        never disagree; nothing is listed when there was no mapping to delete.
        """
        _text("customer_id", customer_id)
        if (customer_hash is None) != (erased_at is None):
            raise ValueError("customer_hash and erased_at go together")
        listing = None
        if customer_hash is not None and erased_at is not None:
            listing = (_text("customer_hash", customer_hash), encode_time(erased_at))
        with self._lock:
            with self._transaction() as con:
                row = con.execute(
                    "SELECT pseudonym FROM pseudonyms WHERE customer_id = ?", (customer_id,)
                ).fetchone()
                if row is not None:
                    con.execute("DELETE FROM notes WHERE pseudonym = ?", (row[0],))
                    con.execute("DELETE FROM pseudonyms WHERE customer_id = ?", (customer_id,))
                    if listing is not None:
                        con.execute(
                            "INSERT OR REPLACE INTO erased (customer_hash, erased_at) "
                            "VALUES (?, ?)",
                            listing,
                        )
            self._cache.pop(customer_id, None)
            if row is None:
                return None
            if listing is not None and self._erased is not None:
                self._erased[listing[0]] = decode_time(listing[1])
            # Best effort: fold the WAL (which still holds the old pages) into the file and
            # truncate it; a reader in another process can keep it from completing now.
            with contextlib.suppress(sqlite3.Error):
                self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return str(row[0])

    def erased_at(self, customer_hash: str) -> datetime | None:
        """When the customer id behind this keyed hash was last erased, or None."""
        with self._lock:
            self._fresh_cache()
            if self._erased is None:
                try:
                    rows = self._con.execute("SELECT customer_hash, erased_at FROM erased")
                    self._erased = {str(h): decode_time(str(at)) for h, at in rows.fetchall()}
                except sqlite3.Error as exc:
                    raise AuditError(f"vault {self._path}: {exc}") from exc
            return self._erased.get(customer_hash)

    def forget_erased(self, before: datetime) -> int:
        """Drop erased-list entries older than ``before`` (no longer needed by the contact
        policy); return how many went."""
        cutoff = encode_time(before)  # fixed-width UTC text: compares like the times do
        with self._lock, self._transaction() as con:
            gone = con.execute("DELETE FROM erased WHERE erased_at < ?", (cutoff,)).rowcount
            self._erased = None
            return int(gone)

    def note_count(self, pseudonym: str) -> int:
        """How many notes are kept under a pseudonym (what an erasure would delete)."""
        _text("pseudonym", pseudonym)
        with self._lock:
            if self._closed:
                raise AuditError("vault is closed")
            try:
                row = self._con.execute(
                    "SELECT count(*) FROM notes WHERE pseudonym = ?", (pseudonym,)
                ).fetchone()
            except sqlite3.Error as exc:
                raise AuditError(f"vault {self._path}: {exc}") from exc
            return int(row[0])

    def add_note(self, decision_id: str, pseudonym: str, note: str) -> bool:
        """Keep an agent's free-text note on a decision; False (nothing kept) if the
        pseudonym is unknown or erased, so a late note cannot outlive an erasure."""
        _text("decision_id", decision_id)
        _text("pseudonym", pseudonym)
        _text("note", note)
        with self._lock, self._transaction() as con:
            known = con.execute(
                "SELECT 1 FROM pseudonyms WHERE pseudonym = ?", (pseudonym,)
            ).fetchone()
            if known is None:
                return False
            con.execute(
                "INSERT INTO notes (decision_id, pseudonym, note) VALUES (?, ?, ?)",
                (decision_id, pseudonym, note),
            )
            return True

    def notes_for(self, decision_id: str) -> list[str]:
        """The notes kept for a decision, oldest first."""
        _text("decision_id", decision_id)
        with self._lock:
            if self._closed:
                raise AuditError("vault is closed")
            try:
                rows = self._con.execute(
                    "SELECT note FROM notes WHERE decision_id = ? ORDER BY id", (decision_id,)
                ).fetchall()
            except sqlite3.Error as exc:
                raise AuditError(f"vault {self._path}: {exc}") from exc
            return [str(row[0]) for row in rows]

    def close(self) -> None:
        """Close the file. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._con.close()

    def __enter__(self) -> Vault:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
