"""Sealing the live log: the checkpointer's triggers and start-up check, proofs checked with
only public keys (and forged ones refused), and sealed export segments."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from audit.checkpoint import CheckpointError, CheckpointLog, DirectoryPublisher, KeyRing
from audit.checkpointer import Checkpointer
from audit.errors import AuditCorrupt
from audit.export import check_manifest, export_segment
from audit.merkle import ProofError
from audit.proofs import (
    CheckedConsistency,
    CheckedInclusion,
    check_document,
    consistency_document,
    inclusion_document,
)
from audit.records import NewRecord
from audit.store import AuditStore
from audit.verify import verify_file

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
ORIGIN = "offerdesk.test/log/sealing"


def rec(n: int) -> NewRecord:
    return NewRecord("decision", T0 + timedelta(seconds=n), f"p_{n % 5:026d}", f"d_{n}", {"n": n})


class Log:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "audit.duckdb"
        self.checkpoints = root / "checkpoints.jsonl"
        self.keys = KeyRing.open(root / "keys", ORIGIN)
        self.store = AuditStore.open(self.path)

    def start(self, **kwargs: Any) -> Checkpointer:
        kwargs.setdefault("every_records", 10**9)
        kwargs.setdefault("every_seconds", 3600)
        return Checkpointer.start(self.store, self.keys, self.checkpoints, **kwargs)

    def signed(self) -> list[Any]:
        return CheckpointLog.read(self.checkpoints, self.keys.verifier_keys())


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    opened = Log(tmp_path)
    yield opened
    opened.store.close()


def wait_for(predicate: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_checkpoint_is_signed_every_n_records_and_at_close(log: Log) -> None:
    checkpointer = log.start(every_records=5)
    for n in range(6):
        log.store.append([rec(n)])
    wait_for(lambda: len(log.signed()) == 1)
    for n in range(6, 12):
        log.store.append([rec(n)])
    wait_for(lambda: len(log.signed()) == 2)
    log.store.append([rec(12)])  # fewer than 5: only close seals it
    final = checkpointer.close()
    assert final is not None and final.checkpoint.size == 13
    sizes = [s.checkpoint.size for s in log.signed()]
    assert len(sizes) == 3 and sizes[0] >= 5 and sizes[1] == 12 and sizes[2] == 13
    assert checkpointer.close() is None  # nothing new: no second checkpoint of the same size


def test_a_checkpoint_is_signed_after_t_seconds_with_any_new_record(log: Log) -> None:
    checkpointer = log.start(every_seconds=0.3)
    log.store.append([rec(0)])
    wait_for(lambda: len(log.signed()) == 1)
    time.sleep(0.5)
    assert len(log.signed()) == 1  # no new records: no new checkpoint
    checkpointer.close()


def test_start_seals_records_left_unsealed_and_publishes(log: Log, tmp_path: Path) -> None:
    for n in range(3):
        log.store.append([rec(n)])
    published = tmp_path / "published"
    checkpointer = log.start(publishers=[DirectoryPublisher(published)])
    assert checkpointer.latest is not None and checkpointer.latest.size == 3
    assert (published / "latest").read_text() == log.signed()[-1].note
    status = checkpointer.status()
    assert status.unsealed == 0
    assert status.publications[0].published_size == 3
    checkpointer.close()


class Failing:
    name = "failing"

    def __init__(self) -> None:
        self.calls = 0

    def publish(self, signed: Any) -> None:
        self.calls += 1
        raise OSError("publication point unreachable")


def test_a_failing_publication_point_never_blocks_sealing(log: Log) -> None:
    failing = Failing()
    checkpointer = log.start(publishers=[failing])
    log.store.append([rec(0)])
    sealed = checkpointer.seal()
    assert sealed is not None and log.signed()[-1].note == sealed.note
    state = checkpointer.status().publications[0]
    assert state.published_size is None and "unreachable" in (state.last_error or "")
    assert failing.calls == 1
    checkpointer.close()


def test_start_refuses_a_log_cut_off_after_sealing(log: Log) -> None:
    checkpointer = log.start()
    for n in range(6):
        log.store.append([rec(n)])
    checkpointer.close()
    log.store.close()
    con = duckdb.connect(str(log.path))
    con.execute("DELETE FROM audit_records WHERE seq >= 4")
    con.close()
    log.store = AuditStore.open(log.path)
    with pytest.raises(AuditCorrupt, match=r"has 4 records but checkpoint .* signed 6"):
        log.start()


def test_start_refuses_a_log_rewritten_after_sealing(log: Log, tmp_path: Path) -> None:
    checkpointer = log.start()
    for n in range(6):
        log.store.append([rec(n)])
    checkpointer.close()
    log.store.close()
    # The same number of records, chained properly, but not the ones that were signed.
    other = tmp_path / "other.duckdb"
    with AuditStore.open(other) as forged:
        forged.append([rec(n + 100) for n in range(6)])
    log.path.unlink()
    other.rename(log.path)
    log.store = AuditStore.open(log.path)
    with pytest.raises(AuditCorrupt, match="does not extend checkpoint"):
        log.start()


@pytest.fixture
def sealed(log: Log) -> Log:
    """A 23-record log with checkpoints at 1, 7, 8, 16 and 23."""
    checkpointer = log.start()
    for n in range(23):
        log.store.append([rec(n)])
        if n + 1 in (1, 7, 8, 16):
            checkpointer.seal()
    checkpointer.close()
    return log


def test_every_record_has_an_inclusion_proof_that_checks_with_public_keys_only(
    sealed: Log,
) -> None:
    signed = sealed.signed()
    hashes = sealed.store.chain_hashes(23)
    for record in sealed.store.scan():
        for covering in signed:
            if covering.checkpoint.size <= record.seq:
                continue
            document = json.loads(json.dumps(inclusion_document(record, hashes, covering)))
            checked = check_document(document, sealed.keys.verifier_keys())
            assert isinstance(checked, CheckedInclusion)
            assert checked.seq == record.seq and checked.record["body"] == {"n": record.seq}


def test_every_pair_of_checkpoints_has_a_consistency_proof(sealed: Log) -> None:
    signed = sealed.signed()
    hashes = sealed.store.chain_hashes(23)
    for i, old in enumerate(signed):
        for new in signed[i:]:
            document = consistency_document(old, new, hashes)
            checked = check_document(document, sealed.keys.verifier_keys())
            assert isinstance(checked, CheckedConsistency)
            assert (checked.old_size, checked.new_size) == (
                old.checkpoint.size,
                new.checkpoint.size,
            )


def forgeries(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for i in range(len(document["path"])):
        forged = copy.deepcopy(document)
        node = bytearray.fromhex(forged["path"][i])
        node[i % 32] ^= 0x01
        forged["path"][i] = node.hex()
        yield f"path[{i}] altered", forged
    if document["path"]:
        yield "node dropped", {**document, "path": document["path"][:-1]}
        yield "nodes reordered", {**document, "path": list(reversed(document["path"]))}
    yield "node added", {**document, "path": [*document["path"], "00" * 32]}


def test_forged_inclusion_proofs_are_refused(sealed: Log) -> None:
    signed = sealed.signed()
    hashes = sealed.store.chain_hashes(23)
    keys = sealed.keys.verifier_keys()
    record = next(r for r in sealed.store.scan() if r.seq == 11)
    document = inclusion_document(record, hashes, signed[-1])
    cases = list(forgeries(document))
    cases += [
        ("record edited", {**document, "record": document["record"].replace('"n":11', '"n":12')}),
        ("prev_hash altered", {**document, "prev_hash": "11" * 32}),
        ("wrong size", {**document, "tree_size": 22}),
        ("wrong seq", {**document, "seq": 12}),
        ("older checkpoint", {**document, "checkpoint": signed[-2].note}),
        ("note edited", {**document, "checkpoint": signed[-1].note.replace("\n23\n", "\n24\n")}),
    ]
    for what, forged in cases:
        with pytest.raises((ProofError, CheckpointError)):
            check_document(forged, keys)
            pytest.fail(f"{what}: accepted")


def test_forged_consistency_proofs_are_refused(sealed: Log) -> None:
    signed = sealed.signed()
    hashes = sealed.store.chain_hashes(23)
    keys = sealed.keys.verifier_keys()
    document = consistency_document(signed[1], signed[-1], hashes)  # 7 -> 23
    cases = list(forgeries(document))
    cases += [
        (
            "swapped",
            {
                **document,
                "old_checkpoint": document["new_checkpoint"],
                "new_checkpoint": document["old_checkpoint"],
            },
        ),
        ("other old", {**document, "old_checkpoint": signed[2].note}),
    ]
    for what, forged in cases:
        with pytest.raises((ProofError, CheckpointError)):
            check_document(forged, keys)
            pytest.fail(f"{what}: accepted")


def test_a_proof_signed_by_another_key_is_refused(sealed: Log, tmp_path: Path) -> None:
    signed = sealed.signed()
    record = next(iter(sealed.store.scan()))
    document = inclusion_document(record, sealed.store.chain_hashes(23), signed[-1])
    stranger = KeyRing.open(tmp_path / "stranger", ORIGIN)
    with pytest.raises(CheckpointError):
        check_document(document, stranger.verifier_keys())


def test_an_export_segment_verifies_on_its_own_and_its_manifest_catches_edits(
    sealed: Log, tmp_path: Path
) -> None:
    reader = sealed.store.reader()
    try:
        manifest = export_segment(reader, sealed.signed(), sealed.keys.verifier_keys(), tmp_path)
    finally:
        reader.close()
    segment = tmp_path / "segment-000000000023"
    assert manifest["records"] == 23 and check_manifest(segment) == manifest
    keys = [line for line in (segment / "keys.txt").read_text().splitlines() if line]
    assert keys == [str(k) for k in sealed.keys.verifier_keys()]
    checkpoints = [s.checkpoint for s in sealed.signed()]
    report = verify_file(segment / "records.parquet", checkpoints)
    assert report.ok and report.count == 23 and report.sealed == 23
    with (segment / "checkpoints.jsonl").open("a") as f:
        f.write("\n")
    with pytest.raises(Exception, match="does not match the manifest"):
        check_manifest(segment)
