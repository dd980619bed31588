"""Erasure (service/erasure.py, `offerdesk audit erase`, Desk.erase): records become unlinkable,
the chain and what checkpoints sign still verify, and the same id is paused, then sold to anew."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import grpc
import pytest
import yaml
from offerdesk.v1 import offerdesk_pb2 as pb
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc
from test_server import first_offer, request, treated_customers, ts

from audit.merkle import root_of
from audit.records import NewRecord, decode_time
from audit.store import AuditStore
from audit.vault import Vault
from audit.verify import verify_file
from service import erasure, policy
from service.catalog import Catalog, parse_catalog
from service.decide import PAUSED_MESSAGE, DecisionInputs, decide
from service.errors import CatalogError, InvalidArgument, NotFound
from service.features import customer_view
from service.ranker import Models
from service.registry import Registry
from service.replay import DecisionLog, replay_records
from service.server import Running, start
from service.settings import Settings
from service.simulator import World
from service.validation import decide_command

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
KEY = bytes(range(32))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, timeout=120
    )


def erase_cli(settings: Settings, customer: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli(
        "audit",
        "erase",
        "--customer",
        customer,
        "--data-dir",
        str(settings.data_dir),
        *(extra or ("--requested-by", "dpo-7", "--yes")),
    )


def said(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


@dataclass(frozen=True)
class Row:
    seq: int
    kind: str
    subject: str | None
    record: str
    hash: bytes


def rows(settings: Settings) -> list[Row]:
    with duckdb.connect(str(settings.audit_path), read_only=True) as con:
        found = con.execute(
            "SELECT seq, kind, subject, record, hash FROM audit_records ORDER BY seq"
        ).fetchall()
    return [Row(s, k, sub, rec, bytes(h)) for s, k, sub, rec, h in found]


@dataclass(frozen=True)
class Erased:
    customer_id: str
    old_pseudonym: str
    offer: pb.DecideResponse


def decided_then_erased_via_cli(world: World, settings: Settings) -> tuple[Erased, list[Row]]:
    """A real server decides for a customer (an offer, a declined outcome with a note, one more
    decision), stops; the CLI erases them. Returns the log as it was before the erasure."""
    running = start(settings)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = pb_grpc.OfferDeskStub(ch)
            cid, offer, _ = first_offer(stub, world, settings, prefix="er")
            stub.RecordOutcome(
                pb.RecordOutcomeRequest(
                    decision_id=offer.decision_id,
                    outcome=pb.DECLINED,
                    decline_reason=pb.BAD_TIMING,
                    decline_note="Jane Roe says call back after the audit",
                    agent_id="agent-1",
                    occurred_at=ts(),
                )
            )
            stub.Decide(request(world, cid, "er-again"))
        old = running.desk.find_decision(decision_id=offer.decision_id).subject
    finally:
        running.stop()
    assert old is not None
    before = rows(settings)
    out = erase_cli(settings, cid)
    assert out.returncode == 0, out.stderr
    assert "erased" in out.stdout and old not in out.stdout + out.stderr
    return Erased(cid, old, offer), before


# -- end to end, through a real server and the command line -----------------------------------


def test_cli_erasure_unlinks_the_records_and_the_chain_and_checkpoints_still_verify(
    world: World, settings: Settings, catalog: Catalog
) -> None:
    erased, before = decided_then_erased_via_cli(world, settings)
    cid, old = erased.customer_id, erased.old_pseudonym
    hash_key = settings.load_secrets().hash_key.get_secret_value()
    with Vault.open(settings.vault_path) as vault:
        assert vault.lookup(cid) is None and vault.customer_for(old) is None
        assert vault.notes_for(erased.offer.decision_id) == []
        listed = vault.erased_at(erasure.customer_hash(hash_key, cid))
    assert listed is not None

    after = rows(settings)
    report = verify_file(settings.audit_path)
    assert report.ok, report.problem
    assert report.count == len(before) + 1
    # Nothing before the erasure changed, so a checkpoint signed over any prefix (size, chain
    # head, Merkle root of the chain hashes) still matches.
    assert after[: len(before)] == before
    assert root_of([r.hash for r in after[: len(before)]]) == root_of([r.hash for r in before])

    record = after[-1]
    assert record.kind == "erasure" and record.subject == old
    envelope = json.loads(record.record)
    assert envelope["ref"] == old
    body = envelope["body"]
    assert decode_time(body["erased_at"]) == listed
    assert body["requested_by"] == "dpo-7" and body["notes_deleted"] == 1
    pause = body["after_erasure"]
    assert pause["catalog_version"] == catalog.version
    assert pause["suppress_days"] == 60 and pause["rule"] == "contact.after_erasure"
    assert decode_time(pause["offers_paused_until"]) == policy.erasure_pause_end(
        catalog.policy.contact, listed.date()
    )
    # No id, and nothing computed from it, in the record's bytes (or anywhere in the log).
    for secret in (
        cid,
        *world.external_ids(cid).values(),
        erasure.customer_hash(hash_key, cid),
        "Jane Roe",
    ):
        assert secret not in record.record
        assert all(secret not in r.record for r in after)
    # The old pseudonym's records are all still there, unchanged.
    theirs = [r for r in before if r.subject == old]
    assert {r.kind for r in theirs} >= {"decision", "outcome", "consent"}
    assert [r for r in after if r.subject == old and r.kind != "erasure"] == theirs

    # Again: idempotent, nothing written. An id never seen: a clear error, nothing written.
    again = erase_cli(settings, cid)
    assert again.returncode == 0 and "already erased" in said(again.stdout), again.stderr
    unknown = erase_cli(settings, "cust-that-never-was")
    assert unknown.returncode == 1 and said(unknown.stderr).startswith("✗ --customer: no pseudonym")
    assert "Traceback" not in unknown.stderr
    assert rows(settings) == after


def test_erased_customer_is_paused_under_a_new_pseudonym_then_can_be_offered_again(
    world: World, settings: Settings, models: Models
) -> None:
    erased, _ = decided_then_erased_via_cli(world, settings)
    cid, old = erased.customer_id, erased.old_pseudonym
    erasure_row = rows(settings)[-1]
    erased_at = decode_time(json.loads(erasure_row.record)["body"]["erased_at"])
    running = start(settings)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            paused = pb_grpc.OfferDeskStub(ch).Decide(request(world, cid, "back-1"))
        assert paused.kind == pb.NO_OFFER and paused.no_offer_reason == pb.CONTACT_LIMIT
        assert {w.rule_id for w in paused.why_not} == {"contact.after_erasure"}
        assert paused.agent_message == PAUSED_MESSAGE and "eras" not in paused.agent_message
        logged = running.desk.find_decision(decision_id=paused.decision_id)
        assert logged.subject is not None and logged.subject != old
        inputs = logged.body["inputs"]
        # The day of the erasure, not its time: no exact join to the erasure record.
        assert inputs["erased_on"] == erased_at.astimezone(UTC).date().isoformat()
        assert json.loads(erasure_row.record)["body"]["erased_at"] not in logged.record.decode()
        assert old not in logged.record.decode()

        # Replaying the logged inputs gives the same decision.
        dep = running.desk.deployment
        again = decide(DecisionInputs.from_record(inputs), models, dep.catalog)
        for k, v in again.to_record(dep.catalog).items():
            assert logged.body[k] == v, k

        # After the pause (a controlled decision time): offers are possible again.
        later = policy.erasure_pause_end(dep.catalog.policy.contact, erased_at.date())
        assert later is not None
        later += timedelta(hours=1)
        while policy.blackout_block(dep.catalog.policy.contact, later):
            later += timedelta(days=7)
        reasons = []
        for i in range(10):
            req = request(
                world, cid, f"back-later-{i}", resolved_at=ts(later - timedelta(minutes=1))
            )
            cmd = decide_command(
                req,
                now=later,
                tags=dep.catalog.spec.ticket_tags,
                fields=dep.catalog.spec.ticket_fields,
            )
            c = running.desk.decide(cmd, now=later, trace_id="0" * 32)
            assert "erased_on" not in c.body["inputs"] and c.record.subject == logged.subject
            reasons.append(c.body["no_offer_reason"])
            if c.body["kind"] == "offer":
                break
        assert reasons[-1] is None, reasons  # an offer
        assert "CONTACT_LIMIT" not in reasons
    finally:
        running.stop()
    assert verify_file(settings.audit_path).ok
    with DecisionLog.open(settings.audit_path) as log:  # `offerdesk audit replay`'s engine
        report = replay_records(list(log), Registry(settings.registry_dir))
    assert report.mismatches == () and report.failures == () and report.missing == ()
    assert report.total == report.identical >= 4  # offer, again, paused, after the pause


def test_desk_erase_while_serving_drops_memory_and_pauses_at_once(
    stub: pb_grpc.OfferDeskStub, server: Running, world: World, settings: Settings
) -> None:
    desk = server.desk
    cid, offer, _ = first_offer(stub, world, settings, prefix="live")
    old = desk.find_decision(decision_id=offer.decision_id).subject
    assert old is not None and desk.contacts.history(old)
    count = desk.store.head()[0]
    with pytest.raises(InvalidArgument) as bad:
        desk.erase(cid, "jane@example.com", datetime.now(UTC))
    assert bad.value.field == "requested_by" and desk.store.head()[0] == count
    assert desk.vault.lookup(cid) == old

    result = desk.erase(cid, "dpo-7", datetime.now(UTC))
    assert result.outcome == "erased" and result.pseudonym == old and result.notes_deleted == 0
    assert "pseudonym" not in result.to_json() and old not in json.dumps(result.to_json())
    assert desk.contacts.history(old) == [] and desk.contacts.consent(old) is None
    record = desk.store.get(result.audit_sequence) if result.audit_sequence else None
    assert record is not None and record.kind == "erasure" and record.subject == old
    assert desk.erase(cid, "dpo-7", datetime.now(UTC)).outcome == "already_erased"

    # While the service holds the log, the command line refuses and says where to go.
    locked = erase_cli(settings, treated_customers(world, settings)[5])
    assert locked.returncode == 3 and "admin API" in said(locked.stderr), locked.stderr

    # A late note on the old decision is not kept; the next decision is paused.
    stub.RecordOutcome(
        pb.RecordOutcomeRequest(
            decision_id=offer.decision_id,
            outcome=pb.DECLINED,
            decline_reason=pb.OTHER,
            decline_note="late note",
            agent_id="agent-1",
            occurred_at=ts(),
        )
    )
    assert desk.vault.notes_for(offer.decision_id) == []
    after = stub.Decide(request(world, cid, "live-after"))
    assert after.no_offer_reason == pb.CONTACT_LIMIT
    assert {w.rule_id for w in after.why_not} == {"contact.after_erasure"}
    assert desk.find_decision(decision_id=after.decision_id).subject not in (None, old)

    # Keyed hashes are kept only while they can still pause an offer.
    hash_key = settings.load_secrets().hash_key.get_secret_value()
    stale = erasure.customer_hash(hash_key, "cust-long-ago")
    desk.vault.pseudonym_for("cust-long-ago")
    desk.vault.erase(
        "cust-long-ago", customer_hash=stale, erased_at=datetime.now(UTC) - timedelta(days=62)
    )
    desk.refresh_profiles()
    assert desk.vault.erased_at(stale) is None
    assert desk.vault.erased_at(erasure.customer_hash(hash_key, cid)) is not None


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--requested-by", "jane@example.com"),
        ("--requested-by", "Jane Doe asked by phone"),
        ("--requested-by", ""),
        ("--customer", ""),
    ],
)
def test_bad_erase_input_names_the_flag_and_changes_nothing(
    tmp_path: Path, flag: str, value: str
) -> None:
    data = tmp_path / "var"
    with AuditStore.open(data / "audit.duckdb") as store, Vault.open(data / "vault.sqlite") as v:
        p = v.pseudonym_for("cust-1")
        store.append([NewRecord("consent", NOW, p, None, {"marketing_consent": True})])
    args = {"--customer": "cust-1", "--requested-by": "dpo-7", flag: value}
    out = cli(
        "audit", "erase", *(x for kv in args.items() for x in kv), "--yes", "--data-dir", str(data)
    )
    assert out.returncode == 2 and out.stderr.startswith(f"✗ {flag}:"), out.stderr
    assert "nothing was changed" in said(out.stderr)
    with AuditStore.open(data / "audit.duckdb") as store, Vault.open(data / "vault.sqlite") as v:
        assert store.head()[0] == 1 and v.lookup("cust-1") == p


# -- crash safety: the record first, the vault second ------------------------------------------


def test_an_interrupted_erasure_is_finished_by_running_erase_again(
    tmp_path: Path, catalog: Catalog
) -> None:
    contact = catalog.policy.contact
    with (
        AuditStore.open(tmp_path / "audit.duckdb") as store,
        Vault.open(tmp_path / "vault.sqlite") as vault,
    ):
        p = vault.pseudonym_for("cust-9")
        vault.add_note("d_1", p, "a note")
        store.append([NewRecord("consent", NOW, p, None, {"marketing_consent": True})])
        # Step 1 only, as if the process died before the vault delete.
        first = erasure.record_erasure(store, vault, p, "dpo-7", NOW, contact, catalog.version)
        found = erasure.find_record(store, p)
        assert vault.lookup("cust-9") == p and found is not None and found.seq == first.seq

        later = NOW + timedelta(hours=3)
        result = erasure.erase(store, vault, KEY, "cust-9", "dpo-8", later, contact=contact)
        assert result.outcome == "completed" and result.audit_sequence == first.seq
        assert result.erased_at == NOW and result.notes_deleted == 1  # as recorded
        assert [r.kind for r in store.scan()].count("erasure") == 1
        assert vault.lookup("cust-9") is None and vault.notes_for("d_1") == []
        assert vault.erased_at(erasure.customer_hash(KEY, "cust-9")) == NOW
        done = erasure.erase(store, vault, KEY, "cust-9", "dpo-8", later, contact=contact)
        assert done.outcome == "already_erased" and store.head()[0] == 2
        with pytest.raises(NotFound, match=r"^customer_id: "):
            erasure.erase(store, vault, KEY, "cust-unknown", "dpo-8", later)
        assert store.head()[0] == 2


def test_the_service_finishes_a_recorded_erasure_before_serving(
    settings: Settings, world: World, catalog: Catalog
) -> None:
    cid = treated_customers(world, settings)[0]
    with (
        AuditStore.open(settings.audit_path) as store,
        Vault.open(settings.vault_path) as vault,
    ):
        p = vault.pseudonym_for(cid)
        erasure.record_erasure(store, vault, p, "dpo-7", NOW, catalog.policy.contact, None)
    running = start(settings)
    try:
        assert running.desk.vault.lookup(cid) is None
        hash_key = settings.load_secrets().hash_key.get_secret_value()
        assert running.desk.vault.erased_at(erasure.customer_hash(hash_key, cid)) == NOW
    finally:
        running.stop()


# -- the policy for erased customers: catalog setting, decide(), replay ------------------------


def with_contact(catalog: Catalog, **contact: object) -> Catalog:
    raw = yaml.safe_load(catalog.source)
    raw["policy"]["contact"].update(contact)
    return parse_catalog(yaml.safe_dump(raw).encode(), "acme.yaml")


@pytest.mark.parametrize(
    ("after_erasure", "message"),
    [
        ({"suppress_days": -1}, "greater than or equal to 0"),
        ({"suppress_days": 367}, "less than or equal to 366"),
        ({"suppress_days": "two months"}, "valid integer"),
        ({"supress_days": 30}, "Extra inputs are not permitted"),
    ],
)
def test_bad_after_erasure_setting_names_the_field(
    catalog: Catalog, after_erasure: dict[str, object], message: str
) -> None:
    with pytest.raises(CatalogError) as e:
        with_contact(catalog, after_erasure=after_erasure)
    field = next(iter(after_erasure))
    assert f"acme.yaml: policy, contact, after_erasure, {field}: " in str(e.value)
    assert message in str(e.value)


def test_default_pause_is_the_longest_window_so_erasure_cannot_reset_caps(
    catalog: Catalog,
) -> None:
    assert catalog.policy.contact.after_erasure.suppress_days is None
    assert catalog.policy.contact.erasure_suppress_days == 60  # offer_cooldown_days
    longer = with_contact(catalog, window_days=90, decline_cooldown_days=120)
    assert longer.policy.contact.erasure_suppress_days == 120
    assert (
        with_contact(
            catalog, after_erasure={"suppress_days": 0}
        ).policy.contact.erasure_suppress_days
        == 0
    )


def sellable(world: World, cid: str) -> dict[str, object]:
    clean = {"marketing_consent": True, "open_billing_dispute": False, "payment_failures_90d": 0}
    return customer_view({**world.profiles[cid], **clean, "owned_products": []})


def offered_inputs(world: World, models: Models, catalog: Catalog, now: datetime) -> DecisionInputs:
    """Treated inputs at ``now`` that get an offer when nothing was erased."""
    ticket = {
        "category": "access",
        "product_area": "seats",
        "channel": "chat",
        "reopen_count": 0,
        "tags": [],
        "fields": {},
    }
    for cid in sorted(world.profiles)[:200]:
        inputs = DecisionInputs(now, 11, 0.5, sellable(world, cid), ticket, ())
        if decide(inputs, models, catalog).kind == "offer":
            return inputs
    raise AssertionError("no offer for 200 customers")


def test_decide_pauses_offers_after_an_erasure_for_exactly_the_configured_days(
    world: World, models: Models, catalog: Catalog
) -> None:
    erased_on = date(2026, 11, 17)
    contact = catalog.policy.contact
    end = policy.erasure_pause_end(contact, erased_on)
    assert end == datetime(2026, 11, 17, tzinfo=UTC) + timedelta(days=61)

    base = offered_inputs(world, models, catalog, NOW)
    d = decide(replace(base, erased_on=erased_on), models, catalog)
    assert d.kind == "no_offer" and d.no_offer_reason == "CONTACT_LIMIT"
    assert d.agent_message == PAUSED_MESSAGE and d.card is None
    assert len(d.why_not) == len(catalog.offers)
    assert {(w.code, w.rule_id) for w in d.why_not} == {("CONTACT_POLICY", "contact.after_erasure")}
    assert "2027-01-17" in d.why_not[0].detail

    just_before = replace(base, now=end - timedelta(microseconds=1), erased_on=erased_on)
    assert decide(just_before, models, catalog).no_offer_reason == "CONTACT_LIMIT"
    at_end = offered_inputs(world, models, catalog, end)
    paused_then_not = decide(replace(at_end, erased_on=erased_on), models, catalog)
    assert paused_then_not.to_record(catalog) == decide(at_end, models, catalog).to_record(catalog)
    assert paused_then_not.kind == "offer"

    fresh = with_contact(catalog, after_erasure={"suppress_days": 0})
    assert policy.erasure_pause_end(fresh.policy.contact, erased_on) is None
    same = decide(replace(base, erased_on=erased_on), models, fresh)
    assert same.to_record(fresh) == decide(base, models, fresh).to_record(fresh)


def test_inputs_log_the_erasure_day_and_older_records_read_as_before() -> None:
    inputs = DecisionInputs(NOW, 1, 0.5, None, {"category": "x"}, (), date(2026, 11, 17))
    record = inputs.to_record()
    assert record["erased_on"] == "2026-11-17"
    assert DecisionInputs.from_record(record) == inputs
    older = {k: v for k, v in record.items() if k != "erased_on"}
    assert DecisionInputs.from_record(older).erased_on is None
    assert DecisionInputs.from_record(older).to_record() == older  # byte-for-byte as logged


def test_relevant_erasure_is_the_day_and_only_while_it_can_pause(catalog: Catalog) -> None:
    contact = catalog.policy.contact
    erased_at = datetime(2026, 11, 17, 23, 59, 59, tzinfo=UTC)
    assert policy.relevant_erasure(None, contact, NOW) is None
    assert policy.relevant_erasure(erased_at, contact, NOW) == date(2026, 11, 17)
    end = policy.erasure_pause_end(contact, date(2026, 11, 17))
    assert end is not None and end - erased_at > timedelta(days=60)  # never shorter
    assert policy.relevant_erasure(erased_at, contact, end) is None
    assert policy.erasure_horizon(contact, NOW) == NOW - timedelta(days=61)


def test_vault_lists_erased_hashes_only_with_a_deleted_mapping(tmp_path: Path) -> None:
    with Vault.open(tmp_path / "vault.sqlite") as vault:
        assert vault.erase("nobody", customer_hash="h-nobody", erased_at=NOW) is None
        assert vault.erased_at("h-nobody") is None
        p = vault.pseudonym_for("cust-1")
        assert vault.erase("cust-1", customer_hash="h-1", erased_at=NOW) == p
        vault.pseudonym_for("cust-2")
        vault.erase("cust-2", customer_hash="h-2", erased_at=NOW - timedelta(days=90))
        with pytest.raises(ValueError, match="go together"):
            vault.erase("cust-3", customer_hash="h-3")
        assert vault.forget_erased(NOW - timedelta(days=61)) == 1
        assert vault.erased_at("h-1") == NOW and vault.erased_at("h-2") is None
    with Vault.open(tmp_path / "vault.sqlite") as vault:  # durable, seen by a new connection
        assert vault.erased_at("h-1") == NOW
