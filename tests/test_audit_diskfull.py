"""Disk full, for real: the audit store and the server on a size-limited tmpfs.

The tmpfs is mounted in a private mount namespace (`unshare --map-root-user --mount`, no root
needed where user namespaces are allowed), so everything that reads it runs in the child: this
file, run as a script. The child reports what happened as JSON and the tests assert on that.
Nothing is skipped: a machine that cannot make the namespace fails, saying what to change.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

MiB = 1 << 20
# DuckDB's default checkpoint_threshold: the WAL is merged into the file when it passes this.
WAL_CHECKPOINT = 16 * MiB


def run_in_tmpfs(tmp_path: Path, size: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run this file as a script in a new mount namespace on a fresh tmpfs of ``size``."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("the disk-full tests need `unshare` (util-linux); install it")
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    mount = 'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"'
    cmd = [unshare, "--map-root-user", "--mount", "sh", "-c", mount, "sh", size, str(mount_point)]
    probe = subprocess.run([*cmd, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.fail(
            "cannot mount a size-limited tmpfs in a user+mount namespace "
            f"({' '.join(cmd[:4])} ...): {probe.stderr.strip()}. Allow unprivileged user "
            "namespaces (sysctl kernel.unprivileged_userns_clone=1, or on Ubuntu "
            "kernel.apparmor_restrict_unprivileged_userns=0) or run the tests as root."
        )
    child = subprocess.run(
        [*cmd, sys.executable, __file__, *args, str(mount_point)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = child.stdout.strip().splitlines()
    assert child.returncode == 0 and lines, (
        f"child failed ({child.returncode}):\n{child.stdout[-3000:]}\n{child.stderr[-6000:]}"
    )
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def test_a_full_disk_fails_writes_loses_nothing_and_the_store_recovers(tmp_path: Path) -> None:
    r = run_in_tmpfs(tmp_path, "48m", "store")
    # 1. The WAL write itself meets ENOSPC: those batches fail, nothing acknowledged is lost.
    one = r["phase1"]
    assert one["failures"] > 0 and one["acked"] > 0
    assert all("No space left on device" in m for m in one["messages"]), one["messages"]
    assert one["single_failures"] == 3, one
    # 2. A checkpoint meets ENOSPC: DuckDB invalidates the database; the store breaks and
    # every write fails at once while the disk stays full (recovery cannot copy the WAL).
    two = r["phase2"]
    assert two["broken"] is not None, two
    assert "No space left on device" in two["broken"], two["broken"]
    assert two["after_break"]["failed"] == two["after_break"]["tried"] == 50
    assert two["after_break"]["slowest_s"] < 0.5, two["after_break"]
    assert two["still_broken_while_full"], two
    assert two["reopen_attempts_while_full"] >= 2, two
    # 3. Space freed: the store reopens by itself and takes writes again.
    three = r["phase3"]
    assert three["recovered_after_s"] is not None and three["recovered_after_s"] < 15, three
    assert three["acked_after"] == 20
    # And the file: every acknowledged record is there, unchanged; no submission half there;
    # the chain verifies.
    final = r["final"]
    assert final["acked"] == one["acked"] + two["acked"] + three["acked_records"]
    assert final["missing"] == 0 and final["changed"] == 0, final
    assert final["partial_submissions"] == 0, final
    assert final["verify_ok"], final["verify_problem"]
    assert final["records"] == final["acked"] + final["landed_unacknowledged"]
    assert final["verified_quarantine_copies"] >= 1, final


@pytest.mark.slow
def test_the_server_on_a_full_disk_says_unavailable_then_serves_again(
    tmp_path: Path, data_dir: Path
) -> None:
    r = run_in_tmpfs(tmp_path, "96m", "server", str(data_dir))
    print(json.dumps(r))
    assert r["start"]["quarantined_at_start"] == 1, r["start"]  # the crashed pre-fill's WAL
    full = r["full"]
    assert full["acked"] > 0
    assert full["health_when_broken"] == "NOT_SERVING", full
    assert full["after_break"]["tried"] > 0, full
    assert full["after_break"]["unavailable"] == full["after_break"]["tried"], full
    assert "audit log" in full["after_break"]["detail"], full
    freed = r["freed"]
    assert freed["serving_again_after_s"] is not None and freed["serving_again_after_s"] < 15
    assert freed["decided"] == 20, freed
    final = r["final"]
    assert final["verify_ok"], final["verify_problem"]
    assert final["missing_decisions"] == 0, final
    assert final["acked_decisions"] == full["acked"] + freed["decided"]


# --- the child (runs inside the namespace) ---------------------------------------------------


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(path: Path, leave: int) -> None:
    """Write a filler file leaving about ``leave`` bytes free on its filesystem."""
    size = max(_free(path.parent) - leave, 0)
    chunk = b"\xa5" * MiB
    with path.open("wb") as f:
        while size > 0:
            size -= f.write(chunk[: min(size, MiB)])
        f.flush()
        os.fsync(f.fileno())


class _Writers:
    """Concurrent writers of 1-3 record submissions; what was acknowledged is the oracle."""

    def __init__(self, store: Any, seed: int) -> None:
        self.store = store
        self.acked: dict[int, tuple[str, str]] = {}  # seq -> (hash hex, token)
        self.messages: list[str] = []
        self.failures = 0
        self._lock = threading.Lock()
        self._seed = seed
        self._n = 0

    def record(self, token: str, part: int, parts: int, rnd: random.Random) -> Any:
        from datetime import UTC, datetime

        from audit.records import NewRecord

        body = {"token": token, "part": part, "parts": parts, "pad": rnd.randbytes(2000).hex()}
        return NewRecord("filler", datetime.now(UTC), None, token, body)

    def submit_one(self, thread: int, rnd: random.Random) -> bool:
        from audit.errors import AuditWriteError

        with self._lock:
            self._n += 1
            token = f"w{thread}-{self._n}"
        parts = rnd.randint(1, 3)
        records = [self.record(token, k, parts, rnd) for k in range(parts)]
        try:
            stored = self.store.append(records)
        except AuditWriteError as exc:
            with self._lock:
                self.failures += 1
                if len(self.messages) < 20:
                    self.messages.append(str(exc))
            return False
        with self._lock:
            for s in stored:
                self.acked[s.seq] = (s.hash.hex(), token)
        return True

    def run(self, threads: int, until: Any) -> None:
        def loop(t: int) -> None:
            rnd = random.Random(self._seed * 100 + t)
            while not until():
                self.submit_one(t, rnd)

        workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()


class _Log(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _child_store(root: Path) -> dict[str, Any]:
    from audit.errors import AuditWriteError
    from audit.recovery import QUARANTINE_DIR
    from audit.store import AuditStore

    captured = _Log()
    logging.getLogger("offerdesk.audit").addHandler(captured)
    data = root / "var"
    db = data / "audit.duckdb"
    store = AuditStore.open(db)
    writers = _Writers(store, seed=11)
    report: dict[str, Any] = {}

    # Phase 1: a few MiB of room, far below the WAL's checkpoint size.
    _fill(root / "filler-a", leave=6 * MiB)
    writers.run(8, until=lambda: writers.failures >= 20)
    rnd = random.Random(1)
    while writers.submit_one(99, rnd):  # alone now: fill to the last record that fits
        pass
    single = sum(not writers.submit_one(99, rnd) for _ in range(3))
    report["phase1"] = {
        "acked": len(writers.acked),
        "failures": writers.failures,
        "messages": writers.messages,
        "single_failures": single,
        "broken": str(store.failure()) if store.failure() else None,
        "wal_bytes": (data / "audit.duckdb.wal").stat().st_size,
    }

    # Phase 2: room for the WAL to pass the checkpoint threshold, not for the checkpoint.
    acked_before = len(writers.acked)
    writers.failures, writers.messages = 0, []
    (root / "filler-a").unlink()
    wal = (data / "audit.duckdb.wal").stat().st_size
    _fill(root / "filler-b", leave=max(WAL_CHECKPOINT - wal, 0) + 2 * MiB)
    deadline = time.monotonic() + 60
    writers.run(8, until=lambda: store.failure() is not None or time.monotonic() > deadline)
    broken = store.failure()
    slowest, failed = 0.0, 0
    for i in range(50):
        started = time.perf_counter()
        try:
            store.append([writers.record(f"after-{i}", 0, 1, rnd)])
        except AuditWriteError:
            failed += 1
        slowest = max(slowest, time.perf_counter() - started)
    time.sleep(1.5)  # recovery keeps trying; the disk is still full
    report["phase2"] = {
        "acked": len(writers.acked) - acked_before,
        "failures": writers.failures,
        "messages": writers.messages[:3],
        "broken": str(broken) if broken else None,
        "after_break": {"tried": 50, "failed": failed, "slowest_s": slowest},
        "still_broken_while_full": store.failure() is not None,
        "reopen_attempts_while_full": sum("reopen attempt" in line for line in captured.lines),
    }

    # Phase 3: space freed; the store reopens by itself.
    acked_before = len(writers.acked)
    (root / "filler-b").unlink()
    started = time.monotonic()
    recovered = None
    while time.monotonic() - started < 30:
        if store.failure() is None:
            recovered = time.monotonic() - started
            break
        time.sleep(0.05)
    after = sum(writers.submit_one(100, rnd) for _ in range(20)) if recovered is not None else 0
    report["phase3"] = {
        "recovered_after_s": recovered,
        "acked_after": after,
        "acked_records": len(writers.acked) - acked_before,
    }
    store.close()

    report["final"] = _check_file(db, writers.acked)
    quarantine = data / QUARANTINE_DIR
    report["final"]["verified_quarantine_copies"] = (
        sum((d / "verified.json").exists() for d in quarantine.iterdir())
        if quarantine.exists()
        else 0
    )
    report["log"] = captured.lines[-10:]
    return report


def _check_file(db: Path, acked: dict[int, tuple[str, str]]) -> dict[str, Any]:
    """Reopen the file and hold it against the acknowledgements."""
    from audit.store import AuditStore
    from audit.verify import verify_file

    verified = verify_file(db)
    found: dict[int, tuple[str, str]] = {}
    parts: dict[str, list[int]] = {}
    with AuditStore.open(db) as store:
        for r in store.scan():
            body = r.body
            found[r.seq] = (r.hash.hex(), str(r.ref))
            if r.kind == "filler":
                parts.setdefault(body["token"], [body["parts"]]).append(body["part"])
    missing = [seq for seq in acked if seq not in found]
    changed = [seq for seq, v in acked.items() if seq in found and found[seq] != v]
    partial = [t for t, (n, *got) in parts.items() if sorted(got) != list(range(n))]
    return {
        "acked": len(acked),
        "records": len(found),
        "missing": len(missing),
        "changed": len(changed),
        "partial_submissions": len(partial),
        "landed_unacknowledged": len([s for s in found if s not in acked]),
        "verify_ok": verified.ok,
        "verify_count": verified.count,
        "verify_problem": verified.problem,
    }


_PREFILL = """
import os, random, signal, sys
from datetime import UTC, datetime
from pathlib import Path
from audit.records import NewRecord
from audit.store import AuditStore
db, target = Path(sys.argv[1]), int(sys.argv[2])
store = AuditStore.open(db)
rnd = random.Random(0)
wal = db.with_name(db.name + ".wal")
while not wal.exists() or wal.stat().st_size < target:
    store.append([NewRecord("filler", datetime.now(UTC), None, None,
                            {"pad": rnd.randbytes(2000).hex()}) for _ in range(20)])
os.kill(os.getpid(), signal.SIGKILL)
"""


def _child_server(root: Path, source: Path) -> dict[str, Any]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc
    from test_server import request, treated_customers

    from audit.recovery import QUARANTINE_DIR
    from service.server import start
    from service.settings import load_settings
    from service.simulator import load_world

    data = root / "var"
    shutil.copytree(source / "registry", data / "registry")
    shutil.copytree(source / "profiles", data / "profiles")
    settings = load_settings(None, data_dir=data, listen="127.0.0.1:0")
    world = load_world(settings.profile_dir)
    customers = treated_customers(world, settings)
    # A log whose WAL is just short of DuckDB's checkpoint threshold, left by a killed
    # process: the next few hundred decisions make DuckDB checkpoint, on a full disk.
    subprocess.run(
        [sys.executable, "-c", _PREFILL, str(settings.audit_path), str(WAL_CHECKPOINT - MiB)],
        check=False,
    )
    running = start(settings)
    report: dict[str, Any] = {
        "start": {"quarantined_at_start": len(list((data / QUARANTINE_DIR).iterdir()))}
    }
    _fill(root / "filler", leave=3 * MiB)
    acked: dict[str, str] = {}
    lock = threading.Lock()
    stop = threading.Event()
    after: dict[str, Any] = {"tried": 0, "unavailable": 0, "detail": ""}
    broken = threading.Event()
    serving = health_pb2.HealthCheckResponse

    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = pb_grpc.OfferDeskStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        def status() -> str:
            check = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            return str(serving.ServingStatus.Name(check.status))

        def client(t: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                key = f"full-{t}-{i}"
                seen_broken = broken.is_set()
                customer = customers[(t * 997 + i) % len(customers)]
                try:
                    resp = stub.Decide(request(world, customer, key))
                except grpc.RpcError as exc:
                    if seen_broken:
                        with lock:
                            after["tried"] += 1
                            after["unavailable"] += exc.code() == grpc.StatusCode.UNAVAILABLE
                            after["detail"] = exc.details() or ""
                    continue
                with lock:
                    acked[key] = resp.decision_id
                    if seen_broken:
                        after["tried"] += 1

        clients = [threading.Thread(target=client, args=(t,)) for t in range(4)]
        for c in clients:
            c.start()
        deadline = time.monotonic() + 60
        health_when_broken = None
        while time.monotonic() < deadline:
            if status() == "NOT_SERVING":
                health_when_broken = "NOT_SERVING"
                broken.set()
                break
            time.sleep(0.02)
        time.sleep(0.5)  # calls made while broken
        stop.set()
        for c in clients:
            c.join()
        report["full"] = {
            "acked": len(acked),
            "health_when_broken": health_when_broken,
            "after_break": after,
        }
        (root / "filler").unlink()
        started = time.monotonic()
        again = None
        while time.monotonic() - started < 30:
            if status() == "SERVING":
                again = time.monotonic() - started
                break
            time.sleep(0.05)
        decided = 0
        for i in range(20):
            key = f"freed-{i}"
            acked[key] = stub.Decide(request(world, customers[i], key)).decision_id
            decided += 1
        report["freed"] = {"serving_again_after_s": again, "decided": decided}
    running.stop()
    report["final"] = _check_decisions(settings.audit_path, acked)
    return report


def _check_decisions(db: Path, acked: dict[str, str]) -> dict[str, Any]:
    from audit.store import AuditStore
    from audit.verify import verify_file

    verified = verify_file(db)
    with AuditStore.open(db) as store:
        found = {r.ref for r in store.scan(kinds=["decision"])}
    return {
        "acked_decisions": len(acked),
        "decisions_in_file": len(found),
        "missing_decisions": len(set(acked.values()) - found),
        "verify_ok": verified.ok,
        "verify_problem": verified.problem,
    }


if __name__ == "__main__":
    mode, where = sys.argv[1], Path(sys.argv[-1])
    source = Path(sys.argv[2])  # the server's trained data (unused by the store child)
    print(json.dumps(_child_store(where) if mode == "store" else _child_server(where, source)))
