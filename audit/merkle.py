"""RFC 9162 (RFC 6962 §2.1) Merkle tree hashes over the audit log.

The leaves are the records' chain hashes, in seq order: leaf ``i`` is
``SHA-256(0x00 || hash[i])`` and an interior node is ``SHA-256(0x01 || left || right)``.
Hashing the 32-byte chain hash instead of the record bytes costs one short hash per record
(the record itself is hashed once, for the chain) and binds each leaf to the whole prefix.
The tree of no leaves has root ``SHA-256("")``.

Pure functions (roots, RFC 9162 inclusion and consistency proofs and their verifiers) and
one small incremental structure. Nothing here does I/O, and a verifier must never accept a
proof it has not recomputed to the exact root: every failure raises ProofError.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``: the hash of one leaf (``data`` is a record's chain hash)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an interior node."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


class Frontier:
    """The root of a growing tree in O(log n) memory: the hashes of its perfect subtrees.

    ``append`` is amortised O(1) hashing; ``root`` is O(log n). The subtrees are kept left to
    right with strictly decreasing sizes, one per set bit of ``size``.
    """

    __slots__ = ("_nodes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._nodes: list[bytes] = []  # roots of the perfect subtrees, largest first

    @property
    def size(self) -> int:
        return self._size

    def append(self, data: bytes) -> None:
        """Add one leaf whose data is ``data`` (a record's chain hash)."""
        node = leaf_hash(data)
        size = self._size
        # Each trailing 1 bit of the old size is a perfect subtree of the new leaf's size.
        while size & 1:
            node = node_hash(self._nodes.pop(), node)
            size >>= 1
        self._nodes.append(node)
        self._size += 1

    def root(self) -> bytes:
        """MTH of the leaves so far (RFC 6962 §2.1): fold the subtrees right to left."""
        if not self._nodes:
            return EMPTY_ROOT
        node = self._nodes[-1]
        for left in reversed(self._nodes[:-1]):
            node = node_hash(left, node)
        return node

    def copy(self) -> Frontier:
        other = Frontier()
        other._size = self._size
        other._nodes = list(self._nodes)
        return other


class ProofError(ValueError):
    """A Merkle proof did not verify; the message says which check failed."""


def root_of(data: Sequence[bytes]) -> bytes:
    """MTH (RFC 9162 §2.1.1) of the tree whose leaves have data ``data``, in order."""
    return _range_root(data, 0, len(data))


def inclusion_proof(index: int, size: int, data: Sequence[bytes]) -> list[bytes]:
    """The audit path (RFC 9162 §2.1.3.1) of leaf ``index`` in the tree of ``data[:size]``.

    Nodes are ordered from the leaf's sibling up to the child of the root. Each node is the
    root of a subtree that the others do not overlap, so building the proof hashes every
    leaf about once: O(size) hashing, O(size) transient memory for the largest subtree.
    """
    _check_size(size, len(data))
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
        raise ValueError(f"index {index!r} is not a leaf of a tree of size {size}")
    # Walk down from the root, noting the sibling subtree at each split (RFC 9162 PATH).
    siblings: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        split = start + _split(end - start)
        if index < split:
            siblings.append((split, end))
            end = split
        else:
            siblings.append((start, split))
            start = split
    return [_range_root(data, low, high) for low, high in reversed(siblings)]


def consistency_proof(old_size: int, new_size: int, data: Sequence[bytes]) -> list[bytes]:
    """The RFC 9162 §2.1.4.1 proof that the tree of ``data[:new_size]`` extends ``data[:old_size]``.

    Empty when ``old_size`` is 0 or equal to ``new_size`` (nothing to prove). O(new_size)
    hashing, as for inclusion proofs.
    """
    _check_size(new_size, len(data))
    if isinstance(old_size, bool) or not isinstance(old_size, int) or old_size < 0:
        raise ValueError(f"old_size {old_size!r} is not a non-negative integer")
    if old_size > new_size:
        raise ValueError(f"old_size {old_size} is larger than new_size {new_size}")
    if old_size in (0, new_size):
        return []
    # RFC 9162 SUBPROOF(m, D[start:end], b), unrolled: each step keeps the side that holds
    # the old tree's right edge and records the other side's root.
    nodes: list[tuple[int, int]] = []
    start, end, m, whole = 0, new_size, old_size, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            nodes.append((start + k, end))
            end = start + k
        else:
            nodes.append((start, start + k))
            start, m, whole = start + k, m - k, False
    if not whole:
        nodes.append((start, end))  # the old tree's last subtree, unless it is the old root
    return [_range_root(data, low, high) for low, high in reversed(nodes)]


def verify_inclusion(
    index: int, size: int, leaf_data: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ProofError unless ``proof`` shows leaf ``index`` with ``leaf_data`` in the tree.

    RFC 9162 §2.1.3.2, plus a check up front that the proof has exactly the length a proof
    for (index, size) must have, so a wrong-length proof fails with that message.
    """
    _check_count("size", size)
    _check_count("index", index)
    if index >= size:
        raise ProofError(f"index {index} is not a leaf of a tree of size {size}")
    _check_node("root", root)
    if not isinstance(leaf_data, bytes | bytearray):
        raise ProofError(f"leaf data must be bytes, not {type(leaf_data).__name__}")
    _check_nodes(proof)
    expected = _inclusion_length(index, size)
    if len(proof) != expected:
        raise ProofError(
            f"inclusion proof has {len(proof)} nodes; a proof for leaf {index} in a tree of "
            f"size {size} has {expected}"
        )
    fn, sn = index, size - 1
    r = leaf_hash(bytes(leaf_data))
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the path to the root")
    if r != root:
        raise ProofError(
            f"inclusion proof for leaf {index} in a tree of size {size} leads to root "
            f"{r.hex()}, not {bytes(root).hex()}: the leaf, index, size or proof is wrong"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise ProofError unless ``proof`` shows (new_size, new_root) extends (old_size, old_root).

    RFC 9162 §2.1.4.2 for 0 < old_size < new_size. Equal sizes need an empty proof and equal
    roots; old_size 0 needs an empty proof and old_root = SHA-256("") (any tree extends the
    empty tree). Proof length is checked up front as for inclusion proofs.
    """
    _check_count("old_size", old_size)
    _check_count("new_size", new_size)
    _check_node("old root", old_root)
    _check_node("new root", new_root)
    _check_nodes(proof)
    if old_size > new_size:
        raise ProofError(
            f"old size {old_size} is larger than new size {new_size}: a log never shrinks"
        )
    if old_size == new_size or old_size == 0:
        if proof:
            raise ProofError(
                f"consistency proof from size {old_size} to {new_size} must be empty, "
                f"got {len(proof)} nodes"
            )
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError("old root of an empty tree must be SHA-256 of nothing")
        if old_size == new_size and old_root != new_root:
            raise ProofError(f"two different roots for the same size {old_size}")
        return
    expected = _consistency_length(old_size, new_size)
    if len(proof) != expected:
        raise ProofError(
            f"consistency proof has {len(proof)} nodes; a proof from size {old_size} to "
            f"{new_size} has {expected}"
        )
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, bytes(old_root))  # the old tree is a complete subtree of the new one
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the path to the new root")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the path to the new root")
    if fr != old_root:
        raise ProofError(
            f"consistency proof from size {old_size} to {new_size} does not lead to the old "
            "root: the old tree is not a prefix of the new one, or the proof is wrong"
        )
    if sr != new_root:
        raise ProofError(
            f"consistency proof from size {old_size} to {new_size} does not lead to the new "
            "root: the new tree does not extend the old one, or the proof is wrong"
        )


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2): RFC 9162's k."""
    return 1 << ((n - 1).bit_length() - 1)


def _range_root(data: Sequence[bytes], start: int, end: int) -> bytes:
    """MTH of the leaves ``data[start:end]``, level by level.

    Pairing neighbours on each level and carrying an odd last node up unchanged builds the
    same tree as RFC 9162's left-heavy recursive split, without recursion or slicing per
    node: one list comprehension per level, which is what makes a million leaves take
    about a second.
    """
    if start == end:
        return EMPTY_ROOT
    sha256 = hashlib.sha256
    level = [sha256(LEAF_PREFIX + d).digest() for d in data[start:end]]
    while len(level) > 1:
        pairs = iter(level)
        odd = level[-1] if len(level) & 1 else None
        level = [
            sha256(NODE_PREFIX + left + right).digest()
            for left, right in zip(pairs, pairs, strict=False)
        ]
        if odd is not None:
            level.append(odd)
    return level[0]


def _inclusion_length(index: int, size: int) -> int:
    length, start, end = 0, 0, size
    while end - start > 1:
        split = start + _split(end - start)
        start, end = (start, split) if index < split else (split, end)
        length += 1
    return length


def _consistency_length(old_size: int, new_size: int) -> int:
    length, size, m, whole = 0, new_size, old_size, True
    while m != size:
        k = _split(size)
        if m <= k:
            size = k
        else:
            size, m, whole = size - k, m - k, False
        length += 1
    return length + (0 if whole else 1)


def _check_size(size: int, available: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= available:
        raise ValueError(f"size {size!r} is not between 0 and the {available} leaves given")


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProofError(f"{name} {value!r} is not a non-negative integer")


def _check_node(name: str, node: bytes) -> None:
    if not isinstance(node, bytes | bytearray) or len(node) != 32:
        size = len(node) if isinstance(node, bytes | bytearray) else type(node).__name__
        raise ProofError(f"{name} must be a 32-byte hash, got {size!r}")


def _check_nodes(proof: Sequence[bytes]) -> None:
    if isinstance(proof, bytes | bytearray | str):
        raise ProofError("proof must be a sequence of 32-byte hashes, not one string")
    for position, node in enumerate(proof):
        _check_node(f"proof node {position}", node)
