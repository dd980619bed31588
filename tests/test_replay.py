"""Replay: a real server's log replays identically; changed inputs, catalogs and missing
versions are named per decision and field; the CLI's exit codes say which case it is."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

import duckdb
import grpc
import pytest
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc
from typer.testing import CliRunner

from audit.records import NewRecord, StoredRecord, canonical_json, parse_envelope
from audit.store import AuditStore
from audit.verify import export_parquet
from service.catalog import Catalog
from service.cli import app
from service.demo import decide_request
from service.registry import Registry
from service.replay import ABSENT, DecisionLog, parse_time, replay_records
from service.server import start
from service.settings import Settings, load_settings
from service.simulator import World, ticket_stream

DECISIONS = 40
DAY1 = datetime(2026, 11, 1, tzinfo=UTC)
# The re-dated log: records 0-9 on Nov 1, 10-24 on Nov 2 (the first exactly at midnight), the
# rest on Nov 3, where one offer decision has had its logged inputs changed.
DAYS = [0] * 10 + [1] * 15 + [2] * (DECISIONS - 25)


def _settings(root: Path, trained_dir: Path) -> Settings:
    shutil.copytree(trained_dir / "registry", root / "registry")
    shutil.copytree(trained_dir / "profiles", root / "profiles")
    return load_settings(None, data_dir=root, listen="127.0.0.1:0")


@pytest.fixture(scope="module")
def served(
    trained_dir: Path, world: World, catalog: Catalog, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Settings, list[str]]:
    """A data dir whose log holds DECISIONS decisions made by a real server, now stopped."""
    settings = _settings(tmp_path_factory.mktemp("served"), trained_dir)
    running = start(settings)
    try:
        events = ticket_stream(
            world, catalog, start=datetime.now(UTC) - timedelta(seconds=30), mean_gap_seconds=0.3
        )
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.OfferDeskStub(channel)
            ids = [stub.Decide(decide_request(e)).decision_id for e in islice(events, DECISIONS)]
    finally:
        running.stop()
    return settings, ids


@pytest.fixture(scope="module")
def records(served: tuple[Settings, list[str]]) -> list[StoredRecord]:
    with DecisionLog.open(served[0].audit_path) as log:
        return list(log)


@pytest.fixture(scope="module")
def registry(served: tuple[Settings, list[str]]) -> Registry:
    return Registry(served[0].registry_dir)


def _treated_offer(records: list[StoredRecord]) -> int:
    """Index of a decision that showed a card without exploring (HOLDOUT would hide it)."""
    return next(
        i
        for i, r in enumerate(records)
        if r.body["kind"] == "offer" and not r.body["explored"] and i >= DAYS.index(2)
    )


def _with_body(record: StoredRecord, body: dict[str, object]) -> StoredRecord:
    envelope = dict(parse_envelope(record.record))
    return dataclasses.replace(record, record=canonical_json({**envelope, "body": body}))


def _holdout_inputs(record: StoredRecord) -> dict[str, object]:
    body = record.body
    return {**body, "inputs": {**body["inputs"], "holdout_bucket": 0.0}}


@pytest.fixture(scope="module")
def dated(
    records: list[StoredRecord], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[StoredRecord], str]:
    """The served decisions written again through a real AuditStore, over three days, with
    one Nov 3 decision's logged inputs changed (its customer put in the holdout)."""
    tampered_index = _treated_offer(records)
    path = tmp_path_factory.mktemp("dated") / "audit.duckdb"
    with AuditStore.open(path) as store:
        stored = store.append(
            [
                NewRecord(
                    "decision",
                    DAY1 + timedelta(days=day, minutes=i - DAYS.index(day)),
                    r.subject,
                    r.ref,
                    _holdout_inputs(r) if i == tampered_index else r.body,
                )
                for i, (r, day) in enumerate(zip(records, DAYS, strict=True))
            ]
        )
    assert stored[10].recorded_at == DAY1 + timedelta(days=1)  # the range tests need this
    return path, stored, records[tampered_index].body["decision_id"]


def test_a_served_log_replays_identically(
    served: tuple[Settings, list[str]], records: list[StoredRecord], registry: Registry
) -> None:
    settings, ids = served
    with duckdb.connect(str(settings.audit_path), read_only=True) as con:
        kinds = dict(
            con.execute("SELECT kind, count(*) FROM audit_records GROUP BY kind").fetchall()
        )
    assert kinds["decision"] == DECISIONS and kinds["deployment"] >= 1  # not replayed
    with DecisionLog.open(settings.audit_path) as log:
        assert log.count() == DECISIONS
        report = replay_records(log, registry)
    assert (report.mismatches, report.missing, report.failures) == ((), (), ())
    assert report.ok and report.total == report.identical == DECISIONS
    assert sorted(r.body["decision_id"] for r in records) == sorted(ids)
    assert {r.body["kind"] for r in records} == {"offer", "no_offer"}


def test_date_bounds_select_recorded_at_in_a_half_open_range(
    dated: tuple[Path, list[StoredRecord], str], registry: Registry
) -> None:
    path, stored, _ = dated
    nov2, nov3 = DAY1 + timedelta(days=1), DAY1 + timedelta(days=2)
    with DecisionLog.open(path, since=nov2, until=nov3) as log:
        seqs = [r.seq for r in log]
        report = replay_records(log, registry)
    assert seqs == [r.seq for r in stored if nov2 <= r.recorded_at < nov3] == list(range(10, 25))
    assert report.ok and report.total == 15
    # One minute before midnight Nov 2 in UTC+01:00 is 22:59 on Nov 1 UTC: records 0-9 are
    # at 00:00-00:09 on Nov 1, so none of them is before it and the first of Nov 2 is after.
    since = parse_time("2026-11-02T00:00:00+01:00")
    assert since == nov2 - timedelta(hours=1)
    with DecisionLog.open(path, since=since, until=parse_time("2026-11-02"), limit=5) as log:
        assert log.count() == 0
    with DecisionLog.open(path, since=parse_time("2026-11-03"), limit=5) as log:
        assert log.count() == 5 and [r.seq for r in log] == [25, 26, 27, 28, 29]


def test_changed_logged_inputs_are_named_by_field(
    dated: tuple[Path, list[StoredRecord], str], registry: Registry
) -> None:
    path, stored, decision_id = dated
    with DecisionLog.open(path) as log:
        report = replay_records(log, registry)
    assert (report.total, report.identical, report.mismatched) == (DECISIONS, DECISIONS - 1, 1)
    assert {m.decision_id for m in report.mismatches} == {decision_id}
    found = {m.path: (m.logged, m.replayed) for m in report.mismatches}
    # In the holdout the would-be offer is still scored and logged; only the card goes.
    assert set(found) == {"group", "kind", "no_offer_reason", "agent_message", "card"}
    assert found["group"] == ("treated", "holdout")
    assert found["kind"] == ("offer", "no_offer")
    assert found["no_offer_reason"] == (None, "HOLDOUT")
    assert isinstance(found["card"][0], dict) and found["card"][1] is None
    assert report.field_counts == dict.fromkeys(sorted(found), 1)
    seq = next(r.seq for r in stored if r.ref == decision_id)
    assert {m.seq for m in report.mismatches} == {seq}


def test_a_catalog_changed_under_its_version_is_named_by_field(
    records: list[StoredRecord], served: tuple[Settings, list[str]], tmp_path: Path
) -> None:
    shutil.copytree(served[0].registry_dir, tmp_path / "registry")
    registry = Registry(tmp_path / "registry")
    shown = Counter(r.body["card"]["offer_name"] for r in records if r.body["card"])
    name, cards = shown.most_common(1)[0]
    version = records[0].body["catalog_version"]
    file = registry.catalogs_dir / f"{version}.yaml"
    source = file.read_text()
    assert source.count(f"    name: {name}\n") == 1
    file.write_text(source.replace(f"    name: {name}\n", f"    name: {name} (renamed)\n"))

    report = replay_records(records, registry)

    assert report.mismatched == DECISIONS and report.identical == 0
    assert report.field_counts == {"catalog_version": DECISIONS, "card.offer_name": cards}
    renamed = [m for m in report.mismatches if m.path == "card.offer_name"]
    assert {(m.logged, m.replayed) for m in renamed} == {(name, f"{name} (renamed)")}
    altered = {m.replayed for m in report.mismatches if m.path == "catalog_version"}
    assert len(altered) == 1 and altered != {version}


def test_a_missing_model_version_is_reported_for_its_decision_only(
    records: list[StoredRecord], registry: Registry
) -> None:
    gone = "mdl-0000000000000000"
    odd = records[3]
    changed = [
        _with_body(odd, {**odd.body, "model_version": gone}) if r is odd else r for r in records
    ]

    report = replay_records(changed, registry)

    assert (report.total, report.identical, report.not_replayed) == (DECISIONS, DECISIONS - 1, 1)
    assert report.missing_versions == {gone: 1} and not report.mismatches
    (missing,) = report.missing
    assert (missing.decision_id, missing.seq, missing.what, missing.version) == (
        odd.body["decision_id"],
        odd.seq,
        "model",
        gone,
    )
    assert "not in the registry" in missing.problem and not report.ok


def test_details_are_capped_but_counts_are_exact(
    records: list[StoredRecord], registry: Registry
) -> None:
    changed = [_with_body(r, _holdout_inputs(r)) for r in records]
    report = replay_records(changed, registry, max_details=3)
    assert len(report.mismatches) == 3
    moved = sum(r.body["group"] == "treated" for r in records)
    assert report.mismatched == report.field_counts["group"] == moved > 3
    assert report.mismatches[0].to_record().keys() == {
        "decision_id",
        "seq",
        "path",
        "logged",
        "replayed",
    }


def test_a_field_on_one_side_only_or_of_another_type_differs(
    records: list[StoredRecord], registry: Registry
) -> None:
    odd = records[0]
    body = {k: v for k, v in odd.body.items() if k != "contact"}
    body["inputs"] = {**body["inputs"], "from_a_newer_service": True}
    body["explored"] = int(body["explored"])  # 0 == False in Python, not in the log
    report = replay_records([_with_body(odd, body)], registry)
    found = {m.path: m for m in report.mismatches}
    assert set(found) == {"contact", "explored", "inputs.from_a_newer_service"}
    assert found["contact"].logged is ABSENT and "logged" not in found["contact"].to_record()
    assert found["inputs.from_a_newer_service"].replayed is ABSENT


def test_a_parquet_export_replays_like_the_file(
    dated: tuple[Path, list[StoredRecord], str], registry: Registry, tmp_path: Path
) -> None:
    path, _, decision_id = dated
    out = tmp_path / "audit.parquet"
    assert export_parquet(path, out) == DECISIONS
    with DecisionLog.open(out, parquet=True, since=parse_time("2026-11-02")) as log:
        report = replay_records(log, registry)
    assert (report.total, report.mismatched) == (DECISIONS - 10, 1)
    assert report.mismatches[0].decision_id == decision_id


# -- the command line -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_dir(
    served: tuple[Settings, list[str]], dated: tuple[Path, list[StoredRecord], str]
) -> Path:
    """A data dir with the served registry and the re-dated log as its audit log."""
    root = dated[0].parent / "var"
    shutil.copytree(served[0].registry_dir, root / "registry")
    shutil.copy(dated[0], root / "audit.duckdb")
    return root


def replay(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["audit", "replay", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, result.stdout, result.stderr


def test_cli_exits_0_when_every_decision_in_range_replays(cli_dir: Path) -> None:
    code, out, _ = replay("--data-dir", str(cli_dir), "--from", "2026-11-01", "--to", "2026-11-03")
    assert code == 0
    assert "replayed 25 decisions" in out and "25 identical, 0 mismatched" in out


def test_cli_exits_1_and_names_the_field(cli_dir: Path, dated: tuple[Path, list, str]) -> None:
    code, out, _ = replay("--data-dir", str(cli_dir))
    assert code == 1
    assert f"{dated[2]} (seq " in out and "  group\n" in out
    assert '    logged:   "treated"\n    replayed: "holdout"' in out

    code, out, _ = replay(
        "--db", str(dated[0]), "--data-dir", str(cli_dir), "--json", "--limit", "31"
    )
    report = json.loads(out)
    assert code == 1 and report["total"] == 31 and report["mismatched"] == 1
    assert (
        report["field_counts"]["group"] == 1 and report["mismatches"][0]["decision_id"] == dated[2]
    )


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--from", "yesterday"], "--from"),
        (["--from", "2026-11-03", "--to", "2026-11-02"], "--to"),
        (["--db", "a.duckdb", "--export", "a.parquet"], "--db, --export"),
        (["--db", "nowhere.duckdb"], "--db"),
        (["--limit", "0"], "--limit"),
    ],
)
def test_cli_exits_2_and_names_the_option(cli_dir: Path, args: list[str], option: str) -> None:
    code, _, err = replay("--data-dir", str(cli_dir), *args)
    assert code == 2 and option in err


def test_cli_exits_2_for_a_file_of_the_wrong_kind(cli_dir: Path) -> None:
    code, _, err = replay("--data-dir", str(cli_dir), "--export", str(cli_dir / "audit.duckdb"))
    assert code == 2 and "--export" in err and "not a Parquet file" in err


@pytest.fixture
def running_dir(trained_dir: Path, tmp_path: Path) -> Iterator[Path]:
    settings = _settings(tmp_path / "var", trained_dir)
    running = start(settings)
    yield settings.data_dir
    running.stop()


def test_cli_exits_3_while_the_service_holds_the_log(running_dir: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "audit", "replay", "--data-dir", str(running_dir)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 3, out.stderr
    assert "held by another process" in out.stderr and "--export" in out.stderr
    assert "Traceback" not in out.stderr


def test_shap_values_match_to_a_tolerance_and_every_other_float_bit_for_bit() -> None:
    """The same exact SHAP values come from CatBoost's call or from the leaf table, which may
    differ in the last bit; anything else that differs in the last bit is a mismatch."""
    from service.replay import _diff

    x = 0.1 + 0.2
    nudged = math.nextafter(x, 1.0)
    assert nudged != x and abs(nudged - x) < 1e-15
    logged = {
        "card": {
            "shap": {"values": {"seats": x}, "expected": x},
            "reasons": [{"contribution": x}],
            "p_accept": x,
        }
    }
    replayed = {
        "card": {
            "shap": {"values": {"seats": nudged}, "expected": nudged},
            "reasons": [{"contribution": nudged}],
            "p_accept": nudged,
        }
    }
    found: list[tuple[str, object, object]] = []
    _diff(logged["card"], replayed["card"], "card", found, new_keys_ok=False)
    assert [path for path, _, _ in found] == ["card.p_accept"]
