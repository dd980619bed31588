"""Contact book: each customer's recent offers, outcomes, purchases and consent, in memory.

Rebuilt from the audit log at start-up and updated as records commit, so the log stays the
source of truth and a restart forgets nothing. Holds pseudonyms only, never customer ids.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from audit.records import decode_time
from service.policy import ContactEvent


class ContactBook:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, dict[str, ContactEvent]] = defaultdict(dict)
        self._consent: dict[str, bool] = {}
        self._purchased: dict[str, set[str]] = defaultdict(set)

    def apply(self, kind: str, who: str | None, body: Mapping[str, Any]) -> None:
        """Fold one committed record (its kind, subject and body) into the book."""
        if who is None:
            return
        with self._lock:
            if kind == "decision":
                card = body["card"]
                if body["group"] == "treated" and body["kind"] == "offer" and card is not None:
                    now = decode_time(body["inputs"]["now"])
                    self._events[who][body["decision_id"]] = ContactEvent(
                        body["decision_id"], card["offer_id"], now
                    )
            elif kind == "outcome":
                event = self._events.get(who, {}).get(body["decision_id"])
                if event is not None:
                    self._events[who][event.decision_id] = ContactEvent(
                        event.decision_id,
                        event.offer_id,
                        event.offered_at,
                        body["outcome"],
                        decode_time(body["occurred_at"]),
                    )
            elif kind == "conversion":
                self._purchased[who].add(body["product"])
            elif kind == "consent":
                self._consent[who] = body["marketing_consent"]
            elif kind == "erasure":
                self._forget(who)

    def forget(self, pseudonym: str) -> None:
        """Drop everything held for an erased pseudonym (it stays in the log, unlinked)."""
        with self._lock:
            self._forget(pseudonym)

    def _forget(self, pseudonym: str) -> None:
        self._events.pop(pseudonym, None)
        self._consent.pop(pseudonym, None)
        self._purchased.pop(pseudonym, None)

    def history(self, pseudonym: str) -> list[ContactEvent]:
        with self._lock:
            return list(self._events.get(pseudonym, {}).values())

    def purchased(self, pseudonym: str) -> set[str]:
        with self._lock:
            return set(self._purchased.get(pseudonym, ()))

    def consent(self, pseudonym: str) -> bool | None:
        with self._lock:
            return self._consent.get(pseudonym)

    def prune(self, before: datetime) -> None:
        """Forget offers older than any window needs (they stay in the log)."""
        with self._lock:
            for who, events in list(self._events.items()):
                for did, e in list(events.items()):
                    if e.offered_at < before:
                        del events[did]
                if not events:
                    del self._events[who]
