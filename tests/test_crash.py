"""Crashes of the real service: SIGKILLed under load and restarted it loses nothing it
acknowledged (the code of scripts/soak_kill9.py, which runs 200 kills, with fewer), and a log
left in a state that does not replay is not served, and not deleted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from offerdesk.v1 import offerdesk_pb2 as pb
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc
from script_loader import load_script
from test_audit_recovery import crash_after, sha256

from audit.recovery import QUARANTINE_DIR, wal_path
from audit.store import AuditStore
from service.server import SERVICE_NAME, start
from service.settings import Settings


def _soak() -> ModuleType:
    return load_script("soak_kill9")


@pytest.mark.slow
def test_acknowledged_decisions_and_outcomes_survive_kill_9_and_the_chain_verifies(
    data_dir: Path,
) -> None:
    result = _soak().run(data_dir, kills=6, seed=7, out=print)
    print(result.summary())
    assert result.kills == 6
    assert result.decisions > 0 and result.outcomes > 0  # the oracle is not empty
    assert result.lost == 0, result.problems
    assert result.verify_failures == 0 and result.refused_starts == 0, result.problems
    # every restart after a kill found a WAL and copied it aside before replaying it
    assert result.quarantine_copies == 6


def test_a_log_whose_wal_does_not_replay_is_not_served_and_nothing_is_deleted(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = settings.audit_path
    crash_after(path, 5)
    with AuditStore.open(tmp_path / "backup" / "audit.duckdb"):
        pass  # restored from an older backup, next to the newer WAL: it will not replay
    (tmp_path / "backup" / "audit.duckdb").replace(path)
    wal = wal_path(path)
    before = sha256(path), sha256(wal)
    running = start(settings)
    try:
        assert running.refusal is not None
        [copy] = (path.parent / QUARANTINE_DIR).iterdir()
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", SERVICE_NAME):
                status = health.Check(health_pb2.HealthCheckRequest(service=name)).status
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = pb_grpc.OfferDeskStub(channel)
            calls = [
                (stub.Decide, pb.DecideRequest(request_key="k")),
                (stub.RecordOutcome, pb.RecordOutcomeRequest(decision_id="d_1")),
                (stub.RecordConversion, pb.RecordConversionRequest(transaction_id="t")),
                (stub.GetDecision, pb.GetDecisionRequest(decision_id="d_1")),
            ]
            for method, req in calls:
                with pytest.raises(grpc.RpcError) as refused:
                    method(req, timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                details = refused.value.details() or ""
                for named in (str(path), str(wal), str(copy / wal.name), "docs/operations.md"):
                    assert named in details, (named, details)
    finally:
        running.stop()
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(running.refusal in m for m in logged)  # what `offerdesk serve` prints
    assert (sha256(path), sha256(wal)) == before
