"""Retention through the service: Desk.cut on a real server, the admin API's CutRetention, and
`offerdesk audit cut`. The cut log still verifies against every checkpoint, restarts, answers
every named view, and forgets what it cut."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import grpc
import pytest
from offerdesk.v1 import audit_pb2 as apb
from offerdesk.v1 import audit_pb2_grpc as apb_grpc
from offerdesk.v1 import offerdesk_pb2 as pb
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc
from test_server import first_offer, request, ts

from audit.checkpoint import CheckpointLog, KeyRing
from audit.verify import verify_file
from audit.views import VIEWS, install_views, query_view
from service import policy
from service.errors import InvalidArgument
from service.server import start
from service.settings import Settings, load_settings
from service.simulator import World

PERIODS = {"decision": 400, "outcome": 400, "audit_access": 30}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, timeout=120
    )


def with_periods(settings: Settings, periods: dict[str, int], poll: float = 3600.0) -> Settings:
    """Settings with retention periods. The periodic cut runs on the background thread's
    first tick (reload_poll_seconds after start): an hour unless the test wants it."""
    return load_settings(
        None,
        data_dir=settings.data_dir,
        listen="127.0.0.1:0",
        reload_poll_seconds=poll,
        audit={"retention_days": periods},
    )


def test_the_running_service_applies_its_periods_by_itself_and_seals_the_cut(
    settings: Settings,
) -> None:
    settings = with_periods(settings, PERIODS, poll=0.2)
    running = start(settings)
    try:
        deadline = time.monotonic() + 20
        found = None
        while found is None and time.monotonic() < deadline:
            found = next(iter(running.desk.store.scan(kinds=["retention"])), None)
            time.sleep(0.1)
        assert found is not None, "no periodic cut within 20 s"
        assert found.body["requested_by"] == "offerdesk-service"
        assert found.body["retention_days"] == PERIODS
        sealed = running.checkpointer.latest  # type: ignore[union-attr]
        deadline = time.monotonic() + 5
        while (sealed is None or sealed.size <= found.seq) and time.monotonic() < deadline:
            time.sleep(0.05)
            sealed = running.checkpointer.latest  # type: ignore[union-attr]
        assert sealed is not None and sealed.size > found.seq
    finally:
        running.stop()


def checkpoints(settings: Settings) -> list:
    keys = KeyRing.open(settings.signing_key_dir, settings.audit.origin).verifier_keys()
    return [s.checkpoint for s in CheckpointLog.read(settings.checkpoint_path, keys)]


def cut_rows(settings: Settings) -> list[tuple]:
    with duckdb.connect(str(settings.audit_path), read_only=True) as con:
        return con.execute(
            "SELECT seq, kind, subject, ref FROM audit_records WHERE record = '' ORDER BY seq"
        ).fetchall()


def test_a_cut_on_the_running_service_forgets_what_it_cut_and_the_log_still_proves_itself(
    world: World, settings: Settings
) -> None:
    settings = with_periods(settings, PERIODS)
    running = start(settings)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = pb_grpc.OfferDeskStub(ch)
            cid, offer, key = first_offer(stub, world, settings, prefix="rt")
            stub.RecordOutcome(
                pb.RecordOutcomeRequest(
                    decision_id=offer.decision_id,
                    outcome=pb.ACCEPTED,
                    agent_id="agent-1",
                    occurred_at=ts(),
                )
            )
            later = datetime.now(UTC) + timedelta(days=401)
            # A dry run counts and writes nothing.
            size = running.desk.store.head()[0]
            due = running.desk.cut(PERIODS, "dpo-1", later, dry_run=True)
            assert running.desk.store.head()[0] == size
            assert due.count_by_kind["decision"] >= 1 and due.count_by_kind["outcome"] == 1
            summary = running.desk.cut(PERIODS, "dpo-1", later)
            assert summary.count_by_kind == due.count_by_kind
            assert summary.audit_sequence == size
            running.checkpointer.seal()  # type: ignore[union-attr]

            # Forgotten: read back, outcome and retried key behave as for a decision never made.
            with pytest.raises(grpc.RpcError) as got:
                stub.GetDecision(pb.GetDecisionRequest(decision_id=offer.decision_id))
            assert got.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as got:
                stub.RecordOutcome(
                    pb.RecordOutcomeRequest(
                        decision_id=offer.decision_id,
                        outcome=pb.DECLINED,
                        decline_reason=pb.BAD_TIMING,
                        agent_id="agent-1",
                        occurred_at=ts(),
                    )
                )
            assert got.value.code() == grpc.StatusCode.NOT_FOUND
            again = stub.Decide(request(world, cid, key))
            assert again.decision_id != offer.decision_id
    finally:
        running.stop()

    cut = cut_rows(settings)
    assert len(cut) == summary.count
    assert all(subject is None and ref is None for _, _, subject, ref in cut)
    assert {kind for _, kind, _, _ in cut} <= {"decision", "outcome"}
    report = verify_file(settings.audit_path, checkpoints(settings))
    assert report.ok, report.problem
    assert report.sealed == report.count  # the final seal covers the cut record too

    with duckdb.connect(str(settings.audit_path), read_only=True) as con:
        install_views(con)
        for view in VIEWS:
            query_view(con, view.name)  # none trips over a cut row
        cuts = query_view(con, "retention_cuts").records()
        decisions = {r["decision_id"] for r in query_view(con, "decisions").records()}
    assert [c["records_cut"] for c in cuts] == [summary.count]
    assert cuts[0]["requested_by"] == "dpo-1"
    assert offer.decision_id not in decisions and again.decision_id in decisions

    # The cut log starts again (the rebuild skips cut rows) and serves.
    running = start(settings)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = pb_grpc.OfferDeskStub(ch)
            got_again = stub.GetDecision(pb.GetDecisionRequest(decision_id=again.decision_id))
            assert got_again.decision_id == again.decision_id
    finally:
        running.stop()


def admin(settings: Settings, port: int) -> tuple[apb_grpc.AuditAdminStub, list, grpc.Channel]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    token = settings.audit_admin_token().decode()
    return apb_grpc.AuditAdminStub(channel), [("authorization", f"Bearer {token}")], channel


def test_the_admin_api_cuts_with_the_admin_token_and_refuses_bad_requests(
    settings: Settings,
) -> None:
    settings = with_periods(settings, PERIODS)
    running = start(settings)
    try:
        stub, auth, channel = admin(settings, running.port)
        with channel:
            size = running.desk.store.head()[0]
            dry = stub.CutRetention(
                apb.CutRetentionRequest(requested_by="dpo-1", dry_run=True), metadata=auth
            )
            assert json.loads(dry.json)["dry_run"] is True and dry.audit_sequence == 0
            assert running.desk.store.head()[0] == size
            done = stub.CutRetention(apb.CutRetentionRequest(requested_by="dpo-1"), metadata=auth)
            body = json.loads(done.json)
            # Nothing is 400 days old yet; the record still says the periods were applied.
            assert body["count"] == 0 and done.audit_sequence == size
            assert running.checkpointer.latest.size == size + 1  # type: ignore[union-attr]
            for request, token, code, field in (
                (
                    apb.CutRetentionRequest(requested_by="jane@example.com"),
                    auth,
                    "INVALID",
                    "requested_by",
                ),
                (apb.CutRetentionRequest(requested_by=""), auth, "INVALID", "requested_by"),
                (
                    apb.CutRetentionRequest(requested_by="dpo-1"),
                    [("authorization", f"Bearer {settings.audit_api_token().decode()}")],
                    "UNAUTHENTICATED",
                    "audit.admin_token",
                ),
            ):
                with pytest.raises(grpc.RpcError) as got:
                    stub.CutRetention(request, metadata=token)
                assert got.value.code().name.startswith(code)
                assert field in got.value.details()
            assert running.desk.store.head()[0] == size + 1  # the refused ones wrote nothing
    finally:
        running.stop()


def test_a_period_shorter_than_the_contact_policy_reads_back_is_refused(
    settings: Settings,
) -> None:
    running = start(settings)
    try:
        contact = running.desk.deployment.catalog.policy.contact
        short = {"outcome": policy.lookback_days(contact)}
        size = running.desk.store.head()[0]
        stub, auth, channel = admin(settings, running.port)
        with pytest.raises(InvalidArgument, match=r"audit.retention_days.outcome: .* too short"):
            running.desk.cut(short, "dpo-1", datetime.now(UTC))
        with channel, pytest.raises(grpc.RpcError) as got:
            stub.CutRetention(apb.CutRetentionRequest(requested_by="dpo-1"), metadata=auth)
        assert got.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "retention_days is empty" in got.value.details()
        assert running.desk.store.head()[0] == size
    finally:
        running.stop()


def test_cli_cut_offline_dry_run_then_cut_and_seal(settings: Settings, tmp_path: Path) -> None:
    running = start(settings)
    running.stop()  # a log with its deployment record, sealed
    config = tmp_path / "offerdesk.yaml"
    config.write_text(
        "audit:\n  retention_days:\n    decision: 400\n    audit_access: 30\n", encoding="utf-8"
    )
    common = ("--config", str(config), "--data-dir", str(settings.data_dir))
    out = cli("audit", "cut", "--requested-by", "dpo-1", "--dry-run", "--json", *common)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["count_by_kind"] == {"audit_access": 0, "decision": 0}
    size = verify_file(settings.audit_path).count
    out = cli("audit", "cut", "--requested-by", "dpo-1", "--yes", "--json", *common)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["audit_sequence"] == size
    report = verify_file(settings.audit_path, checkpoints(settings))
    assert report.ok and report.count == size + 1 and report.sealed == size + 1

    out = cli(
        "audit", "cut", "--requested-by", "dpo-1", "--yes", "--data-dir", str(settings.data_dir)
    )
    assert out.returncode == 2 and "retention_days is empty" in " ".join(out.stderr.split())
    config.write_text("audit:\n  retention_days:\n    consent: 400\n", encoding="utf-8")
    out = cli("audit", "cut", "--requested-by", "dpo-1", "--yes", *common)
    assert out.returncode != 0 and "retention_days.consent" in out.stderr
    assert verify_file(settings.audit_path).count == size + 1


def test_a_backlog_is_cut_in_steps_that_empty_the_same_rows_as_one_cut(tmp_path: Path) -> None:
    from audit import retention as audit_retention
    from audit.records import NewRecord
    from audit.store import AuditStore
    from service import retention

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    kinds = ("conversion", "audit_access", "deployment")
    records = [
        NewRecord(kinds[n % 3], t0 + timedelta(hours=20 * n), None, None, {"n": n})
        for n in range(150)
    ]
    periods = {"conversion": 30, "audit_access": 10}
    now = t0 + timedelta(days=130)
    emptied = []
    for name, step_rows in (("one", 10**6), ("steps", 7)):
        path = tmp_path / f"{name}.duckdb"
        with AuditStore.open(path) as store:
            store.append(records)
            due = store.due(audit_retention.cutoffs(periods, now))
            summary = retention.cut(store, periods, "dpo-1", now, None, step_rows=step_rows)
            assert summary.count_by_kind == due and summary.count == len(summary.cut_seqs) > 0
            assert store.due(audit_retention.cutoffs(periods, now)) == dict.fromkeys(periods, 0)
        with duckdb.connect(str(path), read_only=True) as con:
            cuts = con.execute(
                "SELECT seq, json_extract(record, '$.body.count')::INT FROM audit_records "
                "WHERE kind = 'retention' ORDER BY seq"
            ).fetchall()
            emptied.append(
                con.execute(
                    "SELECT seq FROM audit_records WHERE record = '' ORDER BY seq"
                ).fetchall()
            )
        assert summary.audit_sequence == cuts[-1][0]
        if name == "steps":
            assert len(cuts) >= summary.count // step_rows and max(n for _, n in cuts) <= 7
        else:
            assert len(cuts) == 1
        assert verify_file(path).ok
    assert emptied[0] == emptied[1]
