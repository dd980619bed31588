"""Seals the running log: signs a checkpoint every N records or T seconds and at shutdown.

Each checkpoint (size, chain head, Merkle root, time) is signed with the active Ed25519 key,
appended durably to the checkpoint file outside the database, then handed to every
publication point. At start it refuses a log that does not extend the last signed checkpoint.
It must never sign a head the store has not committed, and never block a decision: signing
and publication run on their own thread, and a publication that fails is retried, not fatal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from audit.checkpoint import (
    Checkpoint,
    CheckpointLog,
    KeyRing,
    Publisher,
    SignedCheckpoint,
    sign,
)
from audit.errors import AuditCorrupt
from audit.merkle import root_of
from audit.store import AuditStore

log = logging.getLogger("offerdesk.audit")

# How often the thread looks at the head: the record trigger is checked this often, so a
# burst overshoots checkpoint_every_records by at most what arrives in this time.
_POLL_SECONDS = 0.25
# A publication point that failed is tried again after this long (with the newest note).
_RETRY_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class PublicationState:
    """What one publication point has received."""

    name: str
    published_size: int | None  # size of the newest checkpoint it accepted
    last_error: str | None


@dataclass(frozen=True, slots=True)
class CheckpointerStatus:
    latest: Checkpoint | None
    unsealed: int  # records committed after the latest checkpoint
    publications: tuple[PublicationState, ...]


def check_extends(store: AuditStore, latest: Checkpoint | None) -> None:
    """Raise AuditCorrupt unless the store holds the signed checkpoint's records unchanged.

    Catches a truncated tail (fewer records than were signed) and a log rewritten or
    re-chained after signing (a different root or head at the signed size).
    """
    if latest is None:
        return
    size = store.tree_head().size
    if size < latest.size:
        raise AuditCorrupt(
            f"audit log has {size:,} records but checkpoint {latest.origin} signed "
            f"{latest.size:,}: records were cut off after they were sealed"
        )
    hashes = store.chain_hashes(latest.size)
    head = hashes[-1] if hashes else bytes(32)
    if head != latest.chain_head or root_of(hashes) != latest.root:
        raise AuditCorrupt(
            f"audit log does not extend checkpoint {latest.origin} at size {latest.size:,}: "
            "its first records differ from what was signed (rewritten after sealing?)"
        )


class Checkpointer:
    """The sealing thread of one open AuditStore. Use ``Checkpointer.start``."""

    def __init__(
        self,
        store: AuditStore,
        keys: KeyRing,
        checkpoints: CheckpointLog,
        latest: Checkpoint | None,
        publishers: Sequence[Publisher],
        every_records: int,
        every_seconds: float,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._keys = keys
        self._log = checkpoints
        self._latest = latest
        self._publishers = list(publishers)
        self._published: dict[str, int | None] = {p.name: None for p in publishers}
        self._errors: dict[str, str | None] = {p.name: None for p in publishers}
        self._pending: dict[str, SignedCheckpoint] = {}
        self._retry_at: dict[str, float] = {}
        self._every_records = every_records
        self._every_seconds = every_seconds
        self._clock = clock
        self._lock = threading.Lock()  # one seal at a time (thread, shutdown, callers)
        self._stop = threading.Event()
        self._last_seal = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="audit-checkpointer", daemon=True)

    @classmethod
    def start(
        cls,
        store: AuditStore,
        keys: KeyRing,
        checkpoint_path: Path,
        publishers: Sequence[Publisher] = (),
        *,
        every_records: int = 1000,
        every_seconds: float = 60.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> Checkpointer:
        """Check the store extends the last checkpoint, then start sealing."""
        if every_records < 1 or every_seconds <= 0:
            raise ValueError("every_records must be >= 1 and every_seconds > 0")
        # A line cut off by a crash was never appended, so never published: drop it.
        torn = CheckpointLog.truncate_torn_tail(checkpoint_path)
        if torn:
            log.warning("removed a torn last line (%d bytes) from %s", torn, checkpoint_path)
        signed = CheckpointLog.read(checkpoint_path, keys.verifier_keys(), origin=keys.name)
        latest = signed[-1].checkpoint if signed else None
        check_extends(store, latest)
        checkpointer = cls(
            store,
            keys,
            CheckpointLog(checkpoint_path),
            latest,
            publishers,
            every_records,
            every_seconds,
            clock,
        )
        # Records a crash left unsealed were verified when the store reopened: seal them now,
        # so the unsealed tail is only ever what arrived since this start.
        checkpointer.seal()
        checkpointer._thread.start()
        return checkpointer

    @property
    def latest(self) -> Checkpoint | None:
        return self._latest

    def status(self) -> CheckpointerStatus:
        latest = self._latest
        size = self._store.tree_head().size
        return CheckpointerStatus(
            latest,
            size - (latest.size if latest else 0),
            tuple(
                PublicationState(p.name, self._published[p.name], self._errors[p.name])
                for p in self._publishers
            ),
        )

    def seal(self) -> SignedCheckpoint | None:
        """Sign, store and publish a checkpoint of the committed head, if it grew."""
        with self._lock:
            head = self._store.tree_head()
            if head.size == (self._latest.size if self._latest is not None else 0):
                return None  # nothing new (an empty log is not sealed)
            checkpoint = Checkpoint(
                origin=self._keys.active().name,
                size=head.size,
                root=head.root,
                chain_head=head.chain_head,
                time=self._clock(),
            )
            signed = sign(checkpoint, self._keys.active())
            # Durable in our own file first: a published checkpoint we cannot find again
            # would look like a forgery to the next verifier.
            self._log.append(signed)
            self._latest = checkpoint
            self._last_seal = time.monotonic()
            for publisher in self._publishers:
                self._pending[publisher.name] = signed
                self._retry_at[publisher.name] = 0.0
            self._publish_pending()
            log.info(
                "sealed the audit log at %d records (root %s)", head.size, head.root.hex()[:16]
            )
            return signed

    def _publish_pending(self) -> None:
        now = time.monotonic()
        for publisher in self._publishers:
            signed = self._pending.get(publisher.name)
            if signed is None or now < self._retry_at[publisher.name]:
                continue
            try:
                publisher.publish(signed)
            except Exception as exc:  # a publication point is remote; never fatal here
                self._errors[publisher.name] = str(exc)
                self._retry_at[publisher.name] = now + _RETRY_SECONDS
                log.error(
                    "could not publish checkpoint %d to %s (retrying in %.0f s): %s",
                    signed.checkpoint.size,
                    publisher.name,
                    _RETRY_SECONDS,
                    exc,
                )
                continue
            del self._pending[publisher.name]
            self._published[publisher.name] = signed.checkpoint.size
            self._errors[publisher.name] = None

    def _due(self) -> bool:
        size = self._store.tree_head().size
        sealed = self._latest.size if self._latest is not None else 0
        if size == sealed:
            return False
        if size - sealed >= self._every_records:
            return True
        return time.monotonic() - self._last_seal >= self._every_seconds

    def _run(self) -> None:
        while not self._stop.wait(min(_POLL_SECONDS, self._every_seconds)):
            try:
                if self._due():
                    self.seal()
                elif self._pending:
                    with self._lock:
                        self._publish_pending()
            except Exception:
                # Signing or the local file failed (disk full?): keep running and try again;
                # the unsealed tail grows and `status()` shows it.
                log.exception("could not seal the audit log")

    def close(self) -> SignedCheckpoint | None:
        """Stop the thread and seal what the store committed (call before closing the store)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return self.seal()
