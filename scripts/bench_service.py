"""The service benchmark's parts: a server in its own process, load generators, CPU and memory.

`offerdesk serve` runs as a subprocess, so the load generator and the server have separate GILs
and separate CPU accounting. Open-loop load is sent on a fixed schedule and timed from the
scheduled send time, so a stall in the server (or in this process) shows up as latency instead
of as fewer requests (no coordinated omission). Nothing here asserts a latency: it measures.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from offerdesk.v1 import offerdesk_pb2 as pb

from service.catalog import Catalog
from service.demo import DECLINES, decide_request, timestamp
from service.simulator import World, ticket_stream

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: calls slower than this are kept with their send time, to be placed in the phase
SLOW_MS = 100.0
#: DuckDB's checkpoint_threshold (default, and the service does not change it)
WAL_CHECKPOINT_BYTES = 16 * 2**20
CORES = os.cpu_count() or 1


# -- figures ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]) of a non-empty sample."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_summary(ms: Sequence[float]) -> dict[str, float | int]:
    """Count, p50, p99, p99.9 and max of latencies in ms (zeros when there are none)."""
    if not ms:
        return {"n": 0, "p50": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0}
    return {
        "n": len(ms),
        "p50": round(statistics.median(ms), 3),
        "p99": round(percentile(ms, 0.99), 3),
        "p999": round(percentile(ms, 0.999), 3),
        "max": round(max(ms), 3),
    }


# -- the server process -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_rss_kib(pid: int) -> int:
    """Resident set size (VmRSS) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_cpu_seconds() -> tuple[float, float, float]:
    """(busy, steal, total) CPU seconds of the whole machine since boot, over all cores;
    steal is time the hypervisor gave this VM's cores to someone else."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(values[:8])  # guest time is already counted in user
    idle = values[3] + values[4]  # idle + iowait
    return (total - idle) / CLOCK_TICKS, values[7] / CLOCK_TICKS, total / CLOCK_TICKS


@dataclass
class Server:
    """A running `offerdesk serve` process on loopback."""

    proc: subprocess.Popen[bytes]
    target: str
    log: Path
    #: the audit log's WAL: DuckDB checkpoints it into the database file past 16 MiB
    wal: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        return proc_rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait for the drain and the clean close of the log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def start_server(data_dir: Path, *, timeout: float = 120) -> Server:
    """Start `offerdesk serve` on a free loopback port and wait until health says SERVING."""
    offerdesk = Path(sys.executable).with_name("offerdesk")
    target = f"127.0.0.1:{free_port()}"
    log = data_dir / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(offerdesk), "serve", "--data-dir", str(data_dir), "--listen", target],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(proc, target, log, data_dir / "audit.duckdb.wal")
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"offerdesk serve exited {proc.returncode}: {log.read_text()}")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return server
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"offerdesk serve at {target} was not SERVING within {timeout:g} s")


# -- what a phase cost: CPU shares and the server's memory ------------------------------------


@dataclass
class Usage:
    """CPU shares of the 2 (or `CORES`) cores over a phase, and the server's RSS during it."""

    wall_s: float
    server_cpu_share: float
    loadgen_cpu_share: float
    machine_busy_share: float
    steal_share: float
    server_rss_max_kib: int
    #: seconds into the phase at which the WAL was seen to shrink: DuckDB checkpoints, which
    #: hold the audit writer while they run
    wal_checkpoints_at_s: list[float]
    #: bytes appended to the WAL during the phase (growth between samples, across checkpoints)
    wal_written_bytes: int

    def document(self) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall_s, 3),
            "cores": CORES,
            "server_cpu_share": round(self.server_cpu_share, 3),
            "loadgen_cpu_share": round(self.loadgen_cpu_share, 3),
            # everything else on the machine: other people's work on this shared host
            "others_cpu_share": round(
                max(0.0, self.machine_busy_share - self.server_cpu_share - self.loadgen_cpu_share),
                3,
            ),
            "steal_share": round(self.steal_share, 3),
            "server_rss_max_mib": round(self.server_rss_max_kib / 1024, 1),
            "wal_checkpoints": len(self.wal_checkpoints_at_s),
            "wal_checkpoints_at_s": [round(t, 2) for t in self.wal_checkpoints_at_s],
            "wal_written_mib": round(self.wal_written_bytes / 2**20, 2),
        }


class Meter:
    """Measures a phase: `with Meter(server) as m: ...`, then `m.usage`.

    Shares are CPU seconds / (wall seconds × cores); the load generator's is this process's
    own CPU time (every thread). The server's RSS is sampled every 100 ms (the max is kept),
    and so is the size of its WAL (each time it shrinks, DuckDB has checkpointed it).
    """

    def __init__(self, server: Server, every: float = 0.1) -> None:
        self.server, self.every = server, every
        self._stop = threading.Event()
        self._rss_max = 0
        self._checkpoints: list[float] = []
        self._wal_written = 0
        self.usage: Usage | None = None

    def _wal_bytes(self) -> int:
        try:
            return self.server.wal.stat().st_size
        except FileNotFoundError:
            return 0

    def _sample(self) -> None:
        wal = self._wal_bytes()
        while True:
            self._rss_max = max(self._rss_max, self.server.rss_kib())
            now = self._wal_bytes()
            if now < wal:
                self._checkpoints.append(time.perf_counter() - self.started)
                self._wal_written += now  # a new WAL, begun since the checkpoint
            else:
                self._wal_written += now - wal
            wal = now
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> Meter:
        #: perf_counter at the start of the phase: Load.slow times are relative to it
        self.started = time.perf_counter()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        self._own = time.process_time()
        self._server = self.server.cpu_seconds()
        self._machine = machine_cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.started
        own = time.process_time() - self._own
        server = self.server.cpu_seconds() - self._server
        busy, steal, total = machine_cpu_seconds()
        self._stop.set()
        self._sampler.join()
        capacity = wall * CORES
        ticks = max(total - self._machine[2], 1e-9)
        self.usage = Usage(
            wall,
            server / capacity,
            own / capacity,
            (busy - self._machine[0]) / ticks,
            (steal - self._machine[1]) / ticks,
            self._rss_max,
            self._checkpoints,
            self._wal_written,
        )


# -- requests ---------------------------------------------------------------------------------


def decide_requests(
    world: World, catalog: Catalog, n: int, *, seed: int, tag: str, gap_seconds: float = 0.5
) -> list[pb.DecideRequest]:
    """`n` DecideRequests for fresh simulated resolved tickets, all resolved before now.

    Ticket ids carry `tag`, so request keys never collide with another phase's or run's.
    """
    start = datetime.now(UTC) - timedelta(seconds=1.5 * n * gap_seconds + 60)
    events = islice(
        ticket_stream(world, catalog, seed=seed, start=start, mean_gap_seconds=gap_seconds), n
    )
    return [decide_request({**ev, "ticket_id": f"{tag}-{ev['ticket_id']}"}) for ev in events]


def outcome_requests(decision_ids: Sequence[str], *, seed: int) -> list[pb.RecordOutcomeRequest]:
    """An agent's click on each offer: accepted about 30% of the time, otherwise declined."""
    rng = np.random.default_rng(seed)
    now = timestamp(datetime.now(UTC))
    out = []
    for decision_id in decision_ids:
        req = pb.RecordOutcomeRequest(decision_id=decision_id, agent_id="agent-17", occurred_at=now)
        if rng.random() < 0.3:
            req.outcome = pb.ACCEPTED
        else:
            req.outcome = pb.DECLINED
            req.decline_reason = DECLINES[int(rng.integers(len(DECLINES)))]
        out.append(req)
    return out


# -- load -------------------------------------------------------------------------------------


@dataclass
class Load:
    """What one load phase got back: latencies of successful calls, errors by status code."""

    sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    #: decision kinds (OFFER, or the no-offer reason) of Decide replies
    kinds: Counter[str] = field(default_factory=Counter)
    #: decisions that made an offer (for RecordOutcome afterwards)
    offered: list[str] = field(default_factory=list)
    #: latencies of the decisions that made an offer: the full path (scoring and SHAP)
    offer_latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    #: most calls in flight at once, and how late the scheduler sent its latest call
    max_in_flight: int = 0
    max_send_lag_ms: float = 0.0
    #: (perf_counter when due or sent, ms) of each successful call slower than SLOW_MS
    slow: list[tuple[float, float]] = field(default_factory=list)
    usage: Usage | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    def record(self, started: float, future: Any) -> None:
        """Callback of a finished call that was due (or sent) at `started`."""
        elapsed = (time.perf_counter() - started) * 1000
        error = future.exception()
        with self._lock:
            if error is not None:
                code = error.code() if isinstance(error, grpc.Call) else None
                self.errors[code.name if code is not None else type(error).__name__] += 1
                return
            self.latencies_ms.append(elapsed)
            if elapsed > SLOW_MS:
                self.slow.append((started, elapsed))
            reply = future.result()
            if isinstance(reply, pb.DecideResponse):
                if reply.kind == pb.OFFER:
                    self.kinds["OFFER"] += 1
                    self.offered.append(reply.decision_id)
                    self.offer_latencies_ms.append(elapsed)
                else:
                    self.kinds[pb.NoOfferReason.Name(reply.no_offer_reason)] += 1

    def document(self, started: float | None = None) -> dict[str, Any]:
        """The figures; `started` (a perf_counter) places the slow calls in the phase."""
        doc: dict[str, Any] = {
            "sent": self.sent,
            "ok": self.ok,
            "errors": dict(self.errors),
            "wall_s": round(self.wall_s, 3),
            "throughput_per_s": round(self.ok / self.wall_s, 1) if self.wall_s else 0.0,
            "latency_ms": latency_summary(self.latencies_ms),
            "max_in_flight": self.max_in_flight,
            "max_send_lag_ms": round(self.max_send_lag_ms, 3),
        }
        if self.kinds:
            doc["kinds"] = dict(self.kinds.most_common())
            doc["offer_latency_ms"] = latency_summary(self.offer_latencies_ms)
        if self.usage is not None:
            doc["usage"] = self.usage.document()
            if self.ok:
                # DuckDB checkpoints the WAL into the database once it passes 16 MiB
                per_call = self.usage.wal_written_bytes / self.ok
                doc["wal_kib_per_call"] = round(per_call / 1024, 2)
                doc["calls_per_wal_checkpoint"] = (
                    round(WAL_CHECKPOINT_BYTES / per_call) if per_call else None
                )
        if started is not None:
            at = [t - started for t, _ in self.slow]
            doc["slow_calls"] = {
                "over_ms": SLOW_MS,
                "n": len(at),
                "sent_from_s": round(min(at), 2) if at else None,
                "sent_to_s": round(max(at), 2) if at else None,
            }
        return doc


Call = Callable[..., Any]  # a unary-unary multicallable's .future


def open_loop(call: Call, requests: Sequence[Any], rate: float, *, timeout: float = 10) -> Load:
    """Send `requests` at `rate` per second on a fixed schedule, whatever the replies do.

    Each call is timed from its scheduled send time: if the server (or this process) stalls,
    the calls due meanwhile are late and that lateness is counted, not hidden.
    """
    load = Load(sent=len(requests))
    pending = threading.Semaphore(0)
    in_flight = 0
    count_lock = threading.Lock()

    def done(due: float, future: Any) -> None:
        nonlocal in_flight
        load.record(due, future)
        with count_lock:
            in_flight -= 1
        pending.release()

    t0 = time.perf_counter() + 0.01
    for i, req in enumerate(requests):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            load.max_send_lag_ms = max(load.max_send_lag_ms, -delay * 1000)
        with count_lock:
            in_flight += 1
            load.max_in_flight = max(load.max_in_flight, in_flight)
        future = call(req, timeout=timeout)
        future.add_done_callback(lambda f, due=due: done(due, f))
    for _ in requests:
        pending.acquire()
    load.wall_s = time.perf_counter() - t0
    return load


def closed_loop(
    call: Call, requests: Iterator[Any], *, concurrency: int, seconds: float, timeout: float = 10
) -> Load:
    """`concurrency` callers, each sending its next request as soon as its last is answered,
    for `seconds` (or until `requests` runs out). Times each call from its own send."""
    load = Load(max_in_flight=concurrency)
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def caller() -> None:
        while time.perf_counter() < stop_at:
            with lock:
                req = next(requests, None)
                if req is None:
                    return
                load.sent += 1
            started = time.perf_counter()
            future = call(req, timeout=timeout)
            future.exception()  # waits
            load.record(started, future)

    threads = [threading.Thread(target=caller) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    load.wall_s = time.perf_counter() - t0
    return load


# -- floors -----------------------------------------------------------------------------------


def empty_call_ms(channel: grpc.Channel, n: int, *, warmup: int = 100) -> list[float]:
    """Sequential health Checks: a gRPC round trip that does no work in the service."""
    stub = health_pb2_grpc.HealthStub(channel)
    req = health_pb2.HealthCheckRequest()
    out = []
    for i in range(warmup + n):
        t = time.perf_counter()
        stub.Check(req, timeout=5)
        if i >= warmup:
            out.append((time.perf_counter() - t) * 1000)
    return out


def fsync_ms(directory: Path, n: int, *, size: int = 4096) -> list[float]:
    """Append `size` bytes to a file in `directory` and fsync it, `n` times (as a WAL commit)."""
    path = directory / "fsync-probe.bin"
    block = os.urandom(size)
    out = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, block)
            os.fsync(fd)
            out.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return out


def audit_append_ms(directory: Path, n: int, *, size: int = 6000) -> list[float]:
    """Append one decision-sized record at a time to a fresh AuditStore in `directory` (hash
    chain, DuckDB appender, COMMIT and its WAL fsync): what one Decide's durable write costs
    with no other work and no batching partner."""
    from audit.records import NewRecord
    from audit.store import AuditStore

    path = directory / "append-probe.duckdb"
    body = {"padding": "x" * size}
    out = []
    with AuditStore.open(path) as store:
        for i in range(n):
            record = NewRecord("decision", datetime.now(UTC), "p_bench", f"d_{i:032x}", body)
            t = time.perf_counter()
            store.append([record])
            out.append((time.perf_counter() - t) * 1000)
    for leftover in directory.glob("append-probe.duckdb*"):
        leftover.unlink()
    return out
