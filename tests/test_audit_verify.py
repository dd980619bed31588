"""Offline verification (audit/verify.py): tampering with a closed file is found, and where."""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from audit.errors import AuditCorrupt, AuditError
from audit.records import GENESIS_HASH, NewRecord, chain_hash, envelope
from audit.store import AuditStore
from audit.verify import export_parquet, verify_file, verify_records

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
N = 10


def rec(n: int) -> NewRecord:
    return NewRecord(
        "decision" if n % 2 == 0 else "outcome",
        T0 + timedelta(seconds=n),
        f"p_{n:026d}",
        f"ref{n}",
        {"n": n, "offer": "fibre_1g", "p_accept": n / 10},
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "audit.duckdb"
    with AuditStore.open(path) as store:
        store.append([rec(n) for n in range(N)])
    return path


@pytest.fixture
def log(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of a closed, untampered 10-record log."""
    copy = tmp_path / "audit.duckdb"
    shutil.copy(pristine, copy)
    return copy


def sql(path: Path, statement: str, params: list[Any] | None = None) -> None:
    con = duckdb.connect(str(path))
    try:
        con.execute(statement, params or [])
    finally:
        con.close()


def row(path: Path, seq: int) -> tuple[Any, ...]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        found = con.execute("SELECT * FROM audit_records WHERE seq = ?", [seq]).fetchone()
        assert found is not None
        return tuple(found)
    finally:
        con.close()


def test_an_untampered_log_verifies(log: Path) -> None:
    report = verify_file(log)
    assert report.ok
    assert report.count == N
    assert report.first_bad_seq is None and report.problem is None
    assert report.head_hash == row(log, N - 1)[7]


def test_an_edited_body_field_is_found_at_its_record(log: Path) -> None:
    sql(
        log,
        """UPDATE audit_records SET record = replace(record, '"offer":"fibre_1g"',
           '"offer":"fibre_2g"') WHERE seq = 5""",
    )
    report = verify_file(log)
    assert not report.ok
    assert report.first_bad_seq == 5
    assert report.count == 5
    assert report.problem == "record 5: hash does not match its contents (edited?)"


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("kind", "consent"),
        ("subject", "p_someone_else"),
        ("ref", None),
        ("recorded_at", datetime(2020, 1, 1)),
    ],
)
def test_an_edited_projection_column_is_found(log: Path, column: str, value: Any) -> None:
    sql(log, f"UPDATE audit_records SET {column} = ? WHERE seq = 3", [value])
    report = verify_file(log)
    assert report.first_bad_seq == 3
    assert report.problem is not None
    assert f"record 3: column {column} is" in report.problem


def test_a_deleted_middle_record_is_found(log: Path) -> None:
    sql(log, "DELETE FROM audit_records WHERE seq = 4")
    report = verify_file(log)
    assert report.first_bad_seq == 4
    assert report.problem == "expected seq 4, found 5 (a record is missing)"


SWAP_2_AND_3 = """UPDATE audit_records AS a SET kind = b.kind, recorded_at = b.recorded_at,
    subject = b.subject, ref = b.ref, record = b.record, prev_hash = b.prev_hash, hash = b.hash
    FROM (SELECT * FROM audit_records WHERE seq IN (2, 3)) AS b
    WHERE a.seq IN (2, 3) AND b.seq = 5 - a.seq"""


def test_two_swapped_records_are_found(log: Path) -> None:
    # Swap everything but the seq column, as an editor who knows the projections would.
    two, three = row(log, 2), row(log, 3)
    sql(log, SWAP_2_AND_3)
    assert row(log, 2)[1:] == three[1:] and row(log, 3)[1:] == two[1:]
    report = verify_file(log)
    assert report.first_bad_seq == 2
    assert report.problem is not None
    assert "record 2: the record says seq 3" in report.problem


def test_a_swap_with_the_seqs_inside_rewritten_breaks_the_links(log: Path) -> None:
    sql(log, SWAP_2_AND_3)
    for seq, was in ((2, 3), (3, 2)):
        sql(
            log,
            f"""UPDATE audit_records SET record = replace(record, '"seq":{was},', '"seq":{seq},')
                WHERE seq = {seq}""",
        )
    report = verify_file(log)
    assert report.first_bad_seq == 2
    assert report.problem == (
        "record 2: prev_hash does not link to record 1 (deleted, inserted or reordered record?)"
    )


def forged(seq: int, prev: bytes) -> tuple[Any, ...]:
    record = NewRecord("decision", T0, "p_forged", "ref_forged", {"n": 999})
    data = envelope(seq, record)
    return (
        seq,
        "decision",
        T0.replace(tzinfo=None),
        "p_forged",
        "ref_forged",
        data.decode(),
        prev,
        chain_hash(prev, data),
    )


def test_an_inserted_record_is_found(log: Path) -> None:
    # A well-formed record that links to record 4, slipped in as a second seq 5.
    sql(
        log,
        "INSERT INTO audit_records VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        list(forged(5, row(log, 4)[7])),
    )
    report = verify_file(log)
    assert report.first_bad_seq == 5
    assert report.problem == "expected seq 6, found 5 again (a duplicate or inserted record)"


def test_an_inserted_record_with_the_rest_renumbered_is_found_at_the_next_record(
    log: Path,
) -> None:
    sql(log, "UPDATE audit_records SET seq = seq + 1 WHERE seq >= 5")
    sql(
        log,
        "INSERT INTO audit_records VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        list(forged(5, row(log, 4)[7])),
    )
    report = verify_file(log)
    assert report.first_bad_seq == 6
    assert report.problem is not None
    assert "record 6: the record says seq 5" in report.problem


def test_an_edit_with_a_recomputed_hash_is_found_at_the_next_record(log: Path) -> None:
    old = row(log, 5)
    data = old[5].replace('"offer":"fibre_1g"', '"offer":"fibre_2g"').encode()
    sql(
        log,
        "UPDATE audit_records SET record = ?, hash = ? WHERE seq = 5",
        [data.decode(), chain_hash(old[6], data)],
    )
    report = verify_file(log)
    assert report.first_bad_seq == 6
    assert report.problem == (
        "record 6: prev_hash does not link to record 5 (deleted, inserted or reordered record?)"
    )


def test_non_canonical_bytes_are_found_even_when_rehashed(log: Path) -> None:
    old = row(log, 0)
    data = old[5].replace('"n":0', '"n": 0').encode()
    sql(
        log,
        "UPDATE audit_records SET record = ?, hash = ? WHERE seq = 0",
        [data.decode(), chain_hash(GENESIS_HASH, data)],
    )
    report = verify_file(log)
    assert report.first_bad_seq == 0
    assert report.problem == "record 0: bytes are not in canonical form (edited by hand?)"


def test_a_record_that_is_not_json_is_found(log: Path) -> None:
    sql(log, "UPDATE audit_records SET record = replace(record, '0.7', 'NaN') WHERE seq = 7")
    report = verify_file(log)
    assert report.first_bad_seq == 7
    assert report.problem is not None and report.problem.startswith("record 7: not a JSON record")


def test_a_wrong_genesis_is_found(log: Path) -> None:
    sql(log, "UPDATE audit_records SET prev_hash = ? WHERE seq = 0", [b"\x01" * 32])
    report = verify_file(log)
    assert report.first_bad_seq == 0
    assert report.problem is not None and "not the genesis value" in report.problem


def test_a_truncated_tail_is_not_detectable_by_the_chain_alone(log: Path) -> None:
    """Known limit: only signed checkpoints kept outside the database (a later issue) can
    show that records 7-9 existed. The chain proves the prefix, nothing after it."""
    sql(log, "DELETE FROM audit_records WHERE seq >= 7")
    report = verify_file(log)
    assert report.ok
    assert report.count == 7
    assert report.head_hash == row(log, 6)[7]


def test_a_parquet_export_verifies_like_the_database(log: Path, tmp_path: Path) -> None:
    out = tmp_path / "export" / "audit.parquet"
    assert export_parquet(log, out) == N
    from_export = verify_file(out)
    assert from_export.ok
    assert from_export == verify_file(log)


def test_a_tampered_parquet_export_fails(log: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit.parquet"
    export_parquet(log, out)
    tampered = tmp_path / "tampered.parquet"
    con = duckdb.connect()
    con.execute(
        f"""COPY (SELECT * REPLACE (CASE WHEN seq = 8 THEN replace(record, '"n":8', '"n":80')
            ELSE record END AS record) FROM read_parquet('{out}'))
            TO '{tampered}' (FORMAT parquet)"""
    )
    con.close()
    report = verify_file(tampered)
    assert report.first_bad_seq == 8
    assert report.problem == "record 8: hash does not match its contents (edited?)"


def test_verify_records_takes_stored_records_and_tuples(tmp_path: Path) -> None:
    with AuditStore.open(tmp_path / "a.duckdb") as store:
        stored = store.append([rec(n) for n in range(3)])
    assert verify_records(stored).ok
    assert verify_records(r.as_row() for r in stored).head_hash == stored[-1].hash
    empty = verify_records([])
    assert empty.ok and empty.count == 0 and empty.head_hash == GENESIS_HASH
    assert verify_records(reversed(stored)).first_bad_seq == 0


def test_files_that_are_not_audit_logs_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(AuditError, match="neither a DuckDB database nor a Parquet file"):
        verify_file(text)
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE t (x INT)")
    con.close()
    with pytest.raises(AuditCorrupt, match="cannot read audit records"):
        verify_file(other)


def test_chain_hash_in_the_file_is_plain_sha256(log: Path) -> None:
    seq0 = row(log, 0)
    inner = hashlib.sha256(seq0[5].encode()).digest()
    assert seq0[7] == hashlib.sha256(bytes(32) + inner).digest()
