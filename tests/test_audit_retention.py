"""Retention cuts on a real DuckDB log: what is cut, what stays provable, what tampering shows."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from test_audit_verify import rewrite

from audit import retention
from audit.checkpoint import Checkpoint, KeyRing
from audit.checkpointer import Checkpointer
from audit.merkle import inclusion_proof, verify_inclusion
from audit.records import NewRecord
from audit.store import COLUMNS, AuditStore, CutRequest
from audit.verify import export_parquet, verify_file, verify_records

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KINDS = ("decision", "outcome", "consent", "conversion", "audit_access", "deployment")
N = 120  # one record a day for 120 days, kinds in turn

Row = tuple[Any, ...]


def record(n: int) -> NewRecord:
    kind = KINDS[n % len(KINDS)]
    subject = None if kind in ("deployment", "audit_access") else f"p_{n % 9:026d}"
    return NewRecord(kind, T0 + timedelta(days=n), subject, f"r_{n:08d}", {"n": n, "x": "ü"})


@dataclass(frozen=True)
class Log:
    path: Path
    checkpoints: list[Checkpoint]
    first: Any  # the first cut record
    second: Any  # the second


def rows_of(path: Path) -> list[Row]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return [
            tuple(r)
            for r in con.execute(
                f"SELECT {', '.join(COLUMNS)} FROM audit_records ORDER BY seq"
            ).fetchall()
        ]
    finally:
        con.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Log, list[Row]]:
    """A sealed log cut twice: decisions and outcomes older than 60 days at day 100, then
    decisions older than 30 days, outcomes older than 60 and audit_access older than 10 at
    day 121. Returns it and its rows before any cut."""
    root = tmp_path_factory.mktemp("retention")
    path = root / "audit.duckdb"
    keys = KeyRing.open(root / "keys", "offerdesk.test/log/retention")
    store = AuditStore.open(path)
    checkpointer = Checkpointer.start(
        store, keys, root / "checkpoints.jsonl", every_records=10**9, every_seconds=3600
    )
    signed = []
    for n in range(N):
        store.append([record(n)])
        if n % 25 == 24:
            made = checkpointer.seal()
            assert made is not None
            signed.append(made.checkpoint)
    before = rows_of_store(store)
    days1 = {"decision": 60, "outcome": 60}
    at1 = T0 + timedelta(days=100)
    first, cut1 = store.cut(CutRequest(retention.cutoffs(days1, at1), days1, "ops-1", at1))
    signed.append(checkpointer.seal().checkpoint)  # type: ignore[union-attr]
    days2 = {"decision": 30, "outcome": 60, "audit_access": 10}
    at2 = T0 + timedelta(days=121)
    second, _ = store.cut(CutRequest(retention.cutoffs(days2, at2), days2, "ops-2", at2))
    signed.append(checkpointer.seal().checkpoint)  # type: ignore[union-attr]
    assert [r.seq for r in cut1] == [r[0] for r in before if _due(r, days1, at1)]
    checkpointer._stop.set()
    store.close()
    return Log(path, signed, first, second), before


def rows_of_store(store: AuditStore) -> list[Row]:
    return [r.as_row() for r in store.scan()]


def _due(row: Row, days: dict[str, int], now: datetime) -> bool:
    kind, at = row[1], row[2].replace(tzinfo=UTC)
    return kind in days and at < now - timedelta(days=days[kind])


@pytest.fixture
def log(built: tuple[Log, list[Row]], tmp_path: Path) -> Log:
    """A fresh copy of the cut log for one test to tamper with."""
    original = built[0]
    path = tmp_path / "audit.duckdb"
    shutil.copy(original.path, path)
    return Log(path, original.checkpoints, original.first, original.second)


def test_a_cut_empties_exactly_the_rows_past_their_kinds_retention(
    built: tuple[Log, list[Row]],
) -> None:
    log, before = built
    after = rows_of(log.path)
    assert len(after) == N + 2
    at1, at2 = T0 + timedelta(days=100), T0 + timedelta(days=121)
    days1 = {"decision": 60, "outcome": 60}
    days2 = {"decision": 30, "outcome": 60, "audit_access": 10}
    for old, new in zip(before, after, strict=False):
        due = _due(old, days1, at1) or _due(old, days2, at2)
        # place in the chain, kind and time always stay
        assert new[0] == old[0] and new[1] == old[1] and new[2] == old[2]
        assert new[6] == old[6] and new[7] == old[7]
        if due:
            assert (new[3], new[4], new[5]) == (None, None, "")
        else:
            assert new == old
    cut = [r for r in after if r[5] == ""]
    assert {r[1] for r in cut} == {"decision", "outcome", "audit_access"}
    body1, body2 = log.first.body, log.second.body
    assert body1["count"] == sum(_due(r, days1, at1) for r in before)
    assert body2["count"] == len(cut) - body1["count"] > 0
    cut_second = [r for r in before if _due(r, days2, at2) and not _due(r, days1, at1)]
    assert body2["count_by_kind"] == {
        kind: sum(r[1] == kind for r in cut_second) for kind in sorted(days2)
    }
    assert body1["requested_by"] == "ops-1" and body2["retention_days"] == days2
    assert log.first.kind == "retention" and log.first.subject is None


@pytest.mark.parametrize("batch_rows", [1, 2, 7, 2048])
def test_a_cut_log_verifies_with_every_checkpoint_signed_before_and_after_the_cuts(
    log: Log, tmp_path: Path, batch_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("audit.verify._BATCH_ROWS", batch_rows)
    rows = rows_of(log.path)
    report = verify_file(log.path, log.checkpoints)
    assert report.ok, report.problem
    assert report.count == N + 2 and report.checkpoints == len(log.checkpoints)
    assert verify_file(log.path, log.checkpoints, deep=True) == report
    assert verify_records(rows, log.checkpoints) == report
    out = tmp_path / "export.parquet"
    assert export_parquet(log.path, out) == N + 2
    assert verify_file(out, log.checkpoints) == report


def test_an_inclusion_proof_of_a_cut_record_still_checks_against_an_old_checkpoint(
    log: Log,
) -> None:
    rows = rows_of(log.path)
    checkpoint = log.checkpoints[0]  # signed before any cut
    hashes = [bytes(r[7]) for r in rows[: checkpoint.size]]
    cut_seq = next(r[0] for r in rows if r[5] == "" and r[0] < checkpoint.size)
    proof = inclusion_proof(cut_seq, checkpoint.size, hashes)
    verify_inclusion(cut_seq, checkpoint.size, hashes[cut_seq], proof, checkpoint.root)


def tampered(
    log: Log, pristine: list[Row], before: list[Row], how: str, rng: random.Random
) -> tuple[list[Row], set[int]]:
    """The cut log's rows tampered ``how``, and the seqs the verifier may name: the row
    itself when the verifier can tell from the row alone or no cut covers it any more,
    else the cut record(s) whose digest it changes."""
    rows = list(pristine)
    cut = [i for i, r in enumerate(rows) if r[5] == ""]
    cuts = {log.first.seq, log.second.seq}
    if how == "emptied_by_hand":  # a record no cut could cover
        i = rng.choice([i for i, r in enumerate(rows) if r[5] != "" and r[1] == "consent"])
        rows[i] = (*rows[i][:3], None, None, "", *rows[i][6:])
        return rows, {i}
    if how == "emptied_decision":  # a recent decision, emptied to look cut
        i = rng.choice([i for i, r in enumerate(rows) if r[5] != "" and r[1] == "decision"])
        rows[i] = (*rows[i][:3], None, None, "", *rows[i][6:])
        return rows, {i}
    i = rng.choice(cut)
    if how == "restored":  # a cut row's content put back (from a backup)
        rows[i] = before[i]
        return rows, cuts
    if how == "relabelled":  # passed off as another kind
        other = "outcome" if rows[i][1] != "outcome" else "decision"
        rows[i] = (rows[i][0], other, *rows[i][2:])
        return rows, cuts | {i}
    if how == "redated":
        rows[i] = (*rows[i][:2], rows[i][2] + timedelta(days=40), *rows[i][3:])
        return rows, cuts | {i}
    if how == "protected_kind":
        rows[i] = (rows[i][0], "erasure", *rows[i][2:])
        return rows, {i}
    if how == "hash_changed":  # held only by the next row's link (and the checkpoints)
        rows[i] = (*rows[i][:7], bytes(rng.randrange(256) for _ in range(32)))
        return rows, {i + 1}
    if how == "subject_kept":
        rows[i] = (*rows[i][:3], "p_" + "0" * 26, *rows[i][4:])
        return rows, {i}
    if how == "cut_record_emptied":  # the first cut record itself emptied by hand
        first = log.first.seq
        rows[first] = (*rows[first][:3], None, None, "", *rows[first][6:])
        return rows, {first}
    raise AssertionError(how)


TAMPERS = (
    "emptied_by_hand",
    "emptied_decision",
    "restored",
    "relabelled",
    "redated",
    "protected_kind",
    "hash_changed",
    "subject_kept",
    "cut_record_emptied",
)


@pytest.mark.parametrize("batch_rows", [1, 3, 2048])
@pytest.mark.parametrize("how", TAMPERS)
def test_tampering_with_cut_rows_or_cut_records_is_caught(
    built: tuple[Log, list[Row]],
    log: Log,
    how: str,
    batch_rows: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The single pass takes cut rows in batches, some on a boundary; answers must not change.
    monkeypatch.setattr("audit.verify._BATCH_ROWS", batch_rows)
    pristine = rows_of(log.path)
    rng = random.Random(how)
    for _ in range(6):
        rows, named = tampered(log, pristine, built[1], how, rng)
        reference = verify_records(rows)
        assert not reference.ok, how
        assert reference.first_bad_seq in named, (how, reference.problem)
        rewrite(log.path, rows)
        assert verify_file(log.path) == reference
        assert verify_file(log.path, deep=True) == reference


def test_a_cut_with_nothing_due_still_records_that_it_ran(tmp_path: Path) -> None:
    with AuditStore.open(tmp_path / "audit.duckdb") as store:
        store.append([record(n) for n in range(6)])
        days = {"decision": 365}
        now = T0 + timedelta(days=30)
        stored, cut = store.cut(CutRequest(retention.cutoffs(days, now), days, "ops", now))
        assert cut == [] and stored.seq == 6
        assert stored.body["count"] == 0 and stored.body["digest"] == retention.digest([])
        assert store.due(retention.cutoffs(days, now)) == {"decision": 0}
    assert verify_file(tmp_path / "audit.duckdb").ok


def test_due_counts_what_a_cut_would_take_without_writing(tmp_path: Path) -> None:
    with AuditStore.open(tmp_path / "audit.duckdb") as store:
        store.append([record(n) for n in range(60)])
        days = {"decision": 20, "outcome": 50}
        now = T0 + timedelta(days=60)
        due = store.due(retention.cutoffs(days, now))
        assert store.head()[0] == 60
        _, cut = store.cut(CutRequest(retention.cutoffs(days, now), days, "ops", now))
        by_kind = {k: sum(r.kind == k for r in cut) for k in days}
        assert due == by_kind and sum(due.values()) > 0


@pytest.mark.parametrize("kind", sorted(retention.PROTECTED_KINDS))
def test_protected_kinds_are_never_cut(tmp_path: Path, kind: str) -> None:
    with pytest.raises(ValueError, match=f"retention_days.{kind}"):
        retention.check_days({kind: 30})
    with AuditStore.open(tmp_path / "audit.duckdb") as store:
        with pytest.raises(ValueError, match="never cut"):
            store.cut(CutRequest({kind: T0}, {kind: 30}, "ops", T0))
        assert store.head()[0] == 0


def test_a_retention_of_zero_days_is_refused() -> None:
    with pytest.raises(ValueError, match=r"retention_days.decision: must be a whole number"):
        retention.check_days({"decision": 0})


def test_writes_queued_around_a_cut_all_commit_in_order(tmp_path: Path) -> None:
    with AuditStore.open(tmp_path / "audit.duckdb") as store:
        store.append([record(n) for n in range(30)])
        futures = [store.submit([record(n)]) for n in range(30, 40)]
        days = {"decision": 5}
        now = T0 + timedelta(days=40)
        stored, cut = store.cut(CutRequest(retention.cutoffs(days, now), days, "ops", now))
        futures += [store.submit([record(n)]) for n in range(40, 50)]
        seqs = [f.result()[0].seq for f in futures]
        assert sorted(seqs) == [s for s in range(51) if s >= 30 and s != stored.seq]
        assert cut and all(r.seq < stored.seq for r in cut)
    assert verify_file(tmp_path / "audit.duckdb").ok
