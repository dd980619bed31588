"""Erasure: make a customer's audit records unlinkable, and chain a record that says so.

Needs only the audit store, the vault and the hash key (no models), so the running desk
(`Desk.erase`, for the admin API) and the offline `offerdesk audit erase` share this one
definition. Order: the chained `erasure` record is committed first, the vault row deleted
second. A crash between the two leaves a record whose pseudonym the vault still maps; running
erase again, or the next start of the service, finishes it. Nothing here may put the
customer id, or anything computed from it, into the chain.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from audit.records import NewRecord, StoredRecord, decode_time, encode_time, keyed_hash
from audit.store import AuditStore
from audit.vault import Vault
from service import policy
from service.catalog import ContactPolicySpec
from service.errors import InvalidArgument, NotFound

log = logging.getLogger("offerdesk")

#: keyed-hash domain of the vault's erased list (never used in the chain)
ERASED_DOMAIN = "erased-customer"
# An operator id, like an agent id but stricter: no spaces, so no names or free text.
_OPERATOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_CUSTOMER_ID_MAX_CHARS = 256


@dataclass(frozen=True)
class ErasureResult:
    """What an erase did.

    ``outcome``: ``erased`` (recorded and unlinked now), ``completed`` (an erasure recorded
    earlier, interrupted before the vault delete, was finished) or ``already_erased`` (nothing
    left to do; ``pseudonym`` and ``audit_sequence`` are then unknown).
    """

    outcome: str
    erased_at: datetime
    #: the erased (old) pseudonym, for the desk's memory; never shown next to the customer id
    pseudonym: str | None
    notes_deleted: int
    audit_sequence: int | None  # the `erasure` record
    offers_paused_until: datetime | None  # under the contact policy given; None: no pause

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for the command line and the admin API. Leaves the pseudonym out: whoever
        asked knows the customer id, and the pair side by side is exactly the erased link."""
        until = self.offers_paused_until
        return {
            "outcome": self.outcome,
            "erased_at": encode_time(self.erased_at),
            "notes_deleted": self.notes_deleted,
            "audit_sequence": self.audit_sequence,
            "offers_paused_until": None if until is None else encode_time(until),
        }


def check_request(customer_id: str, requested_by: str) -> None:
    """Refuse a bad request before anything is read or written; the error names the field."""
    if not isinstance(customer_id, str) or not customer_id.strip():
        raise InvalidArgument("customer_id", "required")
    if len(customer_id) > _CUSTOMER_ID_MAX_CHARS or not customer_id.isprintable():
        raise InvalidArgument(
            "customer_id", f"must be 1-{_CUSTOMER_ID_MAX_CHARS} printable characters"
        )
    check_operator(requested_by)


def check_operator(requested_by: str) -> None:
    """An operator id (who asked for an erasure or a retention cut): no names, no emails."""
    if not isinstance(requested_by, str) or not requested_by:
        raise InvalidArgument("requested_by", "required")
    if "@" in requested_by:
        raise InvalidArgument("requested_by", "must be an operator id, not an email address")
    if _OPERATOR.fullmatch(requested_by) is None:
        raise InvalidArgument(
            "requested_by",
            "must be an operator id: 1-128 of A-Z, a-z, 0-9, '.', '_', ':' or '-', "
            "starting with a letter or digit (no names or free text)",
        )


def customer_hash(hash_key: bytes, customer_id: str) -> str:
    """The erased list's key for a customer id: HMAC, kept in the vault, never chained."""
    return keyed_hash(hash_key, customer_id, domain=ERASED_DOMAIN)


def erase(
    store: AuditStore,
    vault: Vault,
    hash_key: bytes,
    customer_id: str,
    requested_by: str,
    now: datetime,
    *,
    contact: ContactPolicySpec | None = None,
    catalog_version: str | None = None,
) -> ErasureResult:
    """Erase a customer: chain the record, then delete the vault row and note the keyed hash.

    Idempotent: an id already erased answers ``already_erased`` and writes nothing; an
    interrupted erasure is finished without a second record. An id the vault never knew
    raises NotFound (a typo must not look like success). ``contact`` and
    ``catalog_version`` (the catalog in use, if known) say in the record what the contact
    policy does next.
    """
    check_request(customer_id, requested_by)
    pseudonym = vault.lookup(customer_id)
    if pseudonym is None:
        erased_at = vault.erased_at(customer_hash(hash_key, customer_id))
        if erased_at is None:
            raise NotFound(
                "customer_id: no pseudonym for this id, so nothing is recorded about it "
                "(never seen, or erased longer ago than the erased list is kept); check the id"
            )
        return ErasureResult(
            "already_erased", erased_at, None, 0, None, _paused_until(contact, erased_at)
        )
    record = find_record(store, pseudonym)
    outcome = "completed"
    if record is None:
        record = record_erasure(
            store, vault, pseudonym, requested_by, now, contact, catalog_version
        )
        outcome = "erased"
    unlink(vault, hash_key, customer_id, record)
    body = record.body
    erased_at = decode_time(body["erased_at"])
    return ErasureResult(
        outcome,
        erased_at,
        pseudonym,
        body["notes_deleted"],
        record.seq,
        _paused_until(contact, erased_at),
    )


def find_record(store: AuditStore, pseudonym: str) -> StoredRecord | None:
    """The `erasure` record of a pseudonym (its ``ref``), if one was committed."""
    return store.find("erasure", pseudonym)


def record_erasure(
    store: AuditStore,
    vault: Vault,
    pseudonym: str,
    requested_by: str,
    now: datetime,
    contact: ContactPolicySpec | None,
    catalog_version: str | None,
) -> StoredRecord:
    """Step 1: commit the chained `erasure` record (subject and ref: the old pseudonym)."""
    until = _paused_until(contact, now)
    body = {
        "erased_at": encode_time(now),
        "requested_by": requested_by,
        "notes_deleted": vault.note_count(pseudonym),
        # What the contact policy does next for this customer id, under the catalog in use
        # (null when the erasure was run offline without a registry).
        "after_erasure": {
            "rule": "contact.after_erasure",
            "catalog_version": catalog_version,
            "suppress_days": None if contact is None else contact.erasure_suppress_days,
            "offers_paused_until": None if until is None else encode_time(until),
        },
    }
    return store.append([NewRecord("erasure", now, pseudonym, pseudonym, body)])[0]


def unlink(vault: Vault, hash_key: bytes, customer_id: str, record: StoredRecord) -> str | None:
    """Step 2: delete the mapping and notes, and list the keyed hash with the recorded time."""
    erased_at = decode_time(record.body["erased_at"])
    return vault.erase(
        customer_id, customer_hash=customer_hash(hash_key, customer_id), erased_at=erased_at
    )


def finish_pending(vault: Vault, hash_key: bytes, records: Iterable[StoredRecord]) -> int:
    """Finish erasures recorded but not applied (a crash, or a restored old vault): at start."""
    finished = 0
    for record in records:
        if record.subject is None:
            continue
        customer_id = vault.customer_for(record.subject)
        if customer_id is not None:
            unlink(vault, hash_key, customer_id, record)
            finished += 1
    if finished:
        log.warning("finished %d erasure(s) recorded but not applied to the vault", finished)
    return finished


def _paused_until(contact: ContactPolicySpec | None, erased_at: datetime) -> datetime | None:
    if contact is None:
        return None
    return policy.erasure_pause_end(contact, erased_at.astimezone(UTC).date())


__all__ = [
    "ERASED_DOMAIN",
    "ErasureResult",
    "check_operator",
    "check_request",
    "customer_hash",
    "erase",
    "find_record",
    "finish_pending",
    "record_erasure",
    "unlink",
]
