"""Crash recovery of the audit log (audit/recovery.py and the store's reopen), on real files.

Crashes are real: a writer process SIGKILLs itself after its appends were acknowledged, which
leaves the WAL DuckDB would replay. Nothing here imitates DuckDB.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from audit import recovery
from audit.errors import AuditCorrupt, AuditError, AuditWriteError
from audit.records import NewRecord
from audit.store import AuditStore
from audit.verify import verify_file

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def rec(n: int) -> NewRecord:
    return NewRecord("decision", T0 + timedelta(seconds=n), "p_subject", f"r{n}", {"n": n})


def crash_after(path: Path, n: int, then: str = "") -> list[tuple[int, str]]:
    """Acknowledge n records in a writer process, run ``then`` there, and SIGKILL it.

    Returns the acknowledged (seq, hash hex); the WAL is left as the killed process left it.
    """
    code = textwrap.dedent(
        f"""
        import json, os, signal
        from datetime import UTC, datetime, timedelta
        from pathlib import Path
        from audit.records import NewRecord
        from audit.store import AuditStore
        store = AuditStore.open(Path({str(path)!r}))
        t0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
        acked = []
        for i in range({n}):
            r = NewRecord("decision", t0 + timedelta(seconds=i), "p_subject", f"r{{i}}", {{"n": i}})
            [s] = store.append([r])
            acked.append([s.seq, s.hash.hex()])
        {then}
        print(json.dumps(acked), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    assert recovery.wal_path(path).exists(), "the killed writer left no WAL"
    return [(seq, digest) for seq, digest in json.loads(done.stdout)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copies(path: Path) -> list[Path]:
    root = path.parent / recovery.QUARANTINE_DIR
    return sorted(root.iterdir()) if root.exists() else []


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "audit.duckdb"


def test_a_wal_left_by_a_killed_writer_is_copied_aside_then_replayed_and_verified(
    path: Path,
) -> None:
    acked = crash_after(path, 30)
    wal = recovery.wal_path(path)
    wal_sha, wal_bytes, db_bytes = sha256(wal), wal.stat().st_size, path.stat().st_size
    with AuditStore.open(path) as store:
        assert store.head() == (30, bytes.fromhex(acked[-1][1]))
        assert [(r.seq, r.hash.hex()) for r in store.scan()] == acked
        assert store.append([rec(30)])[0].seq == 30  # and the chain goes on
    [copy] = copies(path)
    assert sha256(copy / wal.name) == wal_sha
    note = json.loads((copy / "note.json").read_text())
    assert note["wal_bytes"] == wal_bytes and note["database_bytes"] == db_bytes
    assert note["copy_sha256"] == wal_sha and note["database"] == str(path)
    assert json.loads((copy / "verified.json").read_text())["size"] == 30
    assert verify_file(path).count == 31


def test_a_wal_that_does_not_replay_is_kept_and_the_open_refused_naming_every_file(
    path: Path, tmp_path: Path
) -> None:
    crash_after(path, 20)
    # A database restored from an older backup next to the newer WAL: DuckDB refuses to
    # replay a WAL that belongs to another database file.
    with AuditStore.open(tmp_path / "backup" / "audit.duckdb") as other:
        other.append([rec(0)])
    (tmp_path / "backup" / "audit.duckdb").replace(path)
    wal = recovery.wal_path(path)
    before = sha256(path), sha256(wal)
    for attempt in (1, 2):
        with pytest.raises(AuditError, match="Failure while replaying WAL") as refused:
            AuditStore.open(path)
        message = str(refused.value)
        copy = copies(path)[-1] / wal.name
        assert len(copies(path)) == attempt
        for named in (str(path), str(wal), str(copy), "docs/operations.md", "Nothing was deleted"):
            assert named in message, named
        assert (sha256(path), sha256(wal)) == before  # nothing deleted, nothing rewritten
        assert sha256(copy) == before[1]
        assert not (copy.parent / "verified.json").exists()


def test_a_log_that_does_not_verify_after_a_crash_is_refused_and_its_wal_kept(
    path: Path,
) -> None:
    # The killed process had edited a record; only its WAL knows.
    crash_after(
        path,
        10,
        then='store._con.execute("UPDATE audit_records SET record = replace(record, '
        '\'\\"n\\":4\', \'\\"n\\":44\') WHERE seq = 4")',
    )
    wal = recovery.wal_path(path)
    wal_sha = sha256(wal)
    with pytest.raises(AuditCorrupt, match="does not verify: record 4") as refused:
        AuditStore.open(path)
    assert str(copies(path)[0] / wal.name) in str(refused.value)
    assert sha256(wal) == wal_sha


def test_check_log_finds_acknowledged_records_missing_or_changed_and_a_bad_tail(
    path: Path,
) -> None:
    with AuditStore.open(path) as store:
        stored = store.append([rec(i) for i in range(10)])
    head = (5, stored[4].hash)
    assert recovery.check_log(path, head) == (10, stored[9].hash)
    with pytest.raises(AuditCorrupt, match=r"DATA LOSS.* 10 records .* 12 were acknowledged"):
        recovery.check_log(path, (12, bytes(32)))
    with pytest.raises(AuditCorrupt, match=r"DATA LOSS.*record 4, the last one acknowledged"):
        recovery.check_log(path, (5, stored[3].hash))
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE audit_records SET prev_hash = hash WHERE seq = 7")
    with pytest.raises(AuditCorrupt, match=r"after the last acknowledged one .*record 7"):
        recovery.check_log(path, head)


def test_a_store_whose_connection_dies_reopens_the_file_and_goes_on(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    states: list[AuditWriteError | None] = []
    with AuditStore.open(path) as store:
        store.watch(states.append)
        first = store.append([rec(0), rec(1)])
        store._con.close()  # as after an fsync failure: the connection is gone
        with pytest.raises(AuditWriteError):
            store.submit([rec(2)]).result(timeout=10)
        _wait(lambda: store.failure() is None)
        assert store.head() == (2, first[-1].hash)
        assert store.tree_head().size == 2
        after = store.append([rec(3)])
        assert after[0].seq == 2 and after[0].prev_hash == first[-1].hash
        assert [r.seq for r in store.scan()] == [0, 1, 2]
    assert states[0] is None and isinstance(states[1], AuditWriteError) and states[-1] is None
    assert any("reopened after 1 attempt" in r.getMessage() for r in caplog.records)
    assert verify_file(path).count == 3


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        ("DELETE FROM audit_records WHERE seq >= 7", "10 were acknowledged"),
        ("UPDATE audit_records SET hash = prev_hash WHERE seq = 2", "Merkle root"),
    ],
)
def test_acknowledged_records_gone_when_the_store_reopens_keep_it_broken(
    path: Path, edit: str, expect: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "offerdesk.audit")
    with AuditStore.open(path) as store:
        store.append([rec(i) for i in range(10)])
        # A second connection in this process shares the store's database: it keeps the
        # file open (so the store's reopen waits) and then loses records under it.
        other = duckdb.connect(str(path))
        store._con.close()
        with pytest.raises(AuditWriteError):
            store.append([rec(10)])
        _wait(lambda: any("reopen attempt 1 failed" in r.getMessage() for r in caplog.records))
        other.execute(edit)
        other.close()
        _wait(lambda: "DATA LOSS" in str(store.failure()))
        failure = str(store.failure())
        assert expect in failure and "refuses all writes until restarted" in failure
        time.sleep(0.5)  # it does not retry its way past a loss
        with pytest.raises(AuditWriteError, match="DATA LOSS"):
            store.submit([rec(11)])
    [copy] = copies(path)
    assert str(copy) in failure and not (copy / "verified.json").exists()


def test_only_the_newest_verified_copies_are_kept_and_unverified_ones_never_pruned(
    tmp_path: Path,
) -> None:
    root = tmp_path / recovery.QUARANTINE_DIR
    for i in range(14):
        d = root / f"20261123T0900{i:02d}.000000Z"
        d.mkdir(parents=True)
        if i != 3:
            (d / "verified.json").write_text("{}")
    newest = recovery.Quarantine(d, d / "audit.duckdb.wal", tmp_path, tmp_path, 0)
    newest.verified(1, bytes(32))
    kept = sorted(p.name[13:15] for p in root.iterdir())
    assert kept == ["03", *[f"{i:02d}" for i in range(4, 14)]]


def _wait(condition: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
