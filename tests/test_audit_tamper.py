"""Every tamper class, many random cases each, against a log with signed checkpoints.

The reference walk (verify_records) runs on hundreds of cases per class in memory; a sample
of each class also goes through real DuckDB and Parquet files (verify_file's vectorised
path), which must name the same record or checkpoint.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from audit.checkpoint import Checkpoint, KeyRing, SignedCheckpoint
from audit.checkpointer import Checkpointer
from audit.records import GENESIS_HASH, NewRecord, chain_hash, envelope
from audit.store import COLUMNS, AuditStore
from audit.verify import VerifyReport, export_parquet, verify_file, verify_records

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
N = 64
SEAL_EVERY = 10  # checkpoints at 10, 20, ..., 60; records 60..63 are the unsealed tail
CASES = 300  # per tamper class, in memory
FILE_CASES = 6  # per tamper class, through a real file

Row = tuple[Any, ...]


def record(n: int) -> NewRecord:
    kind = ("decision", "outcome", "consent", "conversion")[n % 4]
    return NewRecord(
        kind,
        T0 + timedelta(seconds=n),
        f"p_{n % 7:026d}",
        f"d_{n:08d}",
        {"n": n, "offer": "fibre_1g", "p_accept": round(n / 97, 6), "note": "ünïcode ✓"},
    )


@dataclass(frozen=True)
class Sealed:
    path: Path
    rows: list[Row]
    signed: list[SignedCheckpoint]

    @property
    def checkpoints(self) -> list[Checkpoint]:
        return [s.checkpoint for s in self.signed]


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> Sealed:
    root = tmp_path_factory.mktemp("sealed")
    path = root / "audit.duckdb"
    keys = KeyRing.open(root / "keys", "offerdesk.test/log/tamper")
    store = AuditStore.open(path)
    checkpointer = Checkpointer.start(
        store, keys, root / "checkpoints.jsonl", every_records=10**9, every_seconds=3600
    )
    signed = []
    for n in range(N):
        store.append([record(n)])
        if (n + 1) % SEAL_EVERY == 0:
            made = checkpointer.seal()
            assert made is not None
            signed.append(made)
    checkpointer._stop.set()  # no final seal: keep the unsealed tail for the tests
    store.close()
    con = duckdb.connect(str(path), read_only=True)
    rows = con.execute(f"SELECT {', '.join(COLUMNS)} FROM audit_records ORDER BY seq").fetchall()
    con.close()
    return Sealed(path, [tuple(r) for r in rows], signed)


def first_checkpoint_after(sealed: Sealed, size: int) -> int | None:
    """1-based number of the first checkpoint that sealed more than ``size`` records."""
    for number, checkpoint in enumerate(sealed.checkpoints, 1):
        if checkpoint.size > size:
            return number
    return None


def rechain(rows: list[Row], start: int) -> list[Row]:
    """Recompute every hash from ``start`` on, as a forger without the key would."""
    out = list(rows[:start])
    prev = out[-1][7] if out else GENESIS_HASH
    for row in rows[start:]:
        data = row[5].encode()
        digest = chain_hash(prev, data)
        out.append((*row[:6], prev, digest))
        prev = digest
    return out


def forged_row(seq: int, prev: bytes) -> Row:
    data = envelope(seq, NewRecord("decision", T0, "p_forged", "d_forged", {"n": -1}))
    return (
        seq,
        "decision",
        T0.replace(tzinfo=None),
        "p_forged",
        "d_forged",
        data.decode(),
        prev,
        chain_hash(prev, data),
    )


# Each class: (rng, rows) -> (tampered rows, expected first bad seq or None, the size the
# checkpoints must catch it at, or None when the chain itself names a record).
Tamper = Callable[[random.Random, list[Row]], tuple[list[Row], int | None, int | None]]


def edit_field(rng: random.Random, rows: list[Row]) -> tuple[list[Row], int | None, int | None]:
    k = rng.randrange(N)
    return edited(rng, rows, k), k, None


def edited(rng: random.Random, rows: list[Row], k: int) -> list[Row]:
    text = rows[k][5]
    old = f'"n":{k}'
    new = f'"n":{k + rng.randrange(1, 1000)}'
    out = list(rows)
    out[k] = (*rows[k][:5], text.replace(old, new), *rows[k][6:])
    return out


def delete_record(rng: random.Random, rows: list[Row]) -> tuple[list[Row], int | None, int | None]:
    k = rng.randrange(N - 1)  # deleting the last one is a truncation, below
    return rows[:k] + rows[k + 1 :], k, None


def insert_record(rng: random.Random, rows: list[Row]) -> tuple[list[Row], int | None, int | None]:
    k = rng.randrange(1, N)
    forged = forged_row(k, rows[k - 1][7])
    return [*rows[:k], forged, *rows[k:]], k, None


def swap_records(rng: random.Random, rows: list[Row]) -> tuple[list[Row], int | None, int | None]:
    i, j = sorted(rng.sample(range(N), 2))
    out = list(rows)
    # Everything but seq moves, as an editor who knows the projections would do it.
    out[i] = (rows[i][0], *rows[j][1:])
    out[j] = (rows[j][0], *rows[i][1:])
    return out, i, None


def reorder_range(rng: random.Random, rows: list[Row]) -> tuple[list[Row], int | None, int | None]:
    start = rng.randrange(N - 2)
    end = rng.randrange(start + 2, min(N, start + 8) + 1)
    block = rows[start:end]
    shuffled = block[:]
    while shuffled == block:
        rng.shuffle(shuffled)
    out = rows[:start] + [(block[i][0], *shuffled[i][1:]) for i in range(len(block))] + rows[end:]
    first = next(i for i in range(len(block)) if shuffled[i] != block[i])
    return out, start + first, None


def truncate_tail(rng: random.Random, rows: list[Row]) -> tuple[list[Row], int | None, int | None]:
    k = rng.randrange(N)
    return rows[:k], None, k


def rechain_from(rng: random.Random, rows: list[Row]) -> tuple[list[Row], int | None, int | None]:
    k = rng.randrange(N)
    return rechain(edited(rng, rows, k), k), None, k


CLASSES: dict[str, Tamper] = {
    "edit": edit_field,
    "delete": delete_record,
    "insert": insert_record,
    "swap": swap_records,
    "reorder": reorder_range,
    "truncate": truncate_tail,
    "rechain": rechain_from,
}


def check(report: VerifyReport, sealed: Sealed, bad_seq: int | None, cut: int | None) -> None:
    if bad_seq is not None:
        assert not report.ok
        if report.bad_checkpoint is not None and report.first_bad_seq is None:
            # A well-formed forged record at bad_seq completes a sealed size: the checkpoint
            # at bad_seq + 1 is the first thing in log order that is wrong.
            assert sealed.checkpoints[report.bad_checkpoint - 1].size == bad_seq + 1
            return
        assert report.first_bad_seq == bad_seq, report.problem
        return
    assert cut is not None
    number = first_checkpoint_after(sealed, cut)
    if number is None:
        # The documented limit: a change after the last checkpoint rests on the chain alone.
        assert report.ok, report.problem
        return
    assert not report.ok
    assert report.bad_checkpoint == number, report.problem
    assert report.problem is not None and f"checkpoint {number}" in report.problem


def test_the_untampered_log_verifies_against_every_checkpoint(sealed: Sealed) -> None:
    report = verify_records(sealed.rows, sealed.checkpoints)
    assert report.ok and report.count == N
    assert report.checkpoints == len(sealed.signed) == N // SEAL_EVERY
    assert report.sealed == (N // SEAL_EVERY) * SEAL_EVERY
    assert verify_file(sealed.path, sealed.checkpoints) == report


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_case_of_a_tamper_class_is_caught_where_it_happened(
    sealed: Sealed, name: str
) -> None:
    rng = random.Random(f"tamper-{name}")
    for _ in range(CASES):
        tampered, bad_seq, cut = CLASSES[name](rng, sealed.rows)
        check(verify_records(tampered, sealed.checkpoints), sealed, bad_seq, cut)


def write_rows(path: Path, rows: list[Row]) -> None:
    con = duckdb.connect(str(path))
    con.execute("DELETE FROM audit_records")
    con.executemany(f"INSERT INTO audit_records VALUES ({', '.join('?' * 8)})", rows)
    con.close()


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_files_name_the_same_record_or_checkpoint_as_the_reference(
    sealed: Sealed, tmp_path: Path, name: str
) -> None:
    rng = random.Random(f"file-{name}")
    for case in range(FILE_CASES):
        tampered, bad_seq, cut = CLASSES[name](rng, sealed.rows)
        path = tmp_path / f"{case}.duckdb"
        shutil.copy(sealed.path, path)
        write_rows(path, tampered)
        expected = verify_records(tampered, sealed.checkpoints)
        fast = verify_file(path, sealed.checkpoints)
        assert fast == expected
        assert verify_file(path, sealed.checkpoints, deep=True) == expected
        check(fast, sealed, bad_seq, cut)
        parquet = tmp_path / f"{case}.parquet"
        export_parquet(path, parquet)
        assert verify_file(parquet, sealed.checkpoints) == expected


def test_a_forged_checkpoint_set_does_not_rescue_a_rechained_log(sealed: Sealed) -> None:
    """A forger re-chains and re-signs with their own key: our keys reject their notes."""
    from audit.checkpoint import CheckpointError, open_note, sign

    forged_keys = KeyRing.open(sealed.path.parent / "forger", sealed.checkpoints[0].origin)
    rows = rechain(sealed.rows, 5)
    theirs = sign(
        Checkpoint(
            sealed.checkpoints[0].origin,
            SEAL_EVERY,
            verify_records(rows[:SEAL_EVERY]).head_hash,  # any value: the signature fails
            rows[SEAL_EVERY - 1][7],
            T0,
        ),
        forged_keys.active(),
    )
    ours = KeyRing.open(sealed.path.parent / "keys", sealed.checkpoints[0].origin)
    with pytest.raises(CheckpointError):
        open_note(theirs.note, ours.verifier_keys())
