"""`why` on a log written by a real server: each customer's decisions, exactly as logged, with
their outcomes and linked purchases, filtered by offer and time, the same on a Parquet export."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from audit_log_fixture import ServedLog, served_log

from audit.errors import AuditError
from audit.vault import Vault
from audit.views import open_source
from audit.why import DecisionWhy, document, why
from service.simulator import World


@pytest.fixture(scope="module")
def served(trained_dir: Path, world: World, tmp_path_factory: pytest.TempPathFactory) -> ServedLog:
    return served_log(trained_dir, world, tmp_path_factory)


@pytest.fixture(scope="module")
def pseudonyms(served: ServedLog) -> dict[str, str]:
    with Vault.open(served.settings.vault_path) as vault:
        found = {cid: vault.lookup(cid) for cid in set(served.customer_of.values())}
    assert all(found.values())
    return {cid: p for cid, p in found.items() if p is not None}


@pytest.fixture
def con(served: ServedLog) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = open_source(served.settings.audit_path)
    yield connection
    connection.close()


def decisions_of(served: ServedLog, cid: str) -> list[str]:
    return [d for d, c in served.customer_of.items() if c == cid]  # in the order they were made


def test_why_gives_every_decision_of_the_customer_as_the_server_made_it(
    served: ServedLog, pseudonyms: dict[str, str], con: duckdb.DuckDBPyConnection
) -> None:
    for cid, pseudonym in pseudonyms.items():
        found = why(con, [pseudonym])
        assert [d.decision_id for d in found] == decisions_of(served, cid)
        assert [d.seq for d in found] == sorted(d.seq for d in found)
        for d in found:
            assert d.subject == pseudonym
            reply = served.offers.get(d.decision_id)
            assert (d.kind == "offer") == (reply is not None)
            assert d.model_version.startswith("mdl-") and d.catalog_version.startswith("cat-")
            assert d.actions[-1]["action"] == "no_offer" and d.inputs["customer"] is not None
            if reply is not None:
                assert (d.offer_id, d.variant_id) == (reply.card.offer_id, reply.card.variant.id)
                assert d.firing_rule is not None
                assert d.firing_rule["id"] == reply.card.firing_rule.id
                assert [r["text"] for r in d.reasons] == [r.text for r in reply.card.reasons]
                assert d.policy_action == f"{d.offer_id}/{d.variant_id}"
                assert any(a["action"] == d.policy_action for a in d.actions)
            recorded = served.outcomes.get(d.decision_id)
            assert (d.outcome.outcome if d.outcome else None) == recorded
            if d.outcome is not None:
                assert d.outcome.agent_id == "agent-7" and d.outcome.occurred_at >= d.decided_at


def test_a_purchase_is_linked_to_the_offer_of_that_product_before_it(
    served: ServedLog, pseudonyms: dict[str, str], con: duckdb.DuckDBPyConnection
) -> None:
    assert served.converted is not None
    cid, did = served.converted
    found = why(con, [pseudonyms[cid]])
    linked = {d.decision_id: d.conversions for d in found}
    (bought,) = linked.pop(did)
    assert bought.product == served.offers[did].card.product and bought.currency == "USD"
    assert all(not c for c in linked.values())


def test_offer_and_time_filters_narrow_the_answer(
    served: ServedLog, pseudonyms: dict[str, str], con: duckdb.DuckDBPyConnection
) -> None:
    cid = served.capped[0]
    everything = why(con, [pseudonyms[cid]])
    assert len(everything) >= 4
    third = everything[2].decided_at
    assert why(con, [pseudonyms[cid]], since=third) == everything[2:]
    assert why(con, [pseudonyms[cid]], until=third) == everything[:2]  # until is exclusive
    shown = next(d for d in everything if d.offer_id is not None)
    about = why(con, [pseudonyms[cid]], offer=shown.offer_id)
    assert shown in about and all(d.mentions(shown.offer_id) for d in about)
    assert why(con, [pseudonyms[cid]], offer="no-such-offer") == []
    later = datetime.now(UTC) + timedelta(days=1)
    assert why(con, [pseudonyms[cid]], since=later) == []


def test_several_pseudonyms_are_answered_together_in_log_order(
    pseudonyms: dict[str, str], con: duckdb.DuckDBPyConnection
) -> None:
    a, b = sorted(pseudonyms.values())[:2]
    both = why(con, [a, b])
    assert sorted(d.seq for d in both) == [d.seq for d in both]
    assert {d.decision_id for d in both} == {d.decision_id for d in why(con, [a]) + why(con, [b])}


def test_the_parquet_export_gives_the_same_documents(
    served: ServedLog, pseudonyms: dict[str, str], con: duckdb.DuckDBPyConnection
) -> None:
    exported = open_source(served.parquet)
    try:
        for pseudonym in sorted(pseudonyms.values())[:10]:
            on_file = document(why(con, [pseudonym]), [pseudonym])
            on_parquet = document(why(exported, [pseudonym]), [pseudonym])
            assert on_file == on_parquet
            assert json.loads(json.dumps(on_file)) == on_file  # plain JSON all the way down
    finally:
        exported.close()


def test_the_document_carries_what_a_compliance_officer_asks_for(
    served: ServedLog, pseudonyms: dict[str, str], con: duckdb.DuckDBPyConnection
) -> None:
    assert served.converted is not None
    cid, did = served.converted
    since = datetime(2020, 1, 1, tzinfo=UTC)
    doc = document(why(con, [pseudonyms[cid]], since=since), [pseudonyms[cid]], since=since)
    assert doc["since"] == "2020-01-01T00:00:00.000000Z" and doc["until"] is None
    shown = next(d for d in doc["decisions"] if d["decision_id"] == did)
    for key in ("inputs", "actions", "reasons", "firing_rule", "model_version", "propensity"):
        assert shown[key] is not None, key
    assert shown["outcome"]["outcome"] == "accepted" and shown["outcome"]["agent_id"] == "agent-7"
    assert shown["conversions"][0]["product"] == served.offers[did].card.product
    assert cid not in json.dumps(doc)  # pseudonyms only


def test_bad_arguments_are_refused_naming_the_argument(con: duckdb.DuckDBPyConnection) -> None:
    ok = "p_" + "a" * 26
    with pytest.raises(ValueError, match="subjects: at least one"):
        why(con, [])
    with pytest.raises(ValueError, match="subjects: 'acct-1' is not a pseudonym"):
        why(con, ["acct-1"])
    with pytest.raises(TypeError, match="subjects"):
        why(con, ok)
    with pytest.raises(ValueError, match="since: must be a timezone-aware"):
        why(con, [ok], since=datetime(2026, 1, 1))
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="since/until"):
        why(con, [ok], since=now, until=now)
    with pytest.raises(ValueError, match="offer"):
        why(con, [ok], offer="")
    assert why(con, [ok]) == []
    with duckdb.connect() as empty, pytest.raises(AuditError, match="audit_records"):
        why(empty, [ok])


def test_decision_why_is_a_plain_value(
    pseudonyms: dict[str, str], con: duckdb.DuckDBPyConnection
) -> None:
    found = why(con, [next(iter(pseudonyms.values()))])
    assert found and all(isinstance(d, DecisionWhy) for d in found)
    with pytest.raises(AttributeError):
        found[0].kind = "offer"  # type: ignore[misc]
