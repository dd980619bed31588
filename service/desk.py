"""The running service's state and I/O around the pure decide(): one object, no gRPC in it.

Per request: resolve the customer, read contact state from memory, decide, write durably
(group commit), update memory, answer. Per customer, read → decide → commit is serialised so two
concurrent decisions cannot both pass a cap, nor fall between the two steps of an erasure.
Idempotency indexes are rebuilt from the log.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from audit.records import NewRecord, StoredRecord, decode_time, encode_time, keyed_hash
from audit.store import AuditStore
from audit.vault import Vault
from service import erasure, policy, retention
from service.arbitration import holdout_bucket, seed_from
from service.catalog import Catalog
from service.decide import DecisionInputs, decide
from service.erasure import ErasureResult
from service.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from service.features import customer_view
from service.profiles import ProfileSource
from service.ranker import Models
from service.registry import Registry
from service.settings import Secrets
from service.validation import ConversionCommand, DecideCommand, OutcomeCommand

log = logging.getLogger("offerdesk")
_STRIPES = 512


@dataclass(frozen=True)
class Deployment:
    """The model and catalog in use; swapped whole, so a request sees one consistent pair."""

    models: Models
    catalog: Catalog


@dataclass(frozen=True)
class Committed:
    """A committed record and its body. The body is the dict that was encoded, so the hot path
    never parses back what it just wrote (~50 µs per 6 KB decision record); read-only."""

    record: StoredRecord
    body: Mapping[str, Any]

    @classmethod
    def read(cls, record: StoredRecord) -> Committed:
        return cls(record, record.body)


@dataclass(frozen=True)
class _DecisionIndex:
    seq: int
    subject: str | None
    payload_hash: str
    offer_made: bool
    decided_at: datetime


#: every key of a record body that memory is rebuilt from (Desk._fold_fields and
#: ContactBook.apply), with its JSON type: a key read there must be named here
REBUILD_SHAPE = """{"body": {
  "decision_id": "VARCHAR", "request_key_hash": "VARCHAR", "ticket_hash": "VARCHAR",
  "payload_hash": "VARCHAR", "kind": "VARCHAR", "group": "VARCHAR",
  "card": {"offer_id": "VARCHAR"}, "inputs": {"now": "VARCHAR"},
  "outcome": "VARCHAR", "occurred_at": "VARCHAR",
  "transaction_hash": "VARCHAR", "product": "VARCHAR", "marketing_consent": "BOOLEAN"}}"""
#: the kinds that change memory
REBUILD_KINDS = ("decision", "outcome", "conversion", "consent", "erasure")


class Desk:
    def __init__(
        self,
        store: AuditStore,
        vault: Vault,
        profiles: ProfileSource,
        registry: Registry,
        secrets_: Secrets,
    ) -> None:
        from service.contacts import ContactBook

        self.store = store
        self.vault = vault
        self.profiles = profiles
        self.registry = registry
        self._hash_key = secrets_.hash_key.get_secret_value()
        self._holdout_key = secrets_.holdout_key.get_secret_value()
        self.contacts = ContactBook()
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        self._index_lock = threading.Lock()
        self._by_key: dict[str, str] = {}  # request-key hash → decision id
        self._by_ticket: dict[str, str] = {}  # ticket hash → its latest decision id
        self._decisions: dict[str, _DecisionIndex] = {}
        self._outcomes: dict[str, int] = {}  # decision id → seq of its outcome
        self._conversions: dict[str, tuple[str, int]] = {}  # txn hash → (payload hash, seq)
        self._inflight: dict[str, Future[Committed]] = {}
        self._deployment: Deployment | None = None
        #: called with each new decision's body once it is durable (telemetry)
        self.on_decided: Callable[[Mapping[str, Any]], None] = lambda body: None
        self._rebuild()

    # -- start-up and reload --------------------------------------------------------------
    def _rebuild(self) -> None:
        # Only the fields _fold_fields reads, parsed in DuckDB: json.loads of whole records was
        # half of start-up (3.4 s of 6.9 s for 100k records). Cut records (past their
        # retention) are skipped: nothing of them is read back (audit.retention).
        n = 0
        for seq, kind, subject, fields in self.store.scan_fields(REBUILD_SHAPE, REBUILD_KINDS):
            n += 1
            self._fold_fields(seq, kind, subject, fields["body"])
        log.info("rebuilt state from %d audit records", n)
        # Before serving: an erasure recorded but not applied (crash) is applied now.
        erasures = [r for r in self.store.scan(kinds={"erasure"}) if not r.cut]
        erasure.finish_pending(self.vault, self._hash_key, erasures)

    def _fold(self, c: Committed) -> None:
        """Bring memory up to date with one committed record (contact book and indexes)."""
        self._fold_fields(c.record.seq, c.record.kind, c.record.subject, c.body)

    def _fold_fields(
        self, seq: int, kind: str, subject: str | None, body: Mapping[str, Any]
    ) -> None:
        """The one way a record changes memory; reads only the keys in REBUILD_SHAPE."""
        self.contacts.apply(kind, subject, body)
        with self._index_lock:
            self._index(seq, kind, subject, body)

    def _index(self, seq: int, kind: str, subject: str | None, body: Mapping[str, Any]) -> None:
        if kind == "decision":
            did = body["decision_id"]
            self._by_key[body["request_key_hash"]] = did
            self._by_ticket[body["ticket_hash"]] = did  # records come in seq order: latest wins
            self._decisions[did] = _DecisionIndex(
                seq,
                subject,
                body["payload_hash"],
                body["kind"] == "offer",
                decode_time(body["inputs"]["now"]),
            )
        elif kind == "outcome":
            self._outcomes[body["decision_id"]] = seq
        elif kind == "conversion":
            self._conversions[body["transaction_hash"]] = (body["payload_hash"], seq)

    @property
    def deployment(self) -> Deployment:
        if self._deployment is None:
            raise Unavailable("no model and catalog loaded")
        return self._deployment

    def deploy(
        self, deployment: Deployment, reason: str, note: Mapping[str, Any] | None = None
    ) -> None:
        """Switch model and catalog; in-flight requests finish with the pair they started with.

        `note` is the registry's account of why this pair was activated (the promotion gate's
        result, an override and its reason, a rollback), kept in the deployment record."""
        self.store.append(
            [
                NewRecord(
                    "deployment",
                    _now(),
                    None,
                    None,
                    {
                        "model_version": deployment.models.version,
                        "catalog_version": deployment.catalog.version,
                        "reason": reason,
                        **({"activation": dict(note)} if note else {}),
                    },
                )
            ]
        )
        self._deployment = deployment
        log.info(
            "serving model %s with catalog %s (%s)",
            deployment.models.version,
            deployment.catalog.version,
            reason,
        )

    def reload_active(self, reason: str) -> bool:
        """Load the registry's active pair; a bad one is refused and the old keeps serving."""
        active = self.registry.active()
        current = self._deployment
        if current and (current.models.version, current.catalog.version) == (
            active.model,
            active.catalog,
        ):
            return False
        models = (
            current.models
            if current and current.models.version == active.model
            else self.registry.load_models(active.model)
        )
        catalog = (
            current.catalog
            if current and current.catalog.version == active.catalog
            else self.registry.load_catalog(active.catalog)
        )
        self.deploy(Deployment(models, catalog), reason, active.note)
        return True

    # -- Decide -----------------------------------------------------------------------------
    def decide(
        self,
        cmd: DecideCommand,
        *,
        now: datetime,
        trace_id: str,
        wanted: Callable[[], bool] = lambda: True,
    ) -> Committed:
        """Decide once per request key (a retry answers with the logged decision).

        ``wanted`` is asked just before the decision is written: False (the caller's deadline
        passed) raises DeadlineExceeded and nothing is written to the log (a pseudonym made
        for a new customer stays in the vault, unused until their next decision).
        """
        key_hash = keyed_hash(self._hash_key, cmd.request_key, domain="request_key")
        mine: Future[Committed] | None = None
        waiting: Future[Committed] | None = None
        with self._index_lock:
            existing = self._existing(key_hash, cmd.payload_hash)
            if existing is None:
                waiting = self._inflight.get(key_hash)
                if waiting is None:
                    mine = self._inflight[key_hash] = Future()
        if existing is not None:
            return existing
        if mine is None:
            assert waiting is not None
            # A concurrent duplicate is being decided: wait for it, then answer as a retry.
            waiting.result(timeout=30)
            with self._index_lock:
                existing = self._existing(key_hash, cmd.payload_hash)
            assert existing is not None
            return existing
        try:
            record = self._decide_new(cmd, key_hash, now, trace_id, wanted)
        except BaseException as e:
            with self._index_lock:
                del self._inflight[key_hash]
            mine.set_exception(e)
            raise
        with self._index_lock:
            del self._inflight[key_hash]
        mine.set_result(record)
        return record

    def _existing(self, key_hash: str, payload_hash: str) -> Committed | None:
        did = self._by_key.get(key_hash)
        if did is None:
            return None
        entry = self._decisions[did]
        if entry.payload_hash != payload_hash:
            raise InvalidArgument("request_key", "already used for a different request")
        return Committed.read(self._get(entry.seq))

    def _decide_new(
        self,
        cmd: DecideCommand,
        key_hash: str,
        now: datetime,
        trace_id: str,
        wanted: Callable[[], bool],
    ) -> Committed:
        dep = self.deployment
        customer_id = self.profiles.resolve(cmd.helpdesk, cmd.external_id)
        profile = self.profiles.profile(customer_id) if customer_id else None
        stripe = self._stripes[hash(customer_id or key_hash) % _STRIPES]
        with stripe:
            # Inside the stripe: an erasure of this customer cannot slip in between.
            pseudonym = self.vault.pseudonym_for(customer_id) if customer_id else None
            records: list[NewRecord] = []
            customer = None
            history: tuple[policy.ContactEvent, ...] = ()
            erased_on = None
            if customer_id is not None and profile is not None and pseudonym is not None:
                customer = customer_view(profile)
                bought = self.contacts.purchased(pseudonym)
                if bought:
                    customer["owned_products"] = sorted(set(customer["owned_products"]) | bought)
                consent = customer.get("marketing_consent")
                if self.contacts.consent(pseudonym) != consent:
                    records.append(_consent_record(pseudonym, consent, "profile_source", now))
                history = policy.relevant_history(
                    self.contacts.history(pseudonym), dep.catalog.policy.contact, now
                )
                erased_on = policy.relevant_erasure(
                    self.vault.erased_at(erasure.customer_hash(self._hash_key, customer_id)),
                    dep.catalog.policy.contact,
                    now,
                )
            inputs = DecisionInputs(
                now=now,
                seed=seed_from(key_hash),
                holdout_bucket=holdout_bucket(self._holdout_key, customer_id or ""),
                customer=customer,
                ticket=cmd.ticket,
                history=history,
                erased_on=erased_on,
            )
            decision = decide(inputs, dep.models, dep.catalog)
            decision_id = "d_" + secrets.token_hex(16)
            body = {
                "decision_id": decision_id,
                "request_key_hash": key_hash,
                "payload_hash": cmd.payload_hash,
                "helpdesk": cmd.helpdesk,
                "ticket_hash": self._ticket_hash(cmd.helpdesk, cmd.ticket_id),
                "resolved_at": encode_time(cmd.resolved_at),
                "agent_id": cmd.agent_id,
                "locale": cmd.locale,
                "trace_id": trace_id,
                "model_version": dep.models.version,
                "catalog_version": dep.catalog.version,
                "inputs": inputs.to_record(),
                **decision.to_record(dep.catalog),
            }
            records.append(NewRecord("decision", now, pseudonym, decision_id, body))
            if not wanted():  # last moment before the write: a decision nobody waits for
                raise DeadlineExceeded(
                    "the caller's deadline passed while deciding; nothing was written"
                )
            committed = self._write(records)
            for c in committed:
                self._fold(c)
        self.on_decided(body)
        return committed[-1]

    # -- RecordOutcome ----------------------------------------------------------------------
    def record_outcome(self, cmd: OutcomeCommand, *, now: datetime) -> tuple[StoredRecord, str]:
        entry = self._decisions.get(cmd.decision_id)
        if entry is None:
            raise NotFound(f"decision_id: no decision {cmd.decision_id}")
        if not entry.offer_made:
            raise InvalidArgument("decision_id", f"decision {cmd.decision_id} made no offer")
        if cmd.occurred_at < entry.decided_at - timedelta(minutes=5):
            raise InvalidArgument("occurred_at", "before the decision was made")
        stripe = self._stripes[hash(entry.subject or cmd.decision_id) % _STRIPES]
        with stripe:
            seq = self._outcomes.get(cmd.decision_id)
            if seq is not None:
                first = self._get(seq)
                b = first.body
                if (b["outcome"], b["decline_reason"]) != (cmd.outcome, cmd.decline_reason):
                    raise AlreadyExists(
                        f"decision_id: decision {cmd.decision_id} already has "
                        f"outcome {b['outcome']}"
                    )
                return first, b["outcome"]
            body = {
                "decision_id": cmd.decision_id,
                "decision_seq": entry.seq,
                "outcome": cmd.outcome,
                "decline_reason": cmd.decline_reason,
                "has_note": bool(cmd.decline_note),
                "agent_id": cmd.agent_id,
                "occurred_at": encode_time(cmd.occurred_at),
            }
            outcome = NewRecord("outcome", now, entry.subject, cmd.decision_id, body)
            committed = self._write([outcome])[0]
            if cmd.decline_note and entry.subject:
                # Free text stays outside the chain, deletable with the customer's pseudonym.
                self.vault.add_note(cmd.decision_id, entry.subject, cmd.decline_note)
            self._fold(committed)
        return committed.record, cmd.outcome

    # -- RecordConversion -------------------------------------------------------------------
    def record_conversion(self, cmd: ConversionCommand, *, now: datetime) -> StoredRecord:
        txn_hash = keyed_hash(self._hash_key, cmd.transaction_id, domain="transaction")
        customer_id = self.profiles.resolve(cmd.source, cmd.external_id)
        if customer_id is None:
            raise NotFound(f"customer.external_id: {cmd.source} id not in the identity map")
        pseudonym = self.vault.pseudonym_for(customer_id)
        stripe = self._stripes[hash(customer_id) % _STRIPES]
        with stripe:
            seen = self._conversions.get(txn_hash)
            if seen is not None:
                if seen[0] != cmd.payload_hash:
                    raise InvalidArgument("transaction_id", "already recorded with other details")
                return self._get(seen[1])
            # Checked after the retry lookup: a conversion once recorded stays acknowledged
            # even if the catalog's currency changes later.
            currency = self.deployment.catalog.currency
            if cmd.currency != currency:
                raise InvalidArgument(
                    "amount.currency", f"the catalog sells in {currency}, not {cmd.currency}"
                )
            body = {
                "transaction_hash": txn_hash,
                "payload_hash": cmd.payload_hash,
                "source": cmd.source,
                "product": cmd.product,
                "amount_minor": cmd.amount_minor,
                "currency": cmd.currency,
                "occurred_at": encode_time(cmd.occurred_at),
                "holdout_bucket": holdout_bucket(self._holdout_key, customer_id),
            }
            committed = self._write([NewRecord("conversion", now, pseudonym, txn_hash, body)])[0]
            self._fold(committed)
        return committed.record

    # -- Erasure (the admin API's entry; `offerdesk audit erase` runs the same steps offline) --
    def erase(self, customer_id: str, requested_by: str, now: datetime) -> ErasureResult:
        """Erase a customer (service.erasure.erase) and drop the old pseudonym from memory.

        Holds the customer's stripe (decisions) and their pseudonym's (outcomes and notes), so
        nothing about them is written between the chained record and the vault delete.
        """
        erasure.check_request(customer_id, requested_by)
        dep = self._deployment
        while True:
            pseudonym = self.vault.lookup(customer_id)
            held = {hash(customer_id) % _STRIPES}
            if pseudonym is not None:
                held.add(hash(pseudonym) % _STRIPES)
            with contextlib.ExitStack() as stack:
                for i in sorted(held):  # one order for every taker of two stripes
                    stack.enter_context(self._stripes[i])
                if self.vault.lookup(customer_id) != pseudonym:
                    continue  # a decision created their pseudonym meanwhile: lock it too
                result = erasure.erase(
                    self.store,
                    self.vault,
                    self._hash_key,
                    customer_id,
                    requested_by,
                    now,
                    contact=None if dep is None else dep.catalog.policy.contact,
                    catalog_version=None if dep is None else dep.catalog.version,
                )
                if result.pseudonym is not None:
                    self.contacts.forget(result.pseudonym)
                return result

    # -- Retention (the periodic job and the admin API; `offerdesk audit cut` offline) --------
    def cut(
        self,
        retention_days: Mapping[str, int],
        requested_by: str,
        now: datetime,
        *,
        dry_run: bool = False,
    ) -> retention.CutSummary:
        """Apply the retention periods (service.retention.cut) and forget what was cut.

        A cut decision or outcome is gone from the indexes: GetDecision and RecordOutcome
        answer NOT_FOUND for it, and its request key makes a new decision. The contact book
        needs nothing: retention is longer than anything it reads back.
        """
        dep = self._deployment
        contact = None if dep is None else dep.catalog.policy.contact
        summary = retention.cut(
            self.store, retention_days, requested_by, now, contact, dry_run=dry_run
        )
        if summary.cut_seqs:
            gone = summary.cut_seqs
            with self._index_lock:
                dropped = {d for d, e in self._decisions.items() if e.seq in gone}
                for did in dropped:
                    del self._decisions[did]
                for index in (self._by_key, self._by_ticket):
                    for key, did in list(index.items()):
                        if did in dropped:
                            del index[key]
                for did, seq in list(self._outcomes.items()):
                    if seq in gone or did in dropped:
                        del self._outcomes[did]
        return summary

    # -- GetDecision and friends -----------------------------------------------------------
    def find_decision(
        self,
        *,
        decision_id: str | None = None,
        request_key: str | None = None,
        ticket: tuple[str, str] | None = None,
    ) -> StoredRecord:
        if ticket is not None:
            helpdesk, ticket_id = ticket
            if not helpdesk:
                raise InvalidArgument("ticket.helpdesk", "required")
            if not ticket_id:
                raise InvalidArgument("ticket.ticket_id", "required")
            decision_id = self._by_ticket.get(self._ticket_hash(helpdesk, ticket_id))
            if decision_id is None:
                raise NotFound("ticket: no decision for this ticket")
        if request_key is not None:
            decision_id = self._by_key.get(
                keyed_hash(self._hash_key, request_key, domain="request_key")
            )
            if decision_id is None:
                raise NotFound("request_key: no decision for this request key")
        assert decision_id is not None
        entry = self._decisions.get(decision_id)
        if entry is None:
            raise NotFound(f"decision_id: no decision {decision_id}")
        return self._get(entry.seq)

    def outcome_of(self, decision_id: str) -> str | None:
        seq = self._outcomes.get(decision_id)
        return None if seq is None else self._get(seq).body["outcome"]

    def refresh_profiles(self) -> int:
        """Reload profiles; consent changes of customers we know are chained as records."""
        changed = self.profiles.refresh()
        records = []
        now = _now()
        # Offers older than any window are never read again (they stay in the log).
        contact = self.deployment.catalog.policy.contact
        lookback = policy.lookback_days(contact)
        self.contacts.prune(now - timedelta(days=lookback + 1))
        # Keyed hashes of erased ids are kept only while they can still pause an offer.
        self.vault.forget_erased(policy.erasure_horizon(contact, now))
        for customer_id, consent in changed.items():
            pseudonym = self.vault.lookup(customer_id)
            if pseudonym is not None:
                records.append(_consent_record(pseudonym, consent, "profile_refresh", now))
        if records:
            for c in self._write(records):
                self._fold(c)
        return len(records)

    def _write(self, records: list[NewRecord]) -> list[Committed]:
        """Durably append; returns each record with the body we already hold (no re-parse)."""
        try:
            stored = self.store.append(records)
            return [Committed(s, r.body) for s, r in zip(stored, records, strict=True)]
        except Exception as e:
            log.error("audit write failed: %s", e)
            raise Unavailable(f"audit log write failed; nothing was recorded: {e}") from None

    def _ticket_hash(self, helpdesk: str, ticket_id: str) -> str:
        """A ticket as the log keeps it: a keyed hash of the helpdesk and its ticket id."""
        return keyed_hash(self._hash_key, f"{helpdesk}:{ticket_id}", domain="ticket")

    def _get(self, seq: int) -> StoredRecord:
        r = self.store.get(seq)
        if r is None:  # pragma: no cover - the index only holds committed records
            raise Unavailable(f"audit record {seq} missing")
        if r.cut:  # cut a moment ago, before Desk.cut dropped it from the indexes
            raise NotFound(f"audit record {seq} is past its retention period (content cut)")
        return r


def _consent_record(pseudonym: str, consent: bool | None, source: str, now: datetime) -> NewRecord:
    return NewRecord(
        "consent",
        now,
        pseudonym,
        None,
        {"marketing_consent": consent, "source": source, "observed_at": encode_time(now)},
    )


def _now() -> datetime:
    return datetime.now(UTC)


__all__ = ["Committed", "Deployment", "Desk"]
