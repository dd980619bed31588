"""The audit API of a running server: token, every access logged, the same answers as the
offline commands, proofs that check with public keys only, and a final checkpoint at stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import grpc
import pytest
from offerdesk.v1 import audit_pb2 as apb
from offerdesk.v1 import audit_pb2_grpc as apb_grpc
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc

from audit.checkpoint import CheckpointLog, KeyRing
from audit.proofs import CheckedConsistency, CheckedInclusion, check_document
from audit.verify import verify_file
from service.server import Running
from service.settings import Settings
from service.simulator import World
from tests.test_server import request, treated_customers


@pytest.fixture
def audit_stub(server: Running) -> Iterator[apb_grpc.AuditStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield apb_grpc.AuditStub(channel)


@pytest.fixture
def decided(stub: pb_grpc.OfferDeskStub, world: World, settings: Settings) -> list[Any]:
    """Six decisions for two treated customers; returns (customer id, response) pairs."""
    out = []
    for i, cid in enumerate(treated_customers(world, settings)[:2]):
        for n in range(3):
            out.append((cid, stub.Decide(request(world, cid, f"api-{i}-{n}"))))
    return out


def auth(settings: Settings) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {settings.audit_api_token().decode()}")]


def access_records(server: Running) -> list[dict[str, Any]]:
    return [r.body for r in server.desk.store.scan(kinds=["audit_access"])]


def keys(settings: Settings) -> list[Any]:
    return KeyRing.open(settings.signing_key_dir).verifier_keys()


def test_calls_without_the_token_are_refused_and_leave_no_trace(
    audit_stub: apb_grpc.AuditStub, server: Running, settings: Settings
) -> None:
    before = server.desk.store.head()
    for metadata in ([], [("authorization", "Bearer " + "0" * 64)], [("authorization", "x")]):
        with pytest.raises(grpc.RpcError) as e:
            audit_stub.Status(apb.StatusRequest(), metadata=metadata)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization" in (e.value.details() or "")
    assert server.desk.store.head() == before


def test_every_access_is_a_chained_record_naming_the_token_not_holding_it(
    audit_stub: apb_grpc.AuditStub, server: Running, settings: Settings
) -> None:
    answer = audit_stub.Status(apb.StatusRequest(), metadata=auth(settings))
    status = json.loads(answer.json)
    sealed = (status["latest_checkpoint"] or {"size": 0})["size"]
    assert status["records"] >= 1 and status["unsealed"] == status["records"] - sealed
    assert status["keys"] == [str(k) for k in keys(settings)]
    (access,) = access_records(server)
    assert server.desk.store.head()[0] == answer.audit_sequence + 1
    assert access["method"] == "Status" and access["caller"].startswith("tok_")
    token = settings.audit_api_token().decode()
    assert token not in json.dumps(access)


def test_why_answers_by_customer_id_and_logs_only_the_pseudonym(
    audit_stub: apb_grpc.AuditStub, server: Running, settings: Settings, decided: list[Any]
) -> None:
    cid = decided[0][0]
    answer = audit_stub.Why(apb.WhyRequest(customer_id=cid), metadata=auth(settings))
    document = json.loads(answer.json)
    ids = [d["decision_id"] for d in document["decisions"]]
    assert ids == [r.decision_id for c, r in decided if c == cid]
    (access,) = access_records(server)
    assert access["method"] == "Why" and access["rows"] == 3
    assert cid not in json.dumps(access)
    assert access["arguments"]["subjects"] == [server.desk.vault.lookup(cid)]
    with pytest.raises(grpc.RpcError) as e:
        audit_stub.Why(apb.WhyRequest(customer_id="nobody-at-all"), metadata=auth(settings))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_query_runs_a_named_view_and_names_an_unknown_one(
    audit_stub: apb_grpc.AuditStub, settings: Settings, decided: list[Any]
) -> None:
    answer = audit_stub.Query(apb.QueryRequest(view="decisions"), metadata=auth(settings))
    table = json.loads(answer.json)
    assert table["row_count"] == len(decided)
    empty = audit_stub.Query(apb.QueryRequest(view="offers_to_opted_out"), metadata=auth(settings))
    assert json.loads(empty.json)["row_count"] == 0
    with pytest.raises(grpc.RpcError) as e:
        audit_stub.Query(apb.QueryRequest(view="no_such_view"), metadata=auth(settings))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no_such_view" in (e.value.details() or "")


def test_prove_seals_on_demand_and_the_proof_checks_with_public_keys_only(
    audit_stub: apb_grpc.AuditStub, settings: Settings, decided: list[Any]
) -> None:
    for _, response in decided:
        answer = audit_stub.Prove(
            apb.ProveRequest(decision_id=response.decision_id), metadata=auth(settings)
        )
        checked = check_document(json.loads(answer.json), keys(settings))
        assert isinstance(checked, CheckedInclusion)
        assert checked.record["body"]["decision_id"] == response.decision_id
        assert checked.seq == response.audit_sequence
    signed = CheckpointLog.read(settings.checkpoint_path, keys(settings))
    oldest, newest = signed[0].checkpoint.size, signed[-1].checkpoint.size
    answer = audit_stub.Consistency(
        apb.ConsistencyRequest(old_size=oldest), metadata=auth(settings)
    )
    checked = check_document(json.loads(answer.json), keys(settings))
    assert isinstance(checked, CheckedConsistency)
    assert (checked.old_size, checked.new_size) == (oldest, newest)


def test_an_export_taken_while_serving_verifies_on_its_own(
    audit_stub: apb_grpc.AuditStub, settings: Settings, decided: list[Any]
) -> None:
    manifest = json.loads(audit_stub.Export(apb.ExportRequest(), metadata=auth(settings)).json)
    segment = Path(manifest["path"])
    signed = CheckpointLog.read(segment / "checkpoints.jsonl", keys(settings))
    report = verify_file(segment / "records.parquet", [s.checkpoint for s in signed])
    assert report.ok and report.count == manifest["records"] == report.sealed
    con = duckdb.connect()
    count = con.execute(
        f"SELECT count(*) FROM read_parquet('{segment / 'records.parquet'}') "
        "WHERE kind = 'decision'"
    ).fetchone()
    assert count == (len(decided),)


def test_stopping_the_server_seals_every_record(
    settings: Settings, server: Running, decided: list[Any]
) -> None:
    server.stop()
    signed = CheckpointLog.read(settings.checkpoint_path, keys(settings))
    report = verify_file(settings.audit_path, [s.checkpoint for s in signed])
    assert report.ok and report.sealed == report.count


def test_the_cli_asks_the_running_service_when_it_holds_the_log(
    server: Running, settings: Settings, decided: list[Any], tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "OFFERDESK_DATA_DIR": str(settings.data_dir),
        "OFFERDESK_LISTEN": f"127.0.0.1:{server.port}",
    }
    cli = [str(Path(sys.executable).parent / "offerdesk"), "audit"]
    verified = subprocess.run(
        [*cli, "verify"], env=env, capture_output=True, text=True, timeout=120
    )
    assert verified.returncode == 0, verified.stderr
    assert "signed checkpoints match" in verified.stdout
    cid = decided[0][0]
    asked = subprocess.run(
        [*cli, "why", "--customer", cid], env=env, capture_output=True, text=True, timeout=120
    )
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout)["decision_count"] == 3
    queried = subprocess.run(
        [*cli, "query", "decisions"], env=env, capture_output=True, text=True, timeout=120
    )
    assert queried.returncode == 0, queried.stderr
    assert json.loads(queried.stdout)["row_count"] == len(decided)
    proof = tmp_path / "proof.json"
    decision_id = decided[0][1].decision_id
    proved = subprocess.run(
        [*cli, "prove", decision_id, "--out", str(proof)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proved.returncode == 0, proved.stderr
    pubkey = tmp_path / "keys.txt"
    pubkey.write_text("".join(f"{k}\n" for k in keys(settings)))
    checked = subprocess.run(
        [*cli, "check-proof", str(proof), "--pubkey", str(pubkey)],
        env={k: v for k, v in env.items() if k != "OFFERDESK_DATA_DIR"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stderr
    assert decision_id in checked.stdout
    document = json.loads(proof.read_text())
    document["record"] = document["record"].replace('"kind":"', '"kind":"x', 1)
    proof.write_text(json.dumps(document))
    forged = subprocess.run(
        [*cli, "check-proof", str(proof), "--pubkey", str(pubkey)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert forged.returncode == 1


def test_erasure_through_the_admin_api_needs_the_admin_token(
    server: Running, settings: Settings, decided: list[Any]
) -> None:
    cid = decided[0][0]
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        admin = apb_grpc.AuditAdminStub(channel)
        request = apb.EraseRequest(customer_id=cid, requested_by="dpo-7")
        with pytest.raises(grpc.RpcError) as e:
            admin.Erase(request, metadata=auth(settings))  # the read-only token
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert server.desk.vault.lookup(cid) is not None
        token = settings.audit_admin_token().decode()
        answer = admin.Erase(request, metadata=[("authorization", f"Bearer {token}")])
    result = json.loads(answer.json)
    assert result["outcome"] == "erased"
    assert server.desk.vault.lookup(cid) is None
    erasure = server.desk.store.get(answer.audit_sequence)
    assert erasure is not None and erasure.kind == "erasure"
    assert cid not in erasure.record.decode()


def test_the_erase_command_goes_through_the_running_service(
    server: Running, settings: Settings, decided: list[Any]
) -> None:
    cid = decided[-1][0]
    env = {
        **os.environ,
        "OFFERDESK_DATA_DIR": str(settings.data_dir),
        "OFFERDESK_LISTEN": f"127.0.0.1:{server.port}",
    }
    erase = [
        str(Path(sys.executable).parent / "offerdesk"),
        "audit",
        "erase",
        "--customer",
        cid,
        "--requested-by",
        "dpo-7",
        "--yes",
    ]
    done = subprocess.run(erase, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "erased by the running service" in done.stdout
    assert server.desk.vault.lookup(cid) is None
    again = subprocess.run(erase, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already_erased" in again.stdout
