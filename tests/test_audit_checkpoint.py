"""Signed checkpoints, keys, the checkpoint file and publication points of audit/checkpoint.py.

Interoperability is pinned to other implementations' vectors (golang.org/x/mod/sumdb/note's
tests and the C2SP signed-note spec example); publication points run against real things:
a git bare repository, an HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.checkpoint import (
    Checkpoint,
    CheckpointLog,
    DirectoryPublisher,
    GitPublisher,
    KeyRing,
    NoteSignature,
    Publisher,
    SignedCheckpoint,
    SigningKey,
    VerifierKey,
    WebhookPublisher,
    open_note,
    sign,
    sign_note,
    verify_note,
)
from audit.errors import AuditError, CheckpointError, PublishError
from audit.merkle import EMPTY_ROOT, root_of
from audit.records import GENESIS_HASH

DOC = Path(__file__).resolve().parent.parent / "docs" / "audit-format.md"
ORIGIN = "offerdesk.test/log/a"
T0 = datetime(2026, 11, 23, 9, 30, 0, 123456, tzinfo=UTC)
LEAVES = [hashlib.sha256(b"record %d" % i).digest() for i in range(64)]


def checkpoint(size: int, *, origin: str = ORIGIN, at: datetime = T0) -> Checkpoint:
    return Checkpoint(
        origin=origin,
        size=size,
        root=root_of(LEAVES[:size]),
        chain_head=LEAVES[size - 1] if size else GENESIS_HASH,
        time=at,
    )


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.from_seed(ORIGIN, hashlib.sha256(b"test key").digest())


# -- interoperability: golang.org/x/mod/sumdb/note (note_test.go) and c2sp.org/signed-note --

GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_PETER_SIG = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdn"
    "gotpRZb6KE6RyyBwJnAM=\n"
)
GO_ENOCH_SIG = (
    "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnW"
    "Lox33WWd1RvMc+QQ=\n"
)
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXp"
    "pzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)


def test_go_signer_reproduces_the_go_signed_note_byte_for_byte() -> None:
    signer = SigningKey.parse(GO_SKEY)
    assert signer.key_id == "PeterNeumann+c74f20a3"
    assert signer.public().text == GO_VKEY
    assert signer.to_text() == GO_SKEY
    # Ed25519 is deterministic, so our key hash, encoding and signature must equal Go's.
    assert sign_note(GO_TEXT, signer) == GO_TEXT + "\n" + GO_PETER_SIG


def test_go_verifier_key_and_note_verify() -> None:
    peter = VerifierKey.parse(GO_VKEY)
    enoch = VerifierKey.parse(GO_ENOCH_VKEY)
    assert (peter.name, peter.key_hash.hex()) == ("PeterNeumann", "c74f20a3")
    assert str(peter) == GO_VKEY and str(enoch) == GO_ENOCH_VKEY
    note = GO_TEXT + "\n" + GO_PETER_SIG + GO_ENOCH_SIG
    assert verify_note(note, [peter]) == GO_TEXT.encode()  # Enoch's unknown: ignored
    assert verify_note(note, [peter, enoch]) == GO_TEXT.encode()
    assert verify_note(note, [enoch]) == GO_TEXT.encode()
    with pytest.raises(CheckpointError, match=r"no signature by a known key.*PeterNeumann"):
        verify_note(note, [])
    # Go's "invalid signature" case: ABCD spliced into Peter's signature.
    spliced = GO_PETER_SIG[:60] + "ABCD" + GO_PETER_SIG[60:]
    with pytest.raises(CheckpointError, match="bad signature by key PeterNeumann"):
        verify_note(GO_TEXT + "\n" + spliced, [peter])
    wrong_hash = GO_PETER_SIG.replace("x08g", "xxxx")
    with pytest.raises(CheckpointError, match="unknown key PeterNeumann"):
        verify_note(GO_TEXT + "\n" + wrong_hash, [peter])


@pytest.mark.parametrize(
    "message",
    [
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + GO_PETER_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + GO_PETER_SIG,
        "\udcff" + GO_TEXT + "\n" + GO_PETER_SIG,  # Go's "\xff": not valid text
        GO_TEXT
        + "\n\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfq"
        "dngotpRZb6KE6RyyBwJnAM=",
        GO_TEXT + "\n" + GO_PETER_SIG + "Unexpected line.\n",
        GO_TEXT + "\n" + GO_PETER_SIG * 101,
    ],
)
def test_go_malformed_notes_are_rejected(message: str) -> None:
    with pytest.raises(CheckpointError, match="malformed note"):
        verify_note(message, [VerifierKey.parse(GO_VKEY)])


def test_c2sp_signed_note_spec_example_verifies() -> None:
    key = VerifierKey.parse(SPEC_VKEY)
    assert key.key_hash.hex() == "530d903a"
    assert verify_note(SPEC_NOTE, [key]) == b"This is an example message.\n"


def _manglings(text: str) -> Iterator[str]:
    """Go's TestNewVerifier: every proper substring, and every byte incremented."""
    raw = text.encode()
    for i in range(len(raw) + 1):
        for j in range(i + 1, len(raw) + 1):
            if (i, j) != (0, len(raw)):
                yield raw[i:j].decode("utf-8", "replace")
    for i in range(len(raw)):
        yield (raw[:i] + bytes([(raw[i] + 1) % 256]) + raw[i + 1 :]).decode("utf-8", "replace")


def test_every_mangled_go_verifier_key_is_rejected() -> None:
    accepted = []
    for mangled in _manglings(GO_VKEY):
        try:
            VerifierKey.parse(mangled)
        except CheckpointError:
            continue
        accepted.append(mangled)
    assert accepted == []
    # Go's two extra cases: wrong key length and unknown algorithm, each with a key hash
    # recomputed to match (so only the key check can catch them).
    for bad in (
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ):
        with pytest.raises(CheckpointError, match=r"not an Ed25519 key|not canonical base64"):
            VerifierKey.parse(bad)


def test_every_mangled_go_signer_key_is_rejected() -> None:
    accepted = []
    for mangled in _manglings(GO_SKEY):
        try:
            SigningKey.parse(mangled)
        except CheckpointError:
            continue
        accepted.append(mangled)
    assert accepted == []


def test_private_key_errors_never_echo_the_key() -> None:
    tampered = GO_SKEY[:-4] + "AAAA"
    with pytest.raises(CheckpointError) as caught:
        SigningKey.parse(tampered)
    assert GO_SKEY.rsplit("+", 1)[1][:20] not in str(caught.value)
    assert repr(SigningKey.parse(GO_SKEY)) == "SigningKey(name='PeterNeumann')"


# -- checkpoint bodies -------------------------------------------------------------------


def test_checkpoint_body_is_the_c2sp_text_with_our_extension_lines() -> None:
    cp = checkpoint(3)
    root_b64 = base64.b64encode(root_of(LEAVES[:3])).decode()
    assert (
        cp.body()
        == (
            f"{ORIGIN}\n3\n{root_b64}\nchain-head {LEAVES[2].hex()}\n"
            "time 2026-11-23T09:30:00.123456Z\n"
        ).encode()
    )
    assert Checkpoint.parse_body(cp.body()) == cp


def test_empty_log_checkpoint() -> None:
    cp = checkpoint(0)
    assert (cp.root, cp.chain_head) == (EMPTY_ROOT, bytes(32))
    assert Checkpoint.parse_body(cp.body()) == cp
    with pytest.raises(ValueError, match="empty log"):
        Checkpoint(ORIGIN, 0, LEAVES[0], bytes(32), T0)


@given(
    origin=st.from_regex(r"[!-~]{1,40}", fullmatch=True)
    | st.text(st.characters(categories=["L", "N", "P", "S"]), min_size=1, max_size=20),
    size=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    head=st.binary(min_size=32, max_size=32),
    at=st.datetimes(timezones=st.just(UTC)),
)
def test_checkpoint_body_round_trips(
    origin: str, size: int, root: bytes, head: bytes, at: datetime
) -> None:
    if size == 0:
        root, head = EMPTY_ROOT, GENESIS_HASH
    cp = Checkpoint(origin, size, root, head, at)
    assert Checkpoint.parse_body(cp.body()) == cp


def _body(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


GOOD = checkpoint(5).body().decode().splitlines()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (_body(*GOOD)[:-1], "end with a newline"),
        (_body(*GOOD, "extra"), "has 6 lines"),
        (_body(*GOOD[:4]), "has 4 lines"),
        (_body("", *GOOD[1:]), "origin"),
        (_body("a log", *GOOD[1:]), "origin"),
        (_body("log\t1", *GOOD[1:]), "origin"),
        (_body(GOOD[0], "05", *GOOD[2:]), "leading zeros"),
        (_body(GOOD[0], "+5", *GOOD[2:]), "size"),
        (_body(GOOD[0], " 5", *GOOD[2:]), "size"),
        (_body(GOOD[0], "5 ", *GOOD[2:]), "size"),
        (_body(GOOD[0], "1_0", *GOOD[2:]), "size"),
        (_body(GOOD[0], "\u0665", *GOOD[2:]), "size"),  # ARABIC-INDIC FIVE: int() takes it
        (_body(GOOD[0], "-1", *GOOD[2:]), "size"),
        (_body(GOOD[0], str(2**64), *GOOD[2:]), "size"),
        (_body(*GOOD[:2], GOOD[2][:-1], *GOOD[3:]), "base64"),
        (_body(*GOOD[:2], base64.b64encode(bytes(31)).decode(), *GOOD[3:]), "31 bytes"),
        (_body(*GOOD[:2], GOOD[2].rstrip("="), *GOOD[3:]), "base64"),  # unpadded
        (_body(*GOOD[:2], GOOD[2][:-2] + "B=", *GOOD[3:]), "canonical base64"),  # stray bits
        (
            _body(*GOOD[:3], GOOD[3].upper().replace("CHAIN-HEAD", "chain-head"), GOOD[4]),
            "chain-head",
        ),
        (_body(*GOOD[:3], GOOD[3][:-1], GOOD[4]), "chain-head"),
        (_body(*GOOD[:3], "chain-head  " + GOOD[3][11:], GOOD[4]), "chain-head"),
        (_body(*GOOD[:3], GOOD[3].replace("chain-head", "head"), GOOD[4]), "chain-head"),
        (_body(*GOOD[:4], "time 2026-11-23T09:30:00Z"), "not an audit time"),
        (_body(*GOOD[:4], GOOD[4].replace("time ", "at ")), "time"),
        (_body(*GOOD[:4], "time 2026-02-30T09:30:00.000000Z"), "not a valid time"),
        (_body(GOOD[0], "0", *GOOD[2:]), "empty log"),
        (b"\xff" + _body(*GOOD), "UTF-8"),
    ],
)
def test_checkpoint_parse_is_strict(body: bytes, problem: str) -> None:
    with pytest.raises(CheckpointError, match=problem):
        Checkpoint.parse_body(body)


def test_checkpoint_refuses_bad_fields() -> None:
    with pytest.raises(ValueError, match="origin"):
        Checkpoint("has space", 1, LEAVES[0], LEAVES[0], T0)
    with pytest.raises(ValueError, match="size"):
        Checkpoint(ORIGIN, -1, LEAVES[0], LEAVES[0], T0)
    with pytest.raises(ValueError, match="size"):
        Checkpoint(ORIGIN, True, LEAVES[0], LEAVES[0], T0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="root must be 32 bytes"):
        Checkpoint(ORIGIN, 1, LEAVES[0][:31], LEAVES[0], T0)
    with pytest.raises(ValueError, match="naive"):
        Checkpoint(ORIGIN, 1, LEAVES[0], LEAVES[0], datetime(2026, 1, 1))


# -- signing and opening -----------------------------------------------------------------


def test_sign_and_open_round_trip(key: SigningKey) -> None:
    signed = sign(checkpoint(7), key)
    assert signed.note == checkpoint(7).body().decode() + "\n" + signed.note.split("\n\n")[1]
    assert signed.signatures == (
        NoteSignature(ORIGIN, key.key_hash, signed.signatures[0].signature),
    )
    assert len(signed.signatures[0].signature) == 64
    assert signed.signatures[0].line().startswith(f"\u2014 {ORIGIN} ")
    opened = open_note(signed.note, [key.public()], origin=ORIGIN)
    assert opened == signed
    assert opened.checkpoint == checkpoint(7)


def test_tampered_checkpoint_is_rejected_as_a_bad_signature(key: SigningKey) -> None:
    signed = sign(checkpoint(7), key)
    body, sig = signed.note.split("\n\n")
    lines = body.split("\n")
    other = checkpoint(8).body().decode().split("\n")
    for index in range(5):  # swap in each line of another valid checkpoint, one at a time
        forged = "\n".join([*lines[:index], other[index], *lines[index + 1 :]])
        if forged == body:
            continue
        with pytest.raises(CheckpointError, match="bad signature"):
            open_note(forged + "\n\n" + sig, [key.public()])
    later = body.replace("09:30:00.123456Z", "09:30:00.123457Z")
    with pytest.raises(CheckpointError, match="bad signature"):
        open_note(later + "\n\n" + sig, [key.public()])


def test_every_flipped_signature_byte_is_rejected(key: SigningKey) -> None:
    signed = sign(checkpoint(7), key)
    blob = base64.b64decode(signed.note.rsplit(" ", 1)[1])
    prefix = signed.note.rsplit(" ", 1)[0]
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        note = f"{prefix} {base64.b64encode(bytes(bad)).decode()}\n"
        expected = "unknown key" if i < 4 else "bad signature"  # the first 4 are the key hash
        with pytest.raises(CheckpointError, match=expected):
            open_note(note, [key.public()])


def test_unknown_key_and_wrong_origin_are_rejected(key: SigningKey) -> None:
    signed = sign(checkpoint(7), key)
    stranger = SigningKey.generate(ORIGIN)  # same name, other key: another key hash
    with pytest.raises(CheckpointError, match=rf"unknown key {ORIGIN}\+{key.key_hash.hex()}"):
        open_note(signed.note, [stranger.public()])
    with pytest.raises(CheckpointError, match="known keys: none"):
        open_note(signed.note, [])
    with pytest.raises(CheckpointError, match=r"not 'offerdesk.test/log/b'"):
        open_note(signed.note, [key.public()], origin="offerdesk.test/log/b")


def test_every_truncation_of_a_note_is_rejected(key: SigningKey) -> None:
    note = sign(checkpoint(7), key).note
    for end in range(len(note)):
        with pytest.raises(CheckpointError):
            open_note(note[:end], [key.public()])
    with pytest.raises(CheckpointError, match="malformed"):
        open_note(note + "\u2014 trailing\n", [key.public()])


def test_cosigned_note_verifies_with_any_known_signer(key: SigningKey) -> None:
    witness = SigningKey.from_seed("witness.example", bytes(32))
    signed = sign(checkpoint(7), key, witness)
    assert [s.key_name for s in signed.signatures] == [ORIGIN, "witness.example"]
    open_note(signed.note, [key.public()])
    open_note(signed.note, [witness.public()])
    open_note(signed.note, [key.public(), witness.public()])
    with pytest.raises(ValueError, match="signs twice"):
        sign(checkpoint(7), key, key)


def test_ambiguous_keys_are_refused(key: SigningKey) -> None:
    signed = sign(checkpoint(7), key)
    impostor = VerifierKey.__new__(VerifierKey)  # a colliding key hash cannot be built honestly
    object.__setattr__(impostor, "name", key.name)
    object.__setattr__(impostor, "key_hash", key.key_hash)
    object.__setattr__(impostor, "public_key", bytes(32))
    with pytest.raises(CheckpointError, match="ambiguous key"):
        open_note(signed.note, [key.public(), impostor])
    open_note(signed.note, [key.public(), key.public()])  # the same key twice is fine


def test_signed_checkpoint_must_carry_its_own_body(key: SigningKey) -> None:
    signed = sign(checkpoint(7), key)
    with pytest.raises(ValueError, match="not this checkpoint"):
        SignedCheckpoint(checkpoint(8), signed.note)


def test_verifier_key_refuses_a_hash_that_is_not_its_own(key: SigningKey) -> None:
    with pytest.raises(ValueError, match="does not belong"):
        VerifierKey(key.name, b"\x00\x00\x00\x00", key.public_key)
    with pytest.raises(ValueError, match="key name"):
        SigningKey.generate("a+b")
    with pytest.raises(ValueError, match="key name"):
        SigningKey.generate("a b")


# -- the key directory -------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_ring_creates_a_private_directory_and_a_first_key(tmp_path: Path) -> None:
    directory = tmp_path / "secrets" / "signing"
    ring = KeyRing.open(directory, ORIGIN)
    key = ring.active()
    assert key.name == ORIGIN == ring.name
    assert _mode(directory) == 0o700
    key_file = directory / f"{key.key_hash.hex()}.key"
    assert _mode(key_file) == 0o600
    assert key_file.read_text() == key.to_text() + "\n"
    assert key_file.read_text().startswith(f"PRIVATE+KEY+{ORIGIN}+{key.key_hash.hex()}+")
    assert (directory / "active").read_text() == key.key_hash.hex() + "\n"
    assert sorted(p.name for p in directory.iterdir()) == sorted([key_file.name, "active"])
    assert KeyRing.open(directory, ORIGIN).active() == key
    assert KeyRing.open(directory).active() == key  # the name is read back


def test_key_ring_without_a_name_makes_one_up(tmp_path: Path) -> None:
    ring = KeyRing.open(tmp_path / "k")
    assert ring.name.startswith("offerdesk.local/log/") and len(ring.name) == 36


def test_rotation_keeps_old_keys_for_verifying(tmp_path: Path) -> None:
    directory = tmp_path / "signing"
    ring = KeyRing.open(directory, ORIGIN)
    first = ring.active()
    old_note = sign(checkpoint(3), first).note
    second = ring.rotate()
    third = ring.rotate()
    assert ring.active() == third != second != first
    assert {second.name, third.name} == {ORIGIN}
    verifiers = ring.verifier_keys()
    assert verifiers == [first.public(), second.public(), third.public()]
    assert [VerifierKey.parse(v.text) for v in verifiers] == verifiers
    reopened = KeyRing.open(directory, ORIGIN)
    assert reopened.active() == third
    assert reopened.verifier_keys() == verifiers  # oldest first, read back from the files
    open_note(old_note, reopened.verifier_keys())
    for k in (first, second, third):
        assert _mode(directory / f"{k.key_hash.hex()}.key") == 0o600


def test_key_ring_refuses_keys_readable_by_others(tmp_path: Path) -> None:
    directory = tmp_path / "signing"
    key = KeyRing.open(directory, ORIGIN).active()
    key_file = directory / f"{key.key_hash.hex()}.key"
    key_file.chmod(0o644)
    with pytest.raises(CheckpointError, match=r"accessible to other users.*chmod 600"):
        KeyRing.open(directory, ORIGIN)
    key_file.chmod(0o600)
    directory.chmod(0o755)
    with pytest.raises(CheckpointError, match=r"accessible to other users.*chmod 700"):
        KeyRing.open(directory, ORIGIN)


def test_key_ring_refuses_another_logs_keys_and_damaged_files(tmp_path: Path) -> None:
    directory = tmp_path / "signing"
    key = KeyRing.open(directory, ORIGIN).active()
    with pytest.raises(CheckpointError, match=r"holds keys of log 'offerdesk.test/log/a'"):
        KeyRing.open(directory, "offerdesk.test/log/b")
    key_file = directory / f"{key.key_hash.hex()}.key"
    text = key_file.read_text()
    key_file.write_text(text[:-6] + "AAAAA\n")
    with pytest.raises(CheckpointError, match="is damaged"):
        KeyRing.open(directory, ORIGIN)
    key_file.write_text(text)
    key_file.rename(directory / "00000000.key")
    with pytest.raises(CheckpointError, match="was renamed"):
        KeyRing.open(directory, ORIGIN)


def test_key_ring_active_file_problems(tmp_path: Path) -> None:
    directory = tmp_path / "signing"
    ring = KeyRing.open(directory, ORIGIN)
    first = ring.active()
    (directory / "active").unlink()  # a crash after the first key was written
    assert KeyRing.open(directory, ORIGIN).active() == first
    ring.rotate()
    (directory / "active").unlink()
    with pytest.raises(CheckpointError, match="missing and the directory holds 2 keys"):
        KeyRing.open(directory, ORIGIN)
    (directory / "active").write_text("deadbeef\n")
    with pytest.raises(CheckpointError, match="names key 'deadbeef'"):
        KeyRing.open(directory, ORIGIN)


# -- the checkpoint file -----------------------------------------------------------------


def test_checkpoint_log_appends_and_reads_back(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "checkpoints.jsonl"
    assert CheckpointLog.read(path, [key.public()]) == []
    log = CheckpointLog(path)
    signed = [sign(checkpoint(size, at=T0 + timedelta(seconds=size)), key) for size in (0, 3, 3, 9)]
    for s in signed:
        log.append(s)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 5
    assert (
        lines[0]
        == json.dumps({"note": signed[0].note}, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert CheckpointLog.read(path, [key.public()]) == signed
    assert CheckpointLog.read(path, [key.public()], origin=ORIGIN) == signed
    with pytest.raises(CheckpointError, match="line 1: checkpoint is of log"):
        CheckpointLog.read(path, [key.public()], origin="other")
    # A new CheckpointLog on the same file continues it.
    CheckpointLog(path).append(sign(checkpoint(10), key))
    assert len(CheckpointLog.read(path, [key.public()])) == 5


def _write_lines(path: Path, *signed: SignedCheckpoint) -> None:
    path.write_bytes(
        b"".join(
            json.dumps({"note": s.note}, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
            for s in signed
        )
    )


def test_checkpoint_log_catches_a_log_that_went_back(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "c.jsonl"
    _write_lines(path, sign(checkpoint(3), key), sign(checkpoint(9), key), sign(checkpoint(5), key))
    with pytest.raises(CheckpointError, match=r"line 3: size 5 after size 9"):
        CheckpointLog.read(path, [key.public()])
    log = CheckpointLog(path.with_name("d.jsonl"))
    log.append(sign(checkpoint(9), key))
    with pytest.raises(CheckpointError, match="size 5 after size 9"):
        log.append(sign(checkpoint(5), key))


def test_checkpoint_log_catches_two_roots_for_one_size(tmp_path: Path, key: SigningKey) -> None:
    forged = Checkpoint(ORIGIN, 9, hashlib.sha256(b"other").digest(), LEAVES[8], T0)
    path = tmp_path / "c.jsonl"
    _write_lines(path, sign(checkpoint(3), key), sign(checkpoint(9), key), sign(forged, key))
    with pytest.raises(CheckpointError, match=r"line 3: a different root for the same size 9"):
        CheckpointLog.read(path, [key.public()])
    log = CheckpointLog(tmp_path / "d.jsonl")
    log.append(sign(checkpoint(9), key))
    with pytest.raises(CheckpointError, match="different root"):
        log.append(sign(forged, key))


def test_checkpoint_log_catches_mixed_origins(tmp_path: Path, key: SigningKey) -> None:
    other = SigningKey.from_seed("offerdesk.test/log/b", bytes(32))
    path = tmp_path / "c.jsonl"
    _write_lines(
        path,
        sign(checkpoint(3), key),
        sign(checkpoint(4), key),
        sign(checkpoint(5, origin=other.name), other),
    )
    with pytest.raises(CheckpointError, match=r"line 3: checkpoint of log 'offerdesk.test/log/b'"):
        CheckpointLog.read(path, [key.public(), other.public()])
    with pytest.raises(CheckpointError, match=r"line 3: note has no signature by a known key"):
        CheckpointLog.read(path, [key.public()])


def test_checkpoint_log_names_the_torn_line(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "c.jsonl"
    log = CheckpointLog(path)
    first, second = sign(checkpoint(3), key), sign(checkpoint(4), key)
    log.append(first)
    log.append(second)
    whole = path.read_bytes()
    torn = json.dumps({"note": sign(checkpoint(5), key).note}, ensure_ascii=False)[:40].encode()
    path.write_bytes(whole + torn)
    with pytest.raises(CheckpointError, match=r"line 3: torn line"):
        CheckpointLog.read(path, [key.public()])
    assert CheckpointLog.read(path, [key.public()], allow_torn_tail=True) == [first, second]
    with pytest.raises(CheckpointError, match="torn line"):
        CheckpointLog(path).append(sign(checkpoint(5), key))
    assert CheckpointLog.truncate_torn_tail(path) == len(torn)
    assert path.read_bytes() == whole
    assert CheckpointLog.truncate_torn_tail(path) == 0
    CheckpointLog(path).append(sign(checkpoint(5), key))
    assert len(CheckpointLog.read(path, [key.public()])) == 3


def test_checkpoint_log_names_edited_lines(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "c.jsonl"
    log = CheckpointLog(path)
    for size in (1, 2, 3):
        log.append(sign(checkpoint(size), key))
    original = path.read_bytes()
    lines = original.split(b"\n")

    def expect(edited_line: bytes, problem: str) -> None:
        path.write_bytes(b"\n".join([lines[0], edited_line, *lines[2:]]))
        with pytest.raises(CheckpointError, match=rf"line 2: .*{problem}"):
            CheckpointLog.read(path, [key.public()])

    expect(lines[1].replace(b"\\n2\\n", b"\\n20\\n"), "bad signature")
    expect(lines[1].replace(b'{"note":', b'{"note": '), "not canonical")
    expect(lines[1].replace(b'"note"', b'"notes"'), "expected")
    expect(b"", "not a JSON line")
    expect(b"[1]", "expected")
    path.write_bytes(original)
    assert len(CheckpointLog.read(path, [key.public()])) == 3


# -- publication points ------------------------------------------------------------------


def test_publishers_satisfy_the_protocol(tmp_path: Path) -> None:
    for publisher in (
        DirectoryPublisher(tmp_path),
        GitPublisher(tmp_path / "g"),
        WebhookPublisher("http://127.0.0.1:9/x"),
    ):
        assert isinstance(publisher, Publisher)
        assert publisher.name
    assert issubclass(PublishError, AuditError) and issubclass(CheckpointError, AuditError)


def test_directory_publisher_writes_each_size_once(tmp_path: Path, key: SigningKey) -> None:
    target = tmp_path / "published"
    publisher = DirectoryPublisher(target)
    three, five = sign(checkpoint(3), key), sign(checkpoint(5), key)
    publisher.publish(three)
    publisher.publish(five)
    publisher.publish(five)  # a retry of the same note is fine
    assert (target / "3.checkpoint").read_text() == three.note
    assert (target / "5.checkpoint").read_text() == five.note
    assert (target / "latest").read_text() == five.note
    publisher.publish(three)  # late: `latest` does not move back
    assert (target / "latest").read_text() == five.note
    resigned = sign(checkpoint(5, at=T0 + timedelta(seconds=1)), key)
    with pytest.raises(PublishError, match="already holds a different checkpoint for size 5"):
        publisher.publish(resigned)
    assert (target / "5.checkpoint").read_text() == five.note
    assert not [p for p in target.iterdir() if p.name.startswith(".")]  # no temp files left


def test_directory_publisher_reports_io_errors(tmp_path: Path, key: SigningKey) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PublishError, match="cannot publish checkpoint 3"):
        DirectoryPublisher(blocker / "sub").publish(sign(checkpoint(3), key))


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


def test_git_publisher_commits_and_pushes_to_a_bare_remote(tmp_path: Path, key: SigningKey) -> None:
    remote = tmp_path / "remote.git"
    _git("init", "-q", "--bare", str(remote))
    work = tmp_path / "work"
    publisher = GitPublisher(work, str(remote))
    three, five = sign(checkpoint(3), key), sign(checkpoint(5), key)
    publisher.publish(three)
    publisher.publish(five)
    publisher.publish(five)  # a retry: nothing new to commit, the push is a no-op
    gd = f"--git-dir={remote}"
    assert _git(gd, "log", "--format=%s", "main").splitlines() == [
        f"checkpoint {ORIGIN} 5",
        f"checkpoint {ORIGIN} 3",
    ]
    assert _git(gd, "log", "-1", "--format=%an <%ae>", "main").strip() == (
        "offerdesk <offerdesk@localhost>"
    )
    assert _git(gd, "show", "main:checkpoint") == five.note
    assert _git(gd, "show", "main~1:checkpoint") == three.note
    pushed = [
        json.loads(line)["note"] for line in _git(gd, "show", "main:checkpoints.jsonl").splitlines()
    ]
    assert pushed == [three.note, five.note]
    open_note(_git(gd, "show", "main:checkpoint"), [key.public()])
    with pytest.raises(PublishError, match="different checkpoint for size 5"):
        publisher.publish(sign(checkpoint(5, at=T0 + timedelta(seconds=1)), key))
    with pytest.raises(PublishError, match="refusing to move it back"):
        publisher.publish(three)


def test_git_publisher_without_remote_and_with_a_broken_one(
    tmp_path: Path, key: SigningKey
) -> None:
    local = GitPublisher(tmp_path / "local")
    local.publish(sign(checkpoint(3), key))
    assert _git("-C", str(tmp_path / "local"), "log", "--format=%s").strip() == (
        f"checkpoint {ORIGIN} 3"
    )
    broken = GitPublisher(tmp_path / "work", str(tmp_path / "missing.git"), timeout_seconds=30)
    with pytest.raises(PublishError, match="git push failed"):
        broken.publish(sign(checkpoint(3), key))
    # Once the remote exists, the retry pushes the commit that was already made.
    _git("init", "-q", "--bare", str(tmp_path / "missing.git"))
    broken.publish(sign(checkpoint(3), key))
    assert _git(f"--git-dir={tmp_path / 'missing.git'}", "log", "--format=%s", "main").strip() == (
        f"checkpoint {ORIGIN} 3"
    )


def test_git_publisher_refuses_a_rewritten_remote_history(tmp_path: Path, key: SigningKey) -> None:
    remote = tmp_path / "remote.git"
    _git("init", "-q", "--bare", str(remote))
    GitPublisher(tmp_path / "a", str(remote)).publish(sign(checkpoint(5), key))
    # A second work tree with its own history (a rewritten log re-signed elsewhere).
    with pytest.raises(PublishError, match="git push failed"):
        GitPublisher(tmp_path / "b", str(remote)).publish(sign(checkpoint(3), key))


class _Recorder(BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []
    status: ClassVar[int] = 200

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).requests.append((self.path, dict(self.headers), self.rfile.read(length)))
        self.send_response(type(self).status)
        if type(self).status in (301, 302, 307):
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Recorder", (_Recorder,), {"requests": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_webhook_posts_the_note_with_an_hmac(
    http_server: tuple[str, type[_Recorder]], key: SigningKey
) -> None:
    url, handler = http_server
    secret = b"webhook secret of the receiver"
    signed = sign(checkpoint(5), key)
    WebhookPublisher(url + "/hook", secret, timeout_seconds=5).publish(signed)
    ((path, headers, body),) = handler.requests
    assert path == "/hook"
    assert body == signed.note.encode()
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    assert headers["X-Offerdesk-Signature"] == f"sha256={expected}"
    WebhookPublisher(url + "/plain").publish(signed)
    assert "X-Offerdesk-Signature" not in handler.requests[1][1]


@pytest.mark.parametrize("status", [500, 404, 302])
def test_webhook_non_2xx_is_a_publish_error(
    http_server: tuple[str, type[_Recorder]], key: SigningKey, status: int
) -> None:
    url, handler = http_server
    handler.status = status
    with pytest.raises(PublishError, match=f"HTTP {status}"):
        WebhookPublisher(url, b"s").publish(sign(checkpoint(5), key))
    assert len(handler.requests) == 1  # a redirect is not followed


def test_webhook_unreachable_and_bad_urls(key: SigningKey) -> None:
    with pytest.raises(PublishError, match="cannot POST"):
        WebhookPublisher("http://127.0.0.1:9/x", timeout_seconds=2).publish(
            sign(checkpoint(5), key)
        )
    with pytest.raises(ValueError, match="http or https"):
        WebhookPublisher("file:///etc/passwd")
    publisher = WebhookPublisher("https://user:hunter2@example.com/hook")
    assert "hunter2" not in publisher.name and "user" not in publisher.name


# -- the documented test vector ----------------------------------------------------------

DOC_SEED = bytes(range(32))
DOC_ORIGIN = "offerdesk.local/log/example"
DOC_VKEY = "offerdesk.local/log/example+8f0dd9ed+AQOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"
DOC_SKEY = (
    "PRIVATE+KEY+offerdesk.local/log/example+8f0dd9ed+AQABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"
)
DOC_NOTE = (
    "offerdesk.local/log/example\n"
    "5\n"
    "TiP7QNiHbxKZzKmzwoQyoBsR0aIBJmBpFGEokv8uCac=\n"
    "chain-head 4b227777d4dd1fc61c6f884f48641d02b4d121d3fd328cb08b5531fcacdabf8a\n"
    "time 2026-01-02T03:04:05.000006Z\n"
    "\n"
    "\u2014 offerdesk.local/log/example jw3Z7eQ0/ct9EI0Q/eWPVlHskfmSCu1o7ylD+qbWiIBxkvRzBibn6BFOyT"
    "Hdy8tqoBCMPjC5h6yQf9A6Fcx+RSIVUQM=\n"
)


def test_documented_checkpoint_vector() -> None:
    doc = DOC.read_text(encoding="utf-8")
    leaves = [hashlib.sha256(str(i).encode()).digest() for i in range(5)]
    key = SigningKey.from_seed(DOC_ORIGIN, DOC_SEED)
    assert key.public().text == DOC_VKEY
    assert key.to_text() == DOC_SKEY
    cp = Checkpoint(
        DOC_ORIGIN, 5, root_of(leaves), leaves[4], datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    )
    signed = sign(cp, key)
    assert signed.note == DOC_NOTE
    assert open_note(DOC_NOTE, [VerifierKey.parse(DOC_VKEY)]).checkpoint == cp
    assert DOC_VKEY in doc and DOC_SKEY in doc
    assert DOC_NOTE in doc
    line = json.dumps({"note": DOC_NOTE}, separators=(",", ":"), ensure_ascii=False)
    assert line in doc


def test_files_are_not_left_behind_with_private_bits_wrong(tmp_path: Path) -> None:
    old = os.umask(0o000)  # even a permissive umask must not loosen the key files
    try:
        ring = KeyRing.open(tmp_path / "signing", ORIGIN)
        ring.rotate()
    finally:
        os.umask(old)
    assert _mode(tmp_path / "signing") == 0o700
    assert {_mode(p) for p in (tmp_path / "signing").glob("*.key")} == {0o600}
