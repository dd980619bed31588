"""Self-contained proofs an outside party can check with only our public keys.

An inclusion proof says "this decision record is record n of the log that this signed
checkpoint sealed"; a consistency proof says "the later checkpoint's log extends the earlier
one's". Each is one JSON document carrying the signed notes it rests on, so checking it needs
no service, no database and no secret. Building a proof needs the chain hashes (the leaves);
checking one must never trust anything in the document that the signatures do not cover.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from audit.checkpoint import SignedCheckpoint, VerifierKey, open_note
from audit.merkle import (
    ProofError,
    consistency_proof,
    inclusion_proof,
    verify_consistency,
    verify_inclusion,
)
from audit.records import StoredRecord, chain_hash, parse_envelope

INCLUSION_FORMAT = "offerdesk-inclusion-proof/1"
CONSISTENCY_FORMAT = "offerdesk-consistency-proof/1"


def inclusion_document(
    record: StoredRecord, hashes: Sequence[bytes], sealed: SignedCheckpoint
) -> dict[str, Any]:
    """The proof that ``record`` is in the log ``sealed`` signed (``hashes`` = its leaves)."""
    size = sealed.checkpoint.size
    if record.seq >= size:
        raise ValueError(f"record {record.seq} is after checkpoint size {size}: not sealed yet")
    return {
        "format": INCLUSION_FORMAT,
        "seq": record.seq,
        "record": record.record.decode("utf-8"),
        "prev_hash": record.prev_hash.hex(),
        "tree_size": size,
        "path": [node.hex() for node in inclusion_proof(record.seq, size, hashes)],
        "checkpoint": sealed.note,
    }


def consistency_document(
    old: SignedCheckpoint, new: SignedCheckpoint, hashes: Sequence[bytes]
) -> dict[str, Any]:
    """The proof that ``new`` extends ``old`` (``hashes`` = at least new's leaves)."""
    path = consistency_proof(old.checkpoint.size, new.checkpoint.size, hashes)
    return {
        "format": CONSISTENCY_FORMAT,
        "old_checkpoint": old.note,
        "new_checkpoint": new.note,
        "path": [node.hex() for node in path],
    }


@dataclass(frozen=True, slots=True)
class CheckedInclusion:
    seq: int
    tree_size: int
    origin: str
    record: dict[str, Any]  # the record's parsed envelope (kind, at, subject, ref, body)


@dataclass(frozen=True, slots=True)
class CheckedConsistency:
    origin: str
    old_size: int
    new_size: int


def check_document(
    document: dict[str, Any], keys: Sequence[VerifierKey]
) -> CheckedInclusion | CheckedConsistency:
    """Check a proof document; raise ProofError (or CheckpointError) saying what failed."""
    kind = document.get("format") if isinstance(document, dict) else None
    if kind == INCLUSION_FORMAT:
        return _check_inclusion(document, keys)
    if kind == CONSISTENCY_FORMAT:
        return _check_consistency(document, keys)
    raise ProofError(f"not a proof document: format is {kind!r}")


def _check_inclusion(document: dict[str, Any], keys: Sequence[VerifierKey]) -> CheckedInclusion:
    sealed = open_note(_text(document, "checkpoint"), keys)
    checkpoint = sealed.checkpoint
    seq, size = _int(document, "seq"), _int(document, "tree_size")
    if size != checkpoint.size:
        raise ProofError(f"tree_size {size} is not the signed checkpoint's size {checkpoint.size}")
    data = _text(document, "record").encode("utf-8")
    envelope = dict(parse_envelope(data))
    if envelope.get("seq") != seq:
        raise ProofError(f"the record says seq {envelope.get('seq')!r}, the proof says {seq}")
    leaf = chain_hash(_hex(document, "prev_hash"), data)
    path = [_node(item) for item in _list(document, "path")]
    verify_inclusion(seq, size, leaf, path, checkpoint.root)
    return CheckedInclusion(seq, size, checkpoint.origin, envelope)


def _check_consistency(document: dict[str, Any], keys: Sequence[VerifierKey]) -> CheckedConsistency:
    old = open_note(_text(document, "old_checkpoint"), keys).checkpoint
    new = open_note(_text(document, "new_checkpoint"), keys).checkpoint
    if old.origin != new.origin:
        raise ProofError(f"checkpoints of two logs: {old.origin!r} and {new.origin!r}")
    path = [_node(item) for item in _list(document, "path")]
    verify_consistency(old.size, new.size, old.root, new.root, path)
    return CheckedConsistency(new.origin, old.size, new.size)


def _text(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str):
        raise ProofError(f"{name} must be a string")
    return value


def _int(document: dict[str, Any], name: str) -> int:
    value = document.get(name)
    if type(value) is not int or value < 0:
        raise ProofError(f"{name} must be a non-negative integer")
    return value


def _list(document: dict[str, Any], name: str) -> list[Any]:
    value = document.get(name)
    if not isinstance(value, list):
        raise ProofError(f"{name} must be a list")
    return value


def _hex(document: dict[str, Any], name: str) -> bytes:
    return _node(document.get(name), name)


def _node(value: Any, name: str = "path") -> bytes:
    try:
        node = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        node = b""
    if len(node) != 32:
        raise ProofError(f"{name}: {value!r} is not a 32-byte hex hash")
    return node


def dumps(document: dict[str, Any]) -> str:
    """Pretty JSON for people and files (proofs are checked field by field, not by bytes)."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
