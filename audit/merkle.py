"""RFC 9162 (RFC 6962 §2.1) Merkle tree hashes over the audit log.

The leaves are the records' chain hashes, in seq order: leaf ``i`` is
``SHA-256(0x00 || hash[i])`` and an interior node is ``SHA-256(0x01 || left || right)``.
Hashing the 32-byte chain hash instead of the record bytes costs one short hash per record
(the record itself is hashed once, for the chain) and binds each leaf to the whole prefix.
The tree of no leaves has root ``SHA-256("")``.

Pure functions and one small incremental structure; nothing here does I/O.
"""

from __future__ import annotations

import hashlib

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
