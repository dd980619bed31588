"""fsync before acknowledgement, seen from outside: the real server under strace.

For each Decide call: the WAL write that holds its decision record, then an fdatasync/fsync of
that WAL file, then the first byte of the response (the HTTP/2 HEADERS frame of the call's
stream) on the client's TCP connection, in that order in the trace. Calls are made one at a
time. Files and sockets are named by strace (-yy); the call is recognised by its decision id,
which is in both the WAL bytes and the response's DATA frame.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc
from test_server import request, treated_customers

from service.settings import Settings
from service.simulator import World

CALLS = 5
SYSCALLS = "openat,fsync,fdatasync,sendmsg,sendto,write,writev"


@dataclass
class Syscall:
    name: str
    pid: int
    time: str
    entry: int  # line number of the entry (strace's order of observation)
    done: int  # line number where it returned
    fd: int | None
    target: str  # a file path, or "tcp:<local port>-><peer>"
    data: bytes  # bytes written or sent
    result: str


_LINE = re.compile(r"^(\d+)\s+(\d\d:\d\d:\d\d\.\d+) (.*)$")  # strace pads short pids
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_ENTRY = re.compile(r"^(\w+)\((.*)$")
_FD_PATH = re.compile(r"^(\d+)<((?:\\x[0-9a-f]{2})+)>")
_FD_TCP = re.compile(r"^(\d+)<TCP(?:v6)?:\[(.+?)->(.+?)\]>")
_STRING = re.compile(r'"((?:\\x[0-9a-f]{2})*)"(\.\.\.)?')
_RESULT = re.compile(r"\)\s+=\s+(-?\d+|\?)")


def _unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace("\\x", ""))


def parse_trace(path: Path) -> list[Syscall]:
    """The traced calls, completed ones only, each with where it started and returned."""
    calls: list[Syscall] = []
    pending: dict[int, Syscall] = {}
    for number, line in enumerate(path.read_text().splitlines()):
        m = _LINE.match(line)
        if not m:
            continue
        pid, at, rest = int(m[1]), m[2], m[3]
        resumed = _RESUMED.match(rest)
        if resumed:
            call = pending.pop(pid, None)
            if call is not None:
                call.done, call.result = number, _result(resumed[2])
                calls.append(call)
            continue
        entry = _ENTRY.match(rest)
        if not entry:
            continue  # signals, exits
        name, args = entry[1], entry[2]
        fd, target = None, ""
        if found := _FD_PATH.match(args):
            fd, target = int(found[1]), _unhex(found[2]).decode("utf-8", "replace")
        elif found := _FD_TCP.match(args):
            local_port = found[2].rsplit(":", 1)[1]
            fd, target = int(found[1]), f"tcp:{local_port}->{found[3]}"
        strings = _STRING.findall(args)
        assert not any(cut for _, cut in strings), f"line {number} truncated: raise -s"
        call = Syscall(name, pid, at, number, number, fd, target, b"", "")
        call.data = b"".join(_unhex(s) for s, _ in strings) if name != "openat" else b""
        if rest.endswith("<unfinished ...>"):
            pending[pid] = call
        else:
            call.result = _result(args)
            calls.append(call)
    return calls


def _result(text: str) -> str:
    m = _RESULT.search(text)
    return m[1] if m else "?"


@dataclass
class Frame:
    type: int
    stream: int
    payload: bytes
    sent_by: Syscall  # the send that carried the frame's first byte


def http2_frames(sends: list[Syscall]) -> list[Frame]:
    """The server's HTTP/2 frames on one connection, from its sends in order."""
    stream = b""
    owners: list[tuple[int, Syscall]] = []
    for send in sorted(sends, key=lambda s: s.entry):
        owners.append((len(stream), send))
        stream += send.data
    frames, offset = [], 0
    while offset + 9 <= len(stream):
        length = int.from_bytes(stream[offset : offset + 3])
        kind, stream_id = stream[offset + 3], int.from_bytes(stream[offset + 5 : offset + 9])
        owner = [s for start, s in owners if start <= offset][-1]
        payload = stream[offset + 9 : offset + 9 + length]
        frames.append(Frame(kind, stream_id & 0x7FFFFFFF, payload, owner))
        offset += 9 + length
    return frames


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


@pytest.mark.slow
def test_each_decide_is_fsynced_to_the_wal_before_its_response_is_sent(
    data_dir: Path, settings: Settings, world: World, tmp_path: Path
) -> None:
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("this test needs strace (apt-get install strace; .ci/run installs it)")
    port = _free_port()
    trace = tmp_path / "server.trace"
    offerdesk = Path(sys.executable).with_name("offerdesk")
    cmd = [strace, "-f", "--seccomp-bpf", "-tt", "-yy", "-xx", "-s", "1048576"]
    cmd += ["-e", f"trace={SYSCALLS}", "-o", str(trace), "--"]
    cmd += [str(offerdesk), "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"]
    log = tmp_path / "server.log"
    customers = treated_customers(world, settings)
    acked: list[str] = []
    with log.open("wb") as out:
        traced = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            _wait_serving(channel, traced, log)
            stub = pb_grpc.OfferDeskStub(channel)
            for i in range(CALLS):  # one at a time: no question which send answers which call
                acked.append(stub.Decide(request(world, customers[i], f"strace-{i}")).decision_id)
    finally:
        server = _children(traced.pid) if traced.poll() is None else []
        for pid in server:  # strace exits with the server
            os.kill(pid, signal.SIGTERM)
        try:
            traced.wait(timeout=60)
        except subprocess.TimeoutExpired:
            for pid in server:
                os.kill(pid, signal.SIGKILL)
            traced.wait(timeout=60)
            raise AssertionError(f"the server ignored SIGTERM for 60 s; see {log}") from None

    calls = parse_trace(trace)
    evidence = [fsynced_before_response(calls, port, decision_id) for decision_id in acked]
    print("\n" + "\n".join(evidence))
    # The check can fail: the same trace without its WAL syncs does not pass it.
    unsynced = [c for c in calls if not (c.name in ("fsync", "fdatasync") and c.fd is not None)]
    for decision_id in acked:
        with pytest.raises(AssertionError, match="no fsync/fdatasync"):
            fsynced_before_response(unsynced, port, decision_id)


def fsynced_before_response(calls: list[Syscall], port: int, decision_id: str) -> str:
    """Assert the WAL write of ``decision_id``, an fsync of that WAL, then its response."""
    wal_writes = [c for c in calls if c.name == "write" and c.target.endswith(".duckdb.wal")]
    wal_syncs = [
        c
        for c in calls
        if c.name in ("fsync", "fdatasync") and c.target.endswith(".duckdb.wal") and c.result == "0"
    ]
    sends = [
        c
        for c in calls
        if c.name in ("sendmsg", "sendto", "write", "writev") and c.target.startswith(f"tcp:{port}")
    ]
    assert wal_writes and sends, "no WAL writes or no sends on the server's port were traced"
    connections = {s.target for s in sends}
    frames = [f for c in connections for f in http2_frames([s for s in sends if s.target == c])]
    needle = decision_id.encode()
    written = _first_write_holding(wal_writes, needle)
    assert written is not None, f"{decision_id} never written to the WAL"
    data = [f for f in frames if f.type == 0 and needle in f.payload]
    assert len(data) == 1, f"{decision_id}: {len(data)} DATA frames carry it"
    call = (data[0].sent_by.target, data[0].stream)  # connection and HTTP/2 stream
    headers = [f for f in frames if f.type == 1 and (f.sent_by.target, f.stream) == call]
    response = min((f.sent_by for f in headers), key=lambda s: s.entry)
    synced = [
        s
        for s in wal_syncs
        if s.fd == written.fd and written.done < s.entry and s.done < response.entry
    ]
    assert synced, (
        f"{decision_id}: no fsync/fdatasync of {written.target} between its WAL write "
        f"(line {written.done}) and the first byte of its response (line {response.entry})"
    )
    sync = synced[0]
    return (
        f"{decision_id}: WAL write {written.time} (line {written.entry}) -> {sync.name} "
        f"returned {sync.time} (line {sync.done}) -> response HEADERS {response.time} "
        f"(line {response.entry}, {response.name})"
    )


def _first_write_holding(writes: list[Syscall], needle: bytes) -> Syscall | None:
    """The WAL write that completed the first copy of ``needle`` (writes may split it)."""
    stream, ends = b"", []
    for w in sorted(writes, key=lambda w: w.entry):
        stream += w.data
        ends.append((len(stream), w))
    at = stream.find(needle)
    if at < 0:
        return None
    last = at + len(needle)
    return next(w for end, w in ends if end >= last)


def _wait_serving(channel: grpc.Channel, traced: subprocess.Popen[bytes], log: Path) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and traced.poll() is None:
        try:
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the traced server did not start serving:\n{log.read_text()[-4000:]}")
