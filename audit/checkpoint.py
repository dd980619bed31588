"""Signed checkpoints of the audit log, kept and published outside the database.

A checkpoint is a C2SP tlog-checkpoint body (origin, size, Merkle root, plus chain head and
time) in a C2SP signed note, signed with Ed25519 keys in the golang.org/x/mod/sumdb/note
format, so standard tools can read and verify it. Here: the keys and their directory, the
append-only checkpoint file, and the publication points that copy each note off the host.
It must never accept a note it has not verified, never overwrite a key, a checkpoint line or
a published note, and never write a private key anywhere but the key directory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from audit.errors import CheckpointError, PublishError
from audit.merkle import EMPTY_ROOT
from audit.records import GENESIS_HASH, canonical_json, decode_time, encode_time

# C2SP signed-note: a signature line starts with U+2014 EM DASH and a space.
SIGNATURE_PREFIX = "\u2014 "
# golang.org/x/mod/sumdb/note's signature type byte for Ed25519.
ALG_ED25519 = 0x01
# Go's note.Open refuses notes with more signatures than this; so do we.
MAX_SIGNATURES = 100

_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")
_HEX8 = re.compile(r"[0-9a-f]{8}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_ORIGIN_CHARS = 1024
_MAX_SIZE = 2**64 - 1  # C2SP sizes are uint64
_KEY_SUFFIX = ".key"
_ACTIVE = "active"
_FILE_MODE = 0o644
_SECRET_MODE = 0o600
_SECRET_DIR_MODE = 0o700
_TAIL_CHUNK = 64 * 1024


# -- names, base64, key hashes -----------------------------------------------------------


def _check_key_name(name: str) -> str:
    """A note key name: non-empty, printable, no whitespace and no '+' (Go's isValidName)."""
    if not isinstance(name, str):
        raise TypeError(f"key name must be str, got {type(name).__name__}")
    if not name or "+" in name or any(c.isspace() for c in name) or not name.isprintable():
        raise ValueError(
            f"key name {name!r} must be non-empty printable text without spaces or '+'"
        )
    return name


def _check_origin(origin: str) -> str:
    if not isinstance(origin, str):
        raise TypeError(f"origin must be str, got {type(origin).__name__}")
    if (
        not 0 < len(origin) <= _MAX_ORIGIN_CHARS
        or any(c.isspace() for c in origin)
        or not origin.isprintable()
    ):
        raise ValueError(
            f"origin {origin!r} must be 1-{_MAX_ORIGIN_CHARS} printable characters "
            "without spaces (the log's name, e.g. example.com/log)"
        )
    return origin


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    """Strict standard base64: padded, no stray characters, canonical (one text per value)."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise CheckpointError(f"{what} {text!r} is not standard base64") from None
    if _b64(data) != text:
        raise CheckpointError(f"{what} {text!r} is not canonical base64")
    return data


def _key_hash(name: str, public_key: bytes) -> bytes:
    """First 4 bytes of SHA-256(name || 0x0A || 0x01 || public key): the note key hash."""
    message = name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public_key
    return hashlib.sha256(message).digest()[:4]


# -- keys --------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifierKey:
    """A public key that verifies notes, named as in its signature lines.

    Its text form is the Go note verifier string ``<name>+<8 hex key hash>+<base64(0x01 ||
    public key)>``, which tools such as golang.org/x/mod/sumdb/note read directly.
    """

    name: str
    key_hash: bytes
    public_key: bytes

    def __post_init__(self) -> None:
        _check_key_name(self.name)
        if not isinstance(self.public_key, bytes) or len(self.public_key) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        if self.key_hash != _key_hash(self.name, self.public_key):
            raise ValueError(
                f"key hash {bytes(self.key_hash).hex()} does not belong to this name and key"
            )

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> VerifierKey:
        return cls(name, _key_hash(_check_key_name(name), public_key), public_key)

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        """Read a verifier string; CheckpointError says what is wrong with it."""
        if not isinstance(text, str):
            raise CheckpointError(f"a verifier key is text, not {type(text).__name__}")
        parts = text.strip().split("+", 2)  # base64 may itself contain '+'
        if len(parts) != 3:
            raise CheckpointError(f"verifier key {text!r} is not <name>+<hash>+<key>")
        name, hash_hex, key_b64 = parts
        try:
            _check_key_name(name)
        except ValueError as exc:
            raise CheckpointError(f"verifier key {text!r}: {exc}") from None
        if not _HEX8.fullmatch(hash_hex):
            raise CheckpointError(f"verifier key {text!r}: key hash must be 8 lowercase hex digits")
        key = _unb64(key_b64, "verifier key")
        if len(key) != 33 or key[0] != ALG_ED25519:
            raise CheckpointError(
                f"verifier key {text!r} is not an Ed25519 key (type byte 0x01 and 32 bytes)"
            )
        if _key_hash(name, key[1:]) != bytes.fromhex(hash_hex):
            raise CheckpointError(
                f"verifier key {text!r}: key hash {hash_hex} does not match the name and key "
                "(altered or mistyped?)"
            )
        return cls(name, bytes.fromhex(hash_hex), key[1:])

    @property
    def key_id(self) -> str:
        """``<name>+<8 hex key hash>``: how errors and signature lines identify the key."""
        return f"{self.name}+{self.key_hash.hex()}"

    @property
    def text(self) -> str:
        return f"{self.key_id}+{_b64(bytes([ALG_ED25519]) + self.public_key)}"

    def __str__(self) -> str:
        return self.text

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True if ``signature`` is this key's Ed25519 signature of ``message``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, eq=False)
class SigningKey:
    """An Ed25519 private key and the name it signs under (the log's origin).

    Its text form (``to_text``) is the Go note signer string ``PRIVATE+KEY+<name>+<8 hex>+
    <base64(0x01 || 32-byte seed)>``. Equal when name and public key are equal.
    """

    name: str
    private_key: Ed25519PrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        _check_key_name(self.name)
        if not isinstance(self.private_key, Ed25519PrivateKey):
            raise TypeError("private_key must be an Ed25519PrivateKey")

    @classmethod
    def generate(cls, name: str) -> SigningKey:
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, name: str, seed: bytes) -> SigningKey:
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(name, Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def parse(cls, text: str) -> SigningKey:
        """Read a signer string. Errors never echo the text: it holds the private key."""
        parts = text.strip().split("+", 4) if isinstance(text, str) else []
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise CheckpointError("not a private key: expected PRIVATE+KEY+<name>+<hash>+<key>")
        _, _, name, hash_hex, key_b64 = parts
        try:
            _check_key_name(name)
            key = base64.b64decode(key_b64.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            raise CheckpointError(f"private key of {name!r} is malformed") from None
        if not _HEX8.fullmatch(hash_hex) or len(key) != 33 or key[0] != ALG_ED25519:
            raise CheckpointError(f"private key of {name!r} is not an Ed25519 note key")
        signer = cls.from_seed(name, key[1:])
        if signer.key_hash.hex() != hash_hex:
            raise CheckpointError(
                f"private key of {name!r}: key hash {hash_hex} does not match the key "
                f"(it is {signer.key_hash.hex()}); the file was altered"
            )
        return signer

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes_raw()

    @property
    def key_hash(self) -> bytes:
        return _key_hash(self.name, self.public_key)

    @property
    def key_id(self) -> str:
        """``<name>+<8 hex key hash>``."""
        return f"{self.name}+{self.key_hash.hex()}"

    def public(self) -> VerifierKey:
        return VerifierKey(self.name, self.key_hash, self.public_key)

    def to_text(self) -> str:
        """The signer string. Secret: write it only to the key directory."""
        seed = self.private_key.private_bytes_raw()
        return f"PRIVATE+KEY+{self.key_id}+{_b64(bytes([ALG_ED25519]) + seed)}"

    def sign_bytes(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SigningKey):
            return NotImplemented
        return (self.name, self.public_key) == (other.name, other.public_key)

    def __hash__(self) -> int:
        return hash((self.name, self.public_key))


# -- checkpoints and notes ---------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """What is signed: the log ``origin`` had ``size`` records, with this root and head.

    ``root`` is the RFC 9162 root over the first ``size`` chain hashes (audit.merkle) and
    ``chain_head`` the chain hash of record ``size - 1`` (32 zero bytes when empty).
    """

    origin: str
    size: int
    root: bytes
    chain_head: bytes
    time: datetime

    def __post_init__(self) -> None:
        _check_origin(self.origin)
        if type(self.size) is not int or not 0 <= self.size <= _MAX_SIZE:
            raise ValueError(f"size {self.size!r} must be an integer from 0 to 2**64-1")
        for name in ("root", "chain_head"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 32:
                raise ValueError(f"{name} must be 32 bytes, got {value!r}")
        encode_time(self.time)  # refuses naive datetimes and non-datetimes, naming them
        if self.size == 0 and (self.root != EMPTY_ROOT or self.chain_head != GENESIS_HASH):
            raise ValueError(
                "an empty log's root is SHA-256 of nothing and its chain head 32 zero bytes"
            )

    def body(self) -> bytes:
        """The C2SP checkpoint text that is signed, ending in a newline."""
        return (
            f"{self.origin}\n{self.size}\n{_b64(self.root)}\n"
            f"chain-head {self.chain_head.hex()}\ntime {encode_time(self.time)}\n"
        ).encode()

    @classmethod
    def parse_body(cls, body: bytes) -> Checkpoint:
        """Read a checkpoint body strictly: exactly the five lines ``body()`` writes."""
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError("checkpoint is not UTF-8 text") from None
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) != 5:
            raise CheckpointError(
                f"checkpoint has {len(lines)} lines; expected 5: origin, size, root, "
                "chain-head, time"
            )
        origin, size_text, root_text, head_line, time_line = lines
        try:
            _check_origin(origin)
        except ValueError as exc:
            raise CheckpointError(f"checkpoint {exc}") from None
        if not _SIZE.fullmatch(size_text) or int(size_text) > _MAX_SIZE:
            raise CheckpointError(
                f"checkpoint size {size_text!r} is not a decimal number without leading zeros"
            )
        root = _unb64(root_text, "checkpoint root")
        if len(root) != 32:
            raise CheckpointError(f"checkpoint root is {len(root)} bytes, not 32")
        head = head_line.removeprefix("chain-head ")
        if head == head_line or not _HEX64.fullmatch(head):
            raise CheckpointError(
                f"checkpoint line 4 {head_line!r} is not 'chain-head <64 lowercase hex>'"
            )
        when = time_line.removeprefix("time ")
        if when == time_line:
            raise CheckpointError(f"checkpoint line 5 {time_line!r} is not 'time <time>'")
        try:
            checkpoint = cls(origin, int(size_text), root, bytes.fromhex(head), decode_time(when))
        except ValueError as exc:
            raise CheckpointError(f"checkpoint: {exc}") from None
        if checkpoint.body() != body:  # one text per checkpoint, so signatures are unambiguous
            raise CheckpointError("checkpoint is not in canonical form")
        return checkpoint


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, 4-byte key hash and the signature bytes."""

    key_name: str
    key_hash: bytes
    signature: bytes

    @property
    def key_id(self) -> str:
        return f"{self.key_name}+{self.key_hash.hex()}"

    def line(self) -> str:
        return f"{SIGNATURE_PREFIX}{self.key_name} {_b64(self.key_hash + self.signature)}\n"


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint and the full signed note that carries it.

    Built by ``sign`` and ``open_note``; constructing one checks that the note's body is the
    checkpoint's, but not the signatures (``open_note`` does that).
    """

    checkpoint: Checkpoint
    note: str
    signatures: tuple[NoteSignature, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        body, signatures = _split_note(self.note)
        if body != self.checkpoint.body():
            raise ValueError("the note's body is not this checkpoint")
        object.__setattr__(self, "signatures", signatures)


def _split_note(note: str) -> tuple[bytes, tuple[NoteSignature, ...]]:
    """Body and signature lines of a signed note (C2SP signed-note, as Go's note.Open)."""
    if not isinstance(note, str):
        raise CheckpointError(f"a note is text, not {type(note).__name__}")
    try:
        note.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError("malformed note: not valid Unicode") from None
    if any(c < " " and c != "\n" for c in note):
        raise CheckpointError("malformed note: it contains control characters")
    split = note.rfind("\n\n")
    if split < 0:
        raise CheckpointError("malformed note: no blank line before the signatures")
    body, block = note[: split + 1], note[split + 2 :]
    if not block or not block.endswith("\n"):
        raise CheckpointError("malformed note: the signature block must end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"malformed note: more than {MAX_SIGNATURES} signatures")
    signatures = []
    for number, line in enumerate(lines, start=1):
        rest = line.removeprefix(SIGNATURE_PREFIX)
        fields = rest.split(" ")
        if rest == line or len(fields) != 2:
            raise CheckpointError(
                f"malformed note: signature line {number} is not '\u2014 <key name> <base64>'"
            )
        name, blob_b64 = fields
        try:
            _check_key_name(name)
        except ValueError as exc:
            raise CheckpointError(f"malformed note: signature line {number}: {exc}") from None
        blob = _unb64(blob_b64, f"signature line {number}:")
        if len(blob) < 5:
            raise CheckpointError(f"malformed note: signature line {number} is too short")
        signatures.append(NoteSignature(name, blob[:4], blob[4:]))
    return body.encode("utf-8"), tuple(signatures)


def sign_note(text: str, key: SigningKey, *cosigners: SigningKey) -> str:
    """A signed note of ``text`` (which must end in a newline) by ``key`` and any cosigners."""
    if not text.endswith("\n") or "\n\n" in text or any(c < " " and c != "\n" for c in text):
        raise ValueError("note text must end with a newline, without blank lines or controls")
    keys = (key, *cosigners)
    ids = [k.key_id for k in keys]
    if len(set(ids)) != len(ids):
        raise ValueError(f"the same key signs twice: {ids}")
    body = text.encode("utf-8")
    return (
        text
        + "\n"
        + "".join(NoteSignature(k.name, k.key_hash, k.sign_bytes(body)).line() for k in keys)
    )


def sign(checkpoint: Checkpoint, key: SigningKey, *cosigners: SigningKey) -> SignedCheckpoint:
    """Sign ``checkpoint`` with ``key`` (and any cosigners, in order) as a signed note."""
    note = sign_note(checkpoint.body().decode("utf-8"), key, *cosigners)
    return SignedCheckpoint(checkpoint, note)


def verify_note(note_text: str, keys: Sequence[VerifierKey]) -> bytes:
    """Verify any C2SP signed note against ``keys``; return its body (the signed text).

    Signatures by keys not in ``keys`` (by name and key hash) are ignored; at least one must
    be by a known key. A known key's signature that does not verify rejects the whole note
    (as Go's note.Open does): the note was altered. Raises CheckpointError saying which.
    """
    body, signatures = _split_note(note_text)
    known: dict[tuple[str, bytes], VerifierKey] = {}
    ambiguous: set[tuple[str, bytes]] = set()
    for key in keys:
        ident = (key.name, key.key_hash)
        if ident in known and known[ident].public_key != key.public_key:
            ambiguous.add(ident)
        known.setdefault(ident, key)
    verified: list[str] = []
    unknown: list[str] = []
    for signature in signatures:
        ident = (signature.key_name, signature.key_hash)
        if ident in ambiguous:
            raise CheckpointError(
                f"ambiguous key {signature.key_id}: two different public keys have this id"
            )
        signer = known.get(ident)
        if signer is None:
            unknown.append(signature.key_id)
            continue
        if not signer.verify(body, signature.signature):
            raise CheckpointError(
                f"bad signature by key {signature.key_id}: the note was altered after it "
                "was signed, or the signature was"
            )
        verified.append(signer.key_id)
    if not verified:
        known_ids = ", ".join(sorted({k.key_id for k in keys})) or "none"
        raise CheckpointError(
            f"note has no signature by a known key: signed by unknown key "
            f"{', '.join(unknown)}; known keys: {known_ids}"
        )
    return body


def open_note(
    note_text: str, keys: Sequence[VerifierKey], *, origin: str | None = None
) -> SignedCheckpoint:
    """Verify a signed checkpoint note against ``keys`` (see ``verify_note``) and read it.

    ``origin``, when given, must be the checkpoint's origin. Raises CheckpointError saying
    which check failed: the note's form, its signatures, the checkpoint text or the origin.
    """
    checkpoint = Checkpoint.parse_body(verify_note(note_text, keys))
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(f"checkpoint is of log {checkpoint.origin!r}, not {origin!r}")
    return SignedCheckpoint(checkpoint, note_text)


# -- files -------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_atomic(path: Path, data: bytes, *, mode: int = _FILE_MODE, replace: bool = True) -> None:
    """Write ``path`` as a whole or not at all: temp file, fsync, rename, directory fsync.

    With ``replace=False`` an existing file is never replaced (FileExistsError), atomically
    via link(2). ``mode`` 0600 is set exactly; other modes are left to the umask.
    """
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            if mode == _SECRET_MODE:
                os.fchmod(fd, mode)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)
            except OSError as exc:
                if isinstance(exc, FileExistsError) or path.exists():
                    raise FileExistsError(f"{path} exists") from None
                os.rename(temp, path)  # no hard links on this file system: best effort
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _check_private(path: Path, kind: str) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        fix = "chmod 700" if kind == "directory" else "chmod 600"
        raise CheckpointError(
            f"signing key {kind} {path} is accessible to other users (mode {mode:03o}); {fix} it"
        )


class KeyRing:
    """The signing keys of one log in one directory: ``<8 hex>.key`` files and ``active``.

    Keep the directory apart from the database (the service's default is
    ``<data_dir>/secrets/signing/``): whoever can read it can sign checkpoints. Keys are
    never deleted or replaced; rotation adds one and makes it active.
    """

    def __init__(self, directory: Path, keys: Sequence[SigningKey], active: SigningKey) -> None:
        self._directory = directory
        self._keys = list(keys)  # oldest first
        self._active = active
        self._lock = threading.Lock()

    @classmethod
    def open(cls, directory: Path, name: str | None = None) -> KeyRing:
        """Open the key directory, creating it (0700) and a first key if it has none.

        ``name`` is the log's origin; None takes the existing keys' name, or for a new
        directory a random ``offerdesk.local/log/<16 hex>``. Raises CheckpointError if the
        directory or a key file is readable by other users, a key file is damaged, or the
        keys are of another log.
        """
        directory = Path(directory)
        if name is not None:
            _check_key_name(name)
            _check_origin(name)
        try:
            if not directory.exists():
                directory.mkdir(parents=True, mode=_SECRET_DIR_MODE)
                os.chmod(directory, _SECRET_DIR_MODE)  # mkdir's mode is subject to the umask
            if not directory.is_dir():
                raise CheckpointError(f"signing key directory {directory} is not a directory")
            _check_private(directory, "directory")
            keys = _load_keys(directory)
            if not keys:
                first = SigningKey.generate(name or f"offerdesk.local/log/{secrets.token_hex(8)}")
                _save_key(directory, first, [])
                _save_active(directory, first)
                return cls(directory, [first], first)
            active = _load_active(directory, keys)
        except OSError as exc:
            raise CheckpointError(f"cannot use signing key directory {directory}: {exc}") from exc
        if name is not None and active.name != name:
            raise CheckpointError(
                f"signing key directory {directory} holds keys of log {active.name!r}, not "
                f"{name!r}: wrong directory, or the configured origin changed"
            )
        return cls(directory, keys, active)

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def name(self) -> str:
        return self._active.name

    def active(self) -> SigningKey:
        """The key new checkpoints are signed with."""
        return self._active

    def rotate(self) -> SigningKey:
        """Create a new key (same name), make it active and keep the old ones for verifying."""
        with self._lock:
            taken = {k.key_hash for k in self._keys}
            key = SigningKey.generate(self._active.name)
            while key.key_hash in taken:  # a 32-bit hash can collide; never reuse a file name
                key = SigningKey.generate(self._active.name)
            try:
                _save_key(self._directory, key, self._keys)
                _save_active(self._directory, key)
            except OSError as exc:
                raise CheckpointError(f"cannot write a new signing key: {exc}") from exc
            self._keys.append(key)
            self._active = key
            return key

    def verifier_keys(self) -> list[VerifierKey]:
        """The public keys of every key ever used here, oldest first."""
        with self._lock:
            return [key.public() for key in self._keys]


def _load_keys(directory: Path) -> list[SigningKey]:
    found: list[tuple[int, str, SigningKey]] = []
    names = set()
    for path in directory.iterdir():
        if path.suffix != _KEY_SUFFIX or path.name.startswith("."):
            continue
        _check_private(path, "file")
        try:
            key = SigningKey.parse(path.read_text(encoding="ascii"))
        except (CheckpointError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"signing key file {path} is damaged: {exc}") from None
        if path.name != key.key_hash.hex() + _KEY_SUFFIX:
            raise CheckpointError(
                f"signing key file {path} holds key {key.key_id}: the file was renamed"
            )
        names.add(key.name)
        found.append((path.stat().st_mtime_ns, key.key_hash.hex(), key))
    if len(names) > 1:
        raise CheckpointError(
            f"signing key directory {directory} mixes keys of several logs: {sorted(names)}"
        )
    return [key for _, _, key in sorted(found, key=lambda item: (item[0], item[1]))]


def _load_active(directory: Path, keys: list[SigningKey]) -> SigningKey:
    path = directory / _ACTIVE
    if not path.exists():
        if len(keys) == 1:  # the first key was written but `active` was not (a crash)
            _save_active(directory, keys[0])
            return keys[0]
        raise CheckpointError(
            f"{path} is missing and the directory holds {len(keys)} keys: write the 8-hex "
            "key hash of the key to sign with into it"
        )
    wanted = path.read_text(encoding="ascii", errors="replace").strip()
    for key in keys:
        if key.key_hash.hex() == wanted:
            return key
    raise CheckpointError(f"{path} names key {wanted!r}, which is not in {directory}")


def _save_key(directory: Path, key: SigningKey, existing: Sequence[SigningKey]) -> None:
    path = directory / f"{key.key_hash.hex()}{_KEY_SUFFIX}"
    _write_atomic(path, (key.to_text() + "\n").encode("ascii"), mode=_SECRET_MODE, replace=False)
    # Order is creation order by mtime; file systems with coarse clocks can give two keys
    # made in the same tick the same time, so the new one is set strictly after the rest.
    newest = max((_mtime(directory, k) for k in existing), default=None)
    if newest is not None and path.stat().st_mtime_ns <= newest:
        os.utime(path, ns=(newest + 1, newest + 1))


def _mtime(directory: Path, key: SigningKey) -> int:
    return (directory / f"{key.key_hash.hex()}{_KEY_SUFFIX}").stat().st_mtime_ns


def _save_active(directory: Path, key: SigningKey) -> None:
    _write_atomic(directory / _ACTIVE, f"{key.key_hash.hex()}\n".encode("ascii"))


def _note_line(signed: SignedCheckpoint) -> bytes:
    """One checkpoint file line: canonical JSON ``{"note": ...}`` and a newline."""
    return canonical_json({"note": signed.note}) + b"\n"


class CheckpointLog:
    """The append-only checkpoint file: JSON Lines, one ``{"note": ...}`` per checkpoint.

    Kept outside the database, next to it by default. A line is written whole with one
    O_APPEND write and fsynced before ``append`` returns, so a checkpoint handed to a
    publication point is always in this file first.
    """

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._last: Checkpoint | None = None
        self._tail_checked = False

    @property
    def path(self) -> Path:
        return self._path

    def append(self, signed: SignedCheckpoint) -> None:
        """Append one checkpoint durably. Refuses one that ``read`` would reject after the
        file's last line (another origin, a smaller size, another root at the same size),
        and refuses to append after a torn last line (see ``truncate_torn_tail``)."""
        with self._lock:
            if not self._tail_checked:
                self._last = self._read_tail()
                self._tail_checked = True
            if self._last is not None:
                _check_sequence(self._last, signed.checkpoint, f"appending to {self._path}")
            line = _note_line(signed)
            try:
                created = not self._path.exists()
                fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _FILE_MODE)
                try:
                    _write_all(fd, line)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if created:
                    _fsync_dir(self._path.parent)
            except OSError as exc:
                raise CheckpointError(
                    f"cannot append to checkpoint file {self._path}: {exc}"
                ) from exc
            self._last = signed.checkpoint

    def _read_tail(self) -> Checkpoint | None:
        """The last line's checkpoint, unverified (``read`` verifies; this only guards)."""
        try:
            with self._path.open("rb") as f:
                end = f.seek(0, os.SEEK_END)
                if end == 0:
                    return None
                chunk = b""
                while True:
                    start = max(0, end - len(chunk) - _TAIL_CHUNK)
                    f.seek(start)
                    chunk = f.read(end - start)
                    if not chunk.endswith(b"\n"):
                        raise CheckpointError(
                            f"checkpoint file {self._path} ends in a torn line (no newline: "
                            "a write cut off by a crash); CheckpointLog.truncate_torn_tail() "
                            "removes it"
                        )
                    cut = chunk.rfind(b"\n", 0, len(chunk) - 1)
                    if cut >= 0 or start == 0:
                        last = chunk[cut + 1 :]
                        break
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint file {self._path}: {exc}") from exc
        note = _parse_line(last, self._path, None)
        body, _ = _split_note(note)
        return Checkpoint.parse_body(body)

    @classmethod
    def read(
        cls,
        path: Path,
        keys: Sequence[VerifierKey],
        *,
        origin: str | None = None,
        allow_torn_tail: bool = False,
    ) -> list[SignedCheckpoint]:
        """Every checkpoint in the file, each verified, in order; [] if there is no file.

        Checks that all are of one origin (``origin`` if given), sizes never decrease, and
        equal sizes have equal roots and chain heads. Raises CheckpointError naming the line.
        A last line without its newline (a write cut off by a crash) is an error too, unless
        ``allow_torn_tail``: then it is left out. Times are not checked: clocks step back.
        """
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint file {path}: {exc}") from exc
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        if torn and not allow_torn_tail:
            raise CheckpointError(
                f"{path} line {len(lines) + 1}: torn line (no newline at the end: a write "
                "cut off by a crash); CheckpointLog.truncate_torn_tail() removes it"
            )
        out: list[SignedCheckpoint] = []
        for number, raw in enumerate(lines, start=1):
            note = _parse_line(raw + b"\n", path, number)
            try:
                signed = open_note(note, keys, origin=origin)
            except CheckpointError as exc:
                raise CheckpointError(f"{path} line {number}: {exc}") from None
            if out:
                _check_sequence(out[-1].checkpoint, signed.checkpoint, f"{path} line {number}")
            out.append(signed)
        return out

    @staticmethod
    def truncate_torn_tail(path: Path) -> int:
        """Cut off a last line that has no newline; return how many bytes were removed.

        Such a line is a write cut off by a crash: ``append`` had not returned, so the
        checkpoint was never published and removing it loses nothing that was promised.
        Complete lines are never touched.
        """
        path = Path(path)
        try:
            with path.open("r+b") as f:
                end = f.seek(0, os.SEEK_END)
                keep = end
                while keep > 0:
                    step = min(_TAIL_CHUNK, keep)
                    f.seek(keep - step)
                    chunk = f.read(step)
                    cut = chunk.rfind(b"\n")
                    if cut >= 0:
                        keep = keep - step + cut + 1
                        break
                    keep -= step
                if keep == end:
                    return 0
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise CheckpointError(f"cannot repair checkpoint file {path}: {exc}") from exc
        return end - keep


def _parse_line(raw: bytes, path: Path, number: int | None) -> str:
    where = f"{path} line {number}" if number is not None else f"{path} last line"
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{where}: not a JSON line") from None
    if not isinstance(obj, dict) or obj.keys() != {"note"} or not isinstance(obj["note"], str):
        raise CheckpointError(f'{where}: expected {{"note": "<signed note>"}}')
    try:
        canonical = canonical_json(obj) + b"\n"
    except ValueError:
        canonical = b""
    if canonical != raw:
        raise CheckpointError(f"{where}: not canonical JSON (edited by hand?)")
    return str(obj["note"])


def _check_sequence(previous: Checkpoint, current: Checkpoint, where: str) -> None:
    if current.origin != previous.origin:
        raise CheckpointError(
            f"{where}: checkpoint of log {current.origin!r} after one of {previous.origin!r}"
        )
    if current.size < previous.size:
        raise CheckpointError(
            f"{where}: size {current.size} after size {previous.size}: the log went back "
            "(records cut off and re-signed?)"
        )
    if current.size == previous.size and (
        current.root != previous.root or current.chain_head != previous.chain_head
    ):
        raise CheckpointError(
            f"{where}: a different root for the same size {current.size}: two histories "
            "were signed (the log was rewritten?)"
        )


# -- publication points ------------------------------------------------------------------


@runtime_checkable
class Publisher(Protocol):
    """A copy of every checkpoint off this host, so the key holder cannot quietly re-sign
    history. ``publish`` raises PublishError when the copy was not made."""

    @property
    def name(self) -> str: ...

    def publish(self, signed: SignedCheckpoint) -> None: ...


def _published_size(note: str) -> int | None:
    try:
        body, _ = _split_note(note)
        return Checkpoint.parse_body(body).size
    except CheckpointError:
        return None


class DirectoryPublisher:
    """Writes ``<size>.checkpoint`` (the note) and replaces ``latest``, in one directory.

    Meant for a directory that is somewhere else: a mounted share, a WORM bucket mount, a
    synced folder. A published note for a size is never replaced by a different one.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.name = f"directory:{self.path}"

    def publish(self, signed: SignedCheckpoint) -> None:
        size = signed.checkpoint.size
        data = signed.note.encode("utf-8")
        target = self.path / f"{size}.checkpoint"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            try:
                _write_atomic(target, data, replace=False)
            except FileExistsError:
                if target.read_bytes() != data:
                    raise PublishError(
                        f"{target} already holds a different checkpoint for size {size}; "
                        "refusing to replace it (was the log re-signed or rewritten?)"
                    ) from None
            latest = self.path / "latest"
            current = (
                _published_size(latest.read_text(encoding="utf-8", errors="replace"))
                if latest.exists()
                else None
            )
            if current is None or current <= size:  # `latest` never moves back
                _write_atomic(latest, data)
        except OSError as exc:
            raise PublishError(f"cannot publish checkpoint {size} to {self.path}: {exc}") from exc


def _redact_url(url: str) -> str:
    """The URL without user:password, for names and messages."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


_GIT_ENV_DROP = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY")


class GitPublisher:
    """Commits each checkpoint to a git work tree and pushes it to ``remote`` if set.

    The tree holds ``checkpoint`` (the latest note) and ``checkpoints.jsonl`` (every note
    published, as in the checkpoint file). A remote that refuses a push that is not a
    fast-forward keeps a rewritten history from replacing the published one. Creates the
    repository if missing. Uses the ``git`` binary, never prompting for credentials.
    """

    def __init__(
        self,
        repo: Path,
        remote: str | None = None,
        *,
        branch: str = "main",
        timeout_seconds: float = 60.0,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._/-]+", branch) or branch.startswith("-"):
            raise ValueError(f"branch {branch!r} is not a plain branch name")
        if remote is not None and (not remote or remote.startswith("-")):
            raise ValueError(f"remote {remote!r} is not a remote name or URL")
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self.repo = Path(repo)
        self.remote = remote
        self.branch = branch
        self.timeout_seconds = timeout_seconds
        self.name = f"git:{_redact_url(remote) if remote else self.repo}"

    def publish(self, signed: SignedCheckpoint) -> None:
        checkpoint = signed.checkpoint
        try:
            self._ensure_repo()
            latest = self.repo / "checkpoint"
            if latest.exists():
                current = latest.read_text(encoding="utf-8", errors="replace")
                size = _published_size(current)
                if size is not None and size > checkpoint.size:
                    raise PublishError(
                        f"{latest} is at size {size}; refusing to move it back to {checkpoint.size}"
                    )
                if size == checkpoint.size and current != signed.note:
                    raise PublishError(
                        f"{latest} holds a different checkpoint for size {size}; refusing to "
                        "replace it (was the log re-signed or rewritten?)"
                    )
            _write_atomic(latest, signed.note.encode("utf-8"))
            self._append_line(_note_line(signed))
        except OSError as exc:
            raise PublishError(f"cannot write checkpoint to {self.repo}: {exc}") from exc
        self._git("add", "--", "checkpoint", "checkpoints.jsonl")
        # A retry after a failed push finds the commit already made: nothing to commit.
        if self._git("diff", "--cached", "--quiet", check=False).returncode != 0:
            self._git("commit", "-q", "-m", f"checkpoint {checkpoint.origin} {checkpoint.size}")
        if self.remote is not None:
            self._git("push", "-q", self.remote, f"HEAD:refs/heads/{self.branch}")

    def _ensure_repo(self) -> None:
        # Checked at the top of the tree: never commit into a repository that merely
        # contains this directory.
        if not (self.repo / ".git").exists():
            self.repo.mkdir(parents=True, exist_ok=True)
            self._git("init", "-q", f"--initial-branch={self.branch}")

    def _append_line(self, line: bytes) -> None:
        path = self.repo / "checkpoints.jsonl"
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                raise PublishError(f"{path} ends in a torn line; restore it with git checkout")
            if data.endswith(line) and (len(data) == len(line) or data[-len(line) - 1] == 10):
                return  # already appended by an earlier attempt
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _FILE_MODE)
        try:
            _write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in _GIT_ENV_DROP}
        env["GIT_TERMINAL_PROMPT"] = "0"
        env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        command = [
            "git",
            "-C",
            str(self.repo),
            "-c",
            "user.name=offerdesk",
            "-c",
            "user.email=offerdesk@localhost",
            "-c",
            "commit.gpgsign=false",
            *args,
        ]
        try:
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=self.timeout_seconds,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise PublishError(
                f"git {args[0]} in {self.repo} took more than {self.timeout_seconds:g} s"
            ) from None
        except OSError as exc:
            raise PublishError(f"cannot run git: {exc}") from exc
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()[-500:]
            raise PublishError(
                f"git {args[0]} failed in {self.repo} (exit {result.returncode}): "
                f"{_redact_url_text(detail)}"
            )
        return result


def _redact_url_text(text: str) -> str:
    return re.sub(r"(\w+://)[^/@\s]+@", r"\1", text)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirected POST would be re-sent as a GET without the note; treat it as an error.
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class WebhookPublisher:
    """POSTs each note (``text/plain; charset=utf-8``) to a URL.

    With a secret, ``X-Offerdesk-Signature: sha256=<hex HMAC-SHA256(secret, body)>`` lets the
    receiver check the sender. Any answer but 2xx (redirects included) is a PublishError.
    """

    def __init__(self, url: str, secret: bytes | None = None, timeout_seconds: float = 5.0) -> None:
        scheme = urllib.parse.urlsplit(url).scheme if isinstance(url, str) else ""
        if scheme not in ("http", "https"):
            raise ValueError(f"webhook URL {_redact_url(str(url))!r} must be http or https")
        if secret is not None and (not isinstance(secret, bytes) or not secret):
            raise ValueError("webhook secret must be non-empty bytes, or None")
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self.url = url
        self._secret = secret
        self.timeout_seconds = timeout_seconds
        self.name = f"webhook:{_redact_url(url)}"
        self._opener = urllib.request.build_opener(_NoRedirect)

    def publish(self, signed: SignedCheckpoint) -> None:
        body = signed.note.encode("utf-8")
        headers = {"Content-Type": "text/plain; charset=utf-8", "User-Agent": "offerdesk-audit"}
        if self._secret is not None:
            digest = hmac.new(self._secret, body, hashlib.sha256).hexdigest()
            headers["X-Offerdesk-Signature"] = f"sha256={digest}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_seconds) as response:
                status = response.status
                response.read(_TAIL_CHUNK)
        except urllib.error.HTTPError as exc:
            raise PublishError(f"{self.name} answered HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise PublishError(f"cannot POST to {self.name}: {exc.reason}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise PublishError(f"cannot POST to {self.name}: {exc}") from None
        if not 200 <= status < 300:
            raise PublishError(f"{self.name} answered HTTP {status}")
