"""The named compliance views, on a log written by a real server and on its Parquet export.

Each view is checked against what was played through the server and against the records'
own JSON; the "must be empty" views are also shown to fill up when the log holds the breach
(records appended through the real AuditStore), so an empty answer means something.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from audit_log_fixture import ServedLog, served_log

from audit.errors import AuditError, AuditLocked
from audit.records import NewRecord, decode_time
from audit.store import AuditStore
from audit.verify import export_parquet, verify_file
from audit.views import (
    NEEDS_CAPS,
    VIEWS,
    ContactCaps,
    attach_source,
    catalog_versions,
    install_views,
    open_source,
    query_view,
)
from service.catalog import Catalog
from service.policy import ContactEvent
from service.simulator import World

DOC = Path(__file__).resolve().parent.parent / "docs" / "compliance.md"


@pytest.fixture(scope="module")
def served(trained_dir: Path, world: World, tmp_path_factory: pytest.TempPathFactory) -> ServedLog:
    return served_log(trained_dir, world, tmp_path_factory)


@pytest.fixture(scope="module")
def caps(catalog: Catalog) -> list[ContactCaps]:
    contact = catalog.policy.contact
    return [ContactCaps(catalog.version, contact.window_days, contact.max_offers)]


@pytest.fixture
def log_con(served: ServedLog, caps: list[ContactCaps]) -> Iterator[duckdb.DuckDBPyConnection]:
    con = open_source(served.settings.audit_path, caps)
    yield con
    con.close()


def rows(con: duckdb.DuckDBPyConnection, name: str) -> list[dict[str, Any]]:
    return query_view(con, name).records()


def bodies(con: duckdb.DuckDBPyConnection, kind: str) -> dict[int, dict[str, Any]]:
    found = con.execute(
        "SELECT seq, record FROM audit_records WHERE kind = ? ORDER BY seq", [kind]
    ).fetchall()
    return {seq: json.loads(record)["body"] for seq, record in found}


def copy_log(served: ServedLog, tmp_path: Path) -> Path:
    path = tmp_path / "audit.duckdb"
    shutil.copy(served.settings.audit_path, path)
    return path


def test_every_view_gives_the_same_answer_on_the_file_and_its_parquet_export(
    served: ServedLog, caps: list[ContactCaps], log_con: duckdb.DuckDBPyConnection
) -> None:
    exported = open_source(served.parquet, caps)
    try:
        for view in VIEWS:
            on_file = query_view(log_con, view.name)
            on_parquet = query_view(exported, view.name)
            assert on_file.columns == on_parquet.columns, view.name
            assert sorted(map(repr, on_file.rows)) == sorted(map(repr, on_parquet.rows)), view.name
    finally:
        exported.close()
    assert len(query_view(log_con, "decisions").rows) > 100


def test_decisions_view_is_each_decision_record_flattened(
    served: ServedLog, log_con: duckdb.DuckDBPyConnection
) -> None:
    records = bodies(log_con, "decision")
    flat = {r["seq"]: r for r in rows(log_con, "decisions")}
    assert flat.keys() == records.keys()
    for seq, body in records.items():
        row, card = flat[seq], body["card"] or {}
        assert row["decision_id"] == body["decision_id"]
        assert (row["kind"], row["no_offer_reason"]) == (body["kind"], body["no_offer_reason"])
        assert (row["decision_group"], row["explored"]) == (body["group"], body["explored"])
        assert row["propensity"] == body["propensity"]
        assert row["offer_id"] == card.get("offer_id")
        assert row["variant_id"] == card.get("variant_id")
        assert row["price_minor"] == card.get("price_minor")
        assert row["discount_bps"] == card.get("discount_bps")
        assert row["firing_rule_id"] == (card.get("firing_rule") or {}).get("id")
        assert (row["model_version"], row["catalog_version"]) == (
            body["model_version"],
            body["catalog_version"],
        )
        assert row["trace_id"] == body["trace_id"] and len(row["trace_id"]) == 32
        assert decode_time(row["recorded_at"]) == decode_time(body["inputs"]["now"])
    # The view agrees with what the server answered.
    for did, reply in served.offers.items():
        row = next(r for r in flat.values() if r["decision_id"] == did)
        assert (row["offer_id"], row["variant_id"]) == (reply.card.offer_id, reply.card.variant.id)
        assert row["firing_rule_id"] == reply.card.firing_rule.id


def test_outcomes_conversions_and_consents_views_flatten_every_record(
    served: ServedLog, log_con: duckdb.DuckDBPyConnection
) -> None:
    outcomes = {r["decision_id"]: r for r in rows(log_con, "outcomes")}
    assert {d: o["outcome"] for d, o in outcomes.items()} == served.outcomes
    assert {o["agent_id"] for o in outcomes.values()} == {"agent-7"}
    assert all(
        (o["decline_reason"] == "too_expensive") == (o["outcome"] == "declined")
        for o in outcomes.values()
    )
    (conversion,) = rows(log_con, "conversions")
    assert served.converted is not None
    offer = served.offers[served.converted[1]].card
    assert (conversion["product"], conversion["amount_minor"], conversion["currency"]) == (
        offer.product,
        offer.variant.price.amount_minor,
        "USD",
    )
    consents = rows(log_con, "consents")
    assert len(consents) == len(bodies(log_con, "consent"))
    assert {c["marketing_consent"] for c in consents} == {True, False}


def test_no_offer_reaches_a_customer_whose_last_consent_is_not_true(
    served: ServedLog, log_con: duckdb.DuckDBPyConnection
) -> None:
    assert rows(log_con, "offers_to_opted_out") == []
    # Not empty for want of opt-outs: they were seen, chained as false, and refused.
    refused = [
        r
        for r in rows(log_con, "decisions")
        if r["no_offer_reason"] == "OPTED_OUT" and r["consent_in_inputs"] is False
    ]
    assert len(refused) >= len(served.opted_out) > 0
    false_subjects = {c["subject"] for c in rows(log_con, "consents") if not c["marketing_consent"]}
    assert {r["subject"] for r in refused} <= false_subjects


def _offer_body(con: duckdb.DuckDBPyConnection, subject: str | None = None) -> dict[str, Any]:
    sql = "SELECT subject, record FROM audit_records WHERE kind = 'decision'"
    found = con.execute(sql).fetchall()
    for who, record in found:
        body = json.loads(record)["body"]
        if body["kind"] == "offer" and (subject is None or who == subject):
            return {"subject": who, **body}
    raise AssertionError("no offer in the log")


def _append(path: Path, records: list[NewRecord]) -> list[int]:
    with AuditStore.open(path) as store:
        return [r.seq for r in store.append(records)]


def _decision(subject: str, body: dict[str, Any], at: datetime, n: int) -> NewRecord:
    body = {k: v for k, v in body.items() if k != "subject"}
    body["decision_id"] = f"d_{n:032x}"
    body["request_key_hash"] = f"{n:064x}"
    return NewRecord("decision", at, subject, body["decision_id"], body)


def test_an_offer_after_an_opt_out_is_listed_and_one_after_opting_in_again_is_not(
    served: ServedLog, caps: list[ContactCaps], tmp_path: Path
) -> None:
    path = copy_log(served, tmp_path)
    with open_source(path, caps) as con:
        body = _offer_body(con)
    who, now = body["subject"], datetime.now(UTC)

    def consent(value: bool) -> NewRecord:
        fields = {"marketing_consent": value, "observed_at": "2026-01-01T00:00:00.000000Z"}
        return NewRecord("consent", now, who, None, {**fields, "source": "profile_refresh"})

    seqs = _append(
        path,
        [consent(False), _decision(who, body, now, 1), consent(True), _decision(who, body, now, 2)],
    )
    assert verify_file(path).ok
    with open_source(path, caps) as con:
        (row,) = rows(con, "offers_to_opted_out")
    assert row["seq"] == seqs[1] and row["decision_id"] == f"d_{1:032x}"
    assert row["last_consent"] is False and row["consent_seq"] == seqs[0]


def test_contacts_per_window_counts_what_the_policy_counted_and_no_cap_was_passed(
    served: ServedLog, catalog: Catalog, log_con: duckdb.DuckDBPyConnection
) -> None:
    contact = catalog.policy.contact
    records = bodies(log_con, "decision")
    window = rows(log_con, "contacts_per_window")
    assert len(window) == len(served.offers)
    for row in window:
        body = records[row["seq"]]
        now = decode_time(body["inputs"]["now"])
        seen = [ContactEvent.from_record(e) for e in body["inputs"]["history"]]
        counted = sum(
            1
            for e in seen
            if e.counts_as_contact
            and e.offered_at <= now
            and now - e.offered_at < timedelta(days=contact.window_days)
        )
        assert row["earlier_offers"] == counted, row
        assert (row["window_days"], row["max_offers"]) == (contact.window_days, contact.max_offers)
    assert rows(log_con, "contact_cap_breaches") == []
    # The cap was reached (so the empty answer is not for want of trying), and a not-presented
    # offer let a customer be shown one more than the cap without passing it.
    assert served.capped and max(r["offers_in_window"] for r in window) == contact.max_offers
    shown: dict[str, int] = {}
    for did in served.offers:
        shown[served.customer_of[did]] = shown.get(served.customer_of[did], 0) + 1
    assert max(shown.values()) > contact.max_offers


def test_an_offer_over_the_cap_is_a_breach(
    served: ServedLog, caps: list[ContactCaps], tmp_path: Path
) -> None:
    path = copy_log(served, tmp_path)
    with open_source(path, caps) as con:
        full = next(r for r in rows(con, "contacts_per_window") if r["offers_in_window"] == 2)
        body = _offer_body(con, full["subject"])
    (seq,) = _append(path, [_decision(full["subject"], body, datetime.now(UTC), 3)])
    with open_source(path, caps) as con:
        (breach,) = rows(con, "contact_cap_breaches")
    assert breach["seq"] == seq and breach["offers_in_window"] == 3
    assert breach["problem"] == "over the cap"


def test_without_the_caps_every_offer_is_reported_as_unchecked(
    served: ServedLog, log_con: duckdb.DuckDBPyConnection
) -> None:
    with open_source(served.parquet) as con:
        unchecked = rows(con, "contact_cap_breaches")
        assert catalog_versions(con) == [unchecked[0]["catalog_version"]]
    assert len(unchecked) == len(served.offers)
    assert {r["problem"] for r in unchecked} == {"cap unknown for this catalog version"}
    assert {"contacts_per_window", "contact_cap_breaches"} == NEEDS_CAPS


def test_summaries_add_up_to_the_flat_views(log_con: duckdb.DuckDBPyConnection) -> None:
    decisions = rows(log_con, "decisions")
    outcomes = rows(log_con, "outcomes")
    (model,) = rows(log_con, "decisions_by_model")
    assert model["decisions"] == len(decisions)
    assert model["offers"] == sum(d["kind"] == "offer" for d in decisions)
    assert model["offers"] + model["no_offers"] == len(decisions)
    assert model["holdouts"] == sum(d["decision_group"] == "holdout" for d in decisions)
    assert model["first_at"] == min(d["recorded_at"] for d in decisions)
    no_offers = rows(log_con, "no_offers_by_reason")
    assert sum(r["decisions"] for r in no_offers) == model["no_offers"]
    assert {"OPTED_OUT", "CONTACT_LIMIT"} <= {r["no_offer_reason"] for r in no_offers}
    declines = rows(log_con, "declines_by_reason")
    assert sum(r["declines"] for r in declines) == sum(o["outcome"] == "declined" for o in outcomes)
    assert {r["decline_reason"] for r in declines} == {"too_expensive"}
    discounted = [d for d in decisions if d["kind"] == "offer" and d["discount_bps"]]
    given = rows(log_con, "discounts_given")
    assert sum(r["offered"] for r in given) == len(discounted)
    assert sum(r["discount_offered_minor"] for r in given) == sum(
        d["list_price_minor"] - d["price_minor"] for d in discounted
    )
    accepted = {o["decision_id"] for o in outcomes if o["outcome"] == "accepted"}
    taken = sum(d["decision_id"] in accepted for d in discounted)
    assert sum(r["accepted"] for r in given) == taken
    assert all(re.fullmatch(r"\d{4}-\d{2}-01", r["month"]) for r in given)


def test_audit_access_records_are_listed_by_caller_and_method(
    served: ServedLog, tmp_path: Path
) -> None:
    path = copy_log(served, tmp_path)
    with open_source(path) as con:
        assert rows(con, "audit_access") == []
    body = {"method": "Why", "caller": "tok_0123456789ab", "arguments": {"offer": "sso"}, "rows": 4}
    (seq,) = _append(path, [NewRecord("audit_access", datetime.now(UTC), None, None, body)])
    with open_source(path) as con:
        (row,) = rows(con, "audit_access")
    assert row["seq"] == seq and row["method"] == "Why" and row["caller"] == "tok_0123456789ab"
    assert row["arguments"] == {"offer": "sso"} and row["rows"] == 4


def test_views_run_on_a_read_only_file_and_on_the_running_stores_reader(
    served: ServedLog, caps: list[ContactCaps], tmp_path: Path, log_con: duckdb.DuckDBPyConnection
) -> None:
    expected = query_view(log_con, "decisions_by_model").rows
    path = copy_log(served, tmp_path)
    with duckdb.connect(str(path), read_only=True) as con:
        install_views(con, caps)
        assert query_view(con, "decisions_by_model").rows == expected
    with AuditStore.open(path) as store:
        reader = store.reader()
        try:
            install_views(reader, caps)
            assert query_view(reader, "decisions_by_model").rows == expected
            assert query_view(reader, "contact_cap_breaches").rows == ()
        finally:
            reader.close()
        with pytest.raises(AuditLocked, match="open in this process"):
            open_source(path)


def test_a_file_that_is_not_an_audit_log_is_refused_with_its_name(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(AuditError, match="neither a DuckDB audit file nor a Parquet"):
        open_source(junk)
    with pytest.raises(AuditError, match=r"without records\.parquet"):
        open_source(tmp_path)
    other = tmp_path / "other.parquet"
    duckdb.connect().execute(f"COPY (SELECT 1 AS x) TO '{other}' (FORMAT parquet)")
    with pytest.raises(AuditError, match="cannot read as an audit log"):
        open_source(other)
    with pytest.raises(AuditError, match="no such file"):
        open_source(tmp_path / "missing.duckdb")


def test_an_export_segment_directory_is_read_through_its_records_file(
    served: ServedLog, log_con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    segment = tmp_path / "segment-000000000100"
    segment.mkdir()
    shutil.copy(served.parquet, segment / "records.parquet")
    with duckdb.connect() as con:
        attach_source(con, segment)
        install_views(con)
        assert query_view(con, "consents").rows == query_view(log_con, "consents").rows


def test_bad_arguments_name_what_is_wrong(log_con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(ValueError, match=r"view: no view named 'nope'; known views: decisions"):
        query_view(log_con, "nope")
    with pytest.raises(ValueError, match="limit"):
        query_view(log_con, "decisions", limit=0)
    assert len(query_view(log_con, "decisions", limit=3).rows) == 3
    with pytest.raises(ValueError, match="window_days"):
        ContactCaps("cat-x", 0, 2)
    with pytest.raises(ValueError, match="max_offers"):
        ContactCaps("cat-x", 30, -1)
    with pytest.raises(ValueError, match="caps: one ContactCaps per catalog_version"):
        install_views(log_con, [ContactCaps("cat-x", 30, 2), ContactCaps("cat-x", 7, 1)])
    with duckdb.connect() as empty, pytest.raises(AuditError, match="audit_records"):
        install_views(empty)


def _doc_sql() -> dict[str, str]:
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    named = {}
    for block in blocks:
        m = re.match(r"CREATE OR REPLACE TEMP (?:VIEW|TABLE) (\w+)", block)
        if m:
            named[m.group(1)] = block.rstrip("\n")
    return named


def test_the_sql_in_docs_compliance_is_the_sql_the_code_runs() -> None:
    from audit.views import CONTACT_CAPS_SQL

    documented = _doc_sql()
    expected = {view.name: view.sql for view in VIEWS} | {"contact_caps": CONTACT_CAPS_SQL}
    assert documented.keys() == expected.keys()
    for name, sql in expected.items():
        assert documented[name] == sql, f"docs/compliance.md's {name} differs from audit/views.py"


def test_the_benchmark_builder_writes_a_valid_log_the_views_can_read(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    try:
        import build_big_log
    finally:
        sys.path.pop(0)
    path = tmp_path / "big.duckdb"
    n = build_big_log.build(path, decisions=400, customers=60, seed=3)
    report = verify_file(path)
    assert report.ok and report.count == n
    with pytest.raises(FileExistsError):
        build_big_log.build(path, decisions=1, customers=1)
    export_parquet(path, tmp_path / "big.parquet")
    with open_source(tmp_path / "big.parquet") as con:
        (model,) = rows(con, "decisions_by_model")
        assert model["decisions"] == 400
        assert rows(con, "offers_to_opted_out") == []
