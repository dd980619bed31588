"""RFC 9162 Merkle roots, inclusion and consistency proofs of audit/merkle.py.

Known-answer vectors from Certificate Transparency, a literal transcription of the RFC's
recursive definitions as the reference, hypothesis round trips, and adversarial proofs: a
verifier is only as good as what it rejects (the immudb lesson).
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "audit-format.md"

# The audit log's leaves are 32-byte chain hashes; these stand in for them.
DATA = [hashlib.sha256(b"leaf %d" % i).digest() for i in range(2048)]


@functools.cache
def root(size: int) -> bytes:
    return root_of(DATA[:size])


# -- the RFC's definitions, transcribed literally (recursive, slicing: slow but obvious) ---


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH."""
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(m, D[n])."""
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF(m, D[n], b)."""
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


# -- Certificate Transparency known answers (google/certificate-transparency
#    cpp/merkletree/merkle_tree_test.cc; transparency-dev/merkle proof/verify_test.go).
#    The inputs are leaf *data*; the C++ vectors number leaves from 1, ours from 0.

CT_INPUTS = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_PATHS = [  # (0-based leaf index, tree size, path)
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CT_CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


def _hexes(nodes: Sequence[bytes]) -> list[str]:
    return [node.hex() for node in nodes]


def test_ct_root_vectors() -> None:
    assert root_of([]).hex() == CT_EMPTY == EMPTY_ROOT.hex()
    for size in range(1, 9):
        assert root_of(CT_INPUTS[:size]).hex() == CT_ROOTS[size - 1]
        tree = Frontier()
        for data in CT_INPUTS[:size]:
            tree.append(data)
        assert tree.root().hex() == CT_ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "path"), CT_PATHS)
def test_ct_inclusion_vectors(index: int, size: int, path: list[str]) -> None:
    assert _hexes(inclusion_proof(index, size, CT_INPUTS)) == path
    root_hash = bytes.fromhex(CT_ROOTS[size - 1])
    verify_inclusion(index, size, CT_INPUTS[index], [bytes.fromhex(p) for p in path], root_hash)


@pytest.mark.parametrize(("old", "new", "proof"), CT_CONSISTENCY)
def test_ct_consistency_vectors(old: int, new: int, proof: list[str]) -> None:
    if old != 6 or new != 7:  # (6, 7) is only in transparency-dev's verifier tests
        assert _hexes(consistency_proof(old, new, CT_INPUTS)) == proof
    old_root, new_root = (bytes.fromhex(CT_ROOTS[s - 1]) for s in (old, new))
    verify_consistency(old, new, old_root, new_root, [bytes.fromhex(p) for p in proof])


def test_ct_six_to_seven_matches_our_proof() -> None:
    assert _hexes(consistency_proof(6, 7, CT_INPUTS)) == CT_CONSISTENCY[-1][2]


# -- roots ------------------------------------------------------------------------------


def test_frontier_root_equals_root_of_for_every_size_up_to_300() -> None:
    tree = Frontier()
    assert tree.root() == root_of([]) == EMPTY_ROOT
    for size in range(1, 301):
        tree.append(DATA[size - 1])
        assert tree.size == size
        assert tree.root() == root_of(DATA[:size]), size


@pytest.mark.parametrize("size", [511, 512, 513, 1000, 1023, 1024, 1025, 2047, 2048])
def test_frontier_root_equals_root_of_for_larger_sizes(size: int) -> None:
    tree = Frontier()
    for data in DATA[:size]:
        tree.append(data)
    assert tree.root() == root_of(DATA[:size])


def test_frontier_root_equals_root_of_for_random_large_sizes() -> None:
    rng = random.Random(7)
    data = [rng.randbytes(32) for _ in range(20_000)]
    tree = Frontier()
    checkpoints = set(rng.sample(range(1, len(data) + 1), 12)) | {len(data)}
    for size, item in enumerate(data, start=1):
        tree.append(item)
        if size in checkpoints:
            assert tree.root() == root_of(data[:size])


def test_root_of_equals_the_rfc_definition() -> None:
    for size in range(0, 70):
        assert root_of(DATA[:size]) == ref_mth(DATA[:size])


def test_root_of_a_copy_of_the_frontier_continues_independently() -> None:
    tree = Frontier()
    for data in DATA[:5]:
        tree.append(data)
    fork = tree.copy()
    fork.append(DATA[5])
    assert tree.root() == root_of(DATA[:5])
    assert fork.root() == root_of(DATA[:6])


# -- proofs equal the RFC's definitions, and verify -------------------------------------


def test_inclusion_proofs_equal_the_rfc_definition_for_all_small_trees() -> None:
    for size in range(1, 65):
        for index in range(size):
            proof = inclusion_proof(index, size, DATA)
            assert proof == ref_path(index, DATA[:size]), (index, size)
            verify_inclusion(index, size, DATA[index], proof, root(size))


def test_consistency_proofs_equal_the_rfc_definition_for_all_small_trees() -> None:
    for new in range(1, 65):
        for old in range(0, new + 1):
            proof = consistency_proof(old, new, DATA)
            expected = [] if old in (0, new) else ref_subproof(old, DATA[:new], True)
            assert proof == expected, (old, new)
            verify_consistency(old, new, root(old), root(new), proof)


@given(st.integers(1, len(DATA)).flatmap(lambda n: st.tuples(st.integers(0, n - 1), st.just(n))))
def test_every_generated_inclusion_proof_verifies(case: tuple[int, int]) -> None:
    index, size = case
    verify_inclusion(index, size, DATA[index], inclusion_proof(index, size, DATA), root(size))


@given(st.integers(0, len(DATA)).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_every_generated_consistency_proof_verifies(case: tuple[int, int]) -> None:
    old, new = case
    verify_consistency(old, new, root(old), root(new), consistency_proof(old, new, DATA))


def test_proof_of_a_large_tree_is_logarithmic_and_verifies() -> None:
    rng = random.Random(3)
    data = [rng.randbytes(32) for _ in range(100_003)]
    top = root_of(data)
    proof = inclusion_proof(77_777, len(data), data)
    assert len(proof) == 17
    verify_inclusion(77_777, len(data), data[77_777], proof, top)
    proof = consistency_proof(65_537, len(data), data)
    verify_consistency(65_537, len(data), root_of(data[:65_537]), top, proof)


def test_proof_generation_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="not a leaf"):
        inclusion_proof(5, 5, DATA)
    with pytest.raises(ValueError, match="not a leaf"):
        inclusion_proof(-1, 5, DATA)
    with pytest.raises(ValueError, match="not a leaf"):
        inclusion_proof(0, 0, DATA)
    with pytest.raises(ValueError, match="leaves given"):
        inclusion_proof(0, 10, DATA[:9])
    with pytest.raises(ValueError, match="larger than new_size"):
        consistency_proof(6, 5, DATA)
    with pytest.raises(ValueError, match="leaves given"):
        consistency_proof(1, 10, DATA[:9])
    with pytest.raises(ValueError, match="non-negative"):
        consistency_proof(-1, 5, DATA)
    with pytest.raises(ValueError, match="not a leaf"):
        inclusion_proof(True, 5, DATA)  # bools are not indices


# -- adversarial proofs ------------------------------------------------------------------
#
# Whatever is mutated, verification must fail -- with one exception that is inherent in
# RFC 9162, not in this code: a proof only fixes the *shape* of the path from the leaf (or
# the old tree) to the root, and the size enters the computation only through that shape.
# Two sizes with the same shape (leaf 0 in trees of 3 and 4 leaves: sibling on the right,
# twice) run the very same hashes, so (index, 4, proof-for-3, root-of-3) verifies exactly as
# (index, 3, ...) does. That is sound because no tree of 4 leaves has that root (a leaf
# hash can never equal a node hash: domain separation), and our verifiers only ever take
# size and root from the same signed checkpoint. The tests below compute the shape from the
# RFC's recursive definition (not from the verifier) and allow a changed size to pass only
# when the shape, and hence every hash computed, is identical.


def inclusion_shape(index: int, size: int) -> tuple[str, ...]:
    """Which side each proof node is hashed on, leaf upwards (from RFC PATH)."""
    sides: list[str] = []
    start, end = 0, size
    while end - start > 1:
        k = _k(end - start)
        if index < start + k:
            sides.append("right")
            end = start + k
        else:
            sides.append("left")
            start += k
    return tuple(reversed(sides))


def consistency_shape(old: int, new: int) -> tuple[object, ...]:
    """How each proof node is combined (from RFC SUBPROOF), bottom up, and the seed."""
    steps: list[str] = []
    m, n, whole = old, new, True
    while m != n:
        k = _k(n)
        if m <= k:
            steps.append("new-only on the right")
            n = k
        else:
            steps.append("both on the left")
            m, n, whole = m - k, n - k, False
        # the node for this step is recorded after the deeper ones
    return (whole, tuple(reversed(steps)))


def _rejects(check: Callable[..., None], *args: object) -> bool:
    try:
        check(*args)
    except ProofError:
        return True
    return False


def _other_hash(rng: random.Random) -> bytes:
    return rng.randbytes(32)


def _node_mutations(proof: list[bytes], rng: random.Random, extra: Sequence[bytes]) -> list:
    """Every single-byte flip of every node, and dropped, added and reordered nodes."""
    out: list[tuple[str, list[bytes]]] = []
    for i, node in enumerate(proof):
        for byte in range(32):
            flipped = bytearray(node)
            flipped[byte] ^= rng.randrange(1, 256)
            out.append(
                (f"node {i} byte {byte} flipped", [*proof[:i], bytes(flipped), *proof[i + 1 :]])
            )
        out.append((f"node {i} dropped", proof[:i] + proof[i + 1 :]))
        out.append((f"node {i} replaced", [*proof[:i], _other_hash(rng), *proof[i + 1 :]]))
        out.append((f"node {i} duplicated", [*proof[: i + 1], node, *proof[i + 1 :]]))
    for position in range(len(proof) + 1):
        for added in (_other_hash(rng), *extra):
            out.append((f"node added at {position}", [*proof[:position], added, *proof[position:]]))
    for i in range(len(proof)):
        for j in range(i + 1, len(proof)):
            if proof[i] != proof[j]:
                swapped = list(proof)
                swapped[i], swapped[j] = swapped[j], swapped[i]
                out.append((f"nodes {i} and {j} swapped", swapped))
    if len(proof) > 1:
        out.append(("reversed", proof[::-1]))
    return out


def _inclusion_cases() -> list[tuple[int, int]]:
    rng = random.Random(11)
    small = [(i, n) for n in range(1, 18) for i in range(n)]
    large = [(rng.randrange(n), n) for n in rng.sample(range(18, len(DATA) + 1), 40)]
    return small + large


def _consistency_cases() -> list[tuple[int, int]]:
    rng = random.Random(12)
    small = [(m, n) for n in range(2, 18) for m in range(1, n)]
    large = []
    for n in rng.sample(range(18, len(DATA) + 1), 40):
        large.append((rng.randrange(1, n), n))
    return small + large + [(512, 2048), (1024, 1025), (1, 2048), (2047, 2048)]


@pytest.mark.parametrize(("index", "size"), _inclusion_cases())
def test_inclusion_verifier_rejects_every_mutated_proof(index: int, size: int) -> None:
    rng = random.Random(index * 7919 + size)
    leaf, top = DATA[index], root(size)
    proof = inclusion_proof(index, size, DATA)
    verify_inclusion(index, size, leaf, proof, top)
    accepted = [
        what
        for what, bad in _node_mutations(proof, rng, extra=[top, leaf_hash(leaf), leaf])
        if not _rejects(verify_inclusion, index, size, leaf, bad, top)
    ]
    assert accepted == []


@pytest.mark.parametrize(("index", "size"), _inclusion_cases())
def test_inclusion_verifier_rejects_wrong_index_size_leaf_and_root(index: int, size: int) -> None:
    rng = random.Random(index * 104729 + size)
    leaf, top = DATA[index], root(size)
    proof = inclusion_proof(index, size, DATA)
    accepted: list[str] = []

    def expect_rejected(what: str, check: Callable[..., None], *args: object) -> None:
        if not _rejects(check, *args):
            accepted.append(what)

    # Every other index, and out-of-range ones.
    for other in {*range(max(0, index - 40), min(size, index + 40)), 0, size - 1, size, size + 1}:
        if other != index:
            expect_rejected(f"index {other}", verify_inclusion, other, size, leaf, proof, top)
    # Other sizes: rejected unless the path has exactly the same shape (see above).
    shape = inclusion_shape(index, size)
    for other in {size - 1, size + 1, size * 2, size // 2, index, index + 1, 0, size ^ 2}:
        if other == size:
            continue
        if other > index and inclusion_shape(index, other) == shape:
            verify_inclusion(index, other, leaf, proof, top)  # identical computation
            continue
        expect_rejected(f"size {other}", verify_inclusion, index, other, leaf, proof, top)
    # Wrong leaf: every other leaf near it, its hash instead of its data, each byte flipped.
    for other in range(max(0, index - 8), min(size, index + 8)):
        if other != index:
            expect_rejected(f"leaf {other}", verify_inclusion, index, size, DATA[other], proof, top)
    expect_rejected("leaf hash", verify_inclusion, index, size, leaf_hash(leaf), proof, top)
    expect_rejected("empty leaf", verify_inclusion, index, size, b"", proof, top)
    for byte in range(32):
        bad = bytearray(leaf)
        bad[byte] ^= rng.randrange(1, 256)
        expect_rejected(f"leaf byte {byte}", verify_inclusion, index, size, bytes(bad), proof, top)
    # Wrong root: each byte flipped, other sizes' roots, the empty root, random.
    for byte in range(32):
        bad = bytearray(top)
        bad[byte] ^= rng.randrange(1, 256)
        expect_rejected(f"root byte {byte}", verify_inclusion, index, size, leaf, proof, bytes(bad))
    for other in {size - 1, size + 1, 1}:
        if other != size and other <= len(DATA):
            expect_rejected(
                f"root of {other}",
                verify_inclusion,
                index,
                size,
                leaf,
                proof,
                root(other),
            )
    expect_rejected("empty root", verify_inclusion, index, size, leaf, proof, EMPTY_ROOT)
    expect_rejected("random root", verify_inclusion, index, size, leaf, proof, rng.randbytes(32))
    assert accepted == []


@pytest.mark.parametrize(("old", "new"), _consistency_cases())
def test_consistency_verifier_rejects_every_mutated_proof(old: int, new: int) -> None:
    rng = random.Random(old * 7919 + new)
    old_root, new_root = root(old), root(new)
    proof = consistency_proof(old, new, DATA)
    verify_consistency(old, new, old_root, new_root, proof)
    accepted = [
        what
        for what, bad in _node_mutations(proof, rng, extra=[old_root, new_root])
        if not _rejects(verify_consistency, old, new, old_root, new_root, bad)
    ]
    assert not _rejects(verify_consistency, old, new, old_root, new_root, proof)
    assert _rejects(verify_consistency, old, new, old_root, new_root, [])
    assert accepted == []


@pytest.mark.parametrize(("old", "new"), _consistency_cases())
def test_consistency_verifier_rejects_wrong_sizes_and_roots(old: int, new: int) -> None:
    rng = random.Random(old * 104729 + new)
    old_root, new_root = root(old), root(new)
    proof = consistency_proof(old, new, DATA)
    shape = consistency_shape(old, new)
    accepted: list[str] = []

    def expect_rejected(what: str, check: Callable[..., None], *args: object) -> None:
        if not _rejects(check, *args):
            accepted.append(what)

    def sizes(o: int, n: int) -> None:
        verify_consistency(o, n, old_root, new_root, proof)

    candidates = {
        (old - 1, new),
        (old + 1, new),
        (old ^ 2, new),
        (old, new - 1),
        (old, new + 1),
        (old, new * 2),
        (old, new // 2),
        (new, old),  # swapped
        (old, old),
        (new, new),
        (0, new),
        *((o, new) for o in range(max(0, old - 20), min(new + 2, old + 20))),
        *((old, n) for n in range(max(0, new - 20), new + 20)),
    }
    for o, n in sorted(candidates - {(old, new)}):
        if 0 < o < n and consistency_shape(o, n) == shape:
            sizes(o, n)  # identical computation (see above)
            continue
        expect_rejected(f"sizes {o}->{n}", sizes, o, n)
    for byte in range(32):
        bad_old, bad_new = bytearray(old_root), bytearray(new_root)
        bad_old[byte] ^= rng.randrange(1, 256)
        bad_new[byte] ^= rng.randrange(1, 256)
        expect_rejected(
            f"old root byte {byte}",
            verify_consistency,
            old,
            new,
            bytes(bad_old),
            new_root,
            proof,
        )
        expect_rejected(
            f"new root byte {byte}",
            verify_consistency,
            old,
            new,
            old_root,
            bytes(bad_new),
            proof,
        )
    expect_rejected("swapped roots", verify_consistency, old, new, new_root, old_root, proof)
    expect_rejected("empty old root", verify_consistency, old, new, EMPTY_ROOT, new_root, proof)
    for other in {old - 1, old + 1, new - 1}:
        if other not in (old, new) and 0 <= other <= len(DATA):
            expect_rejected(
                f"old root of {other}",
                verify_consistency,
                old,
                new,
                root(other),
                new_root,
                proof,
            )
    for other in {new - 1, new + 1, old}:
        if other not in (old, new) and 0 <= other <= len(DATA):
            expect_rejected(
                f"new root of {other}",
                verify_consistency,
                old,
                new,
                old_root,
                root(other),
                proof,
            )
    assert accepted == []


def test_a_rewritten_log_is_not_consistent_with_its_old_root() -> None:
    """The attack checkpoints exist for: history edited, then a fresh proof generated."""
    rng = random.Random(5)
    for _ in range(200):
        new = rng.randrange(2, 300)
        old = rng.randrange(1, new)
        edited = list(DATA[:new])
        edited[rng.randrange(old)] = rng.randbytes(32)  # one record inside the old tree
        forged = consistency_proof(old, new, edited)
        with pytest.raises(ProofError):
            verify_consistency(old, new, root(old), root_of(edited), forged)
        # Nor is any record of it in the tree that was signed: every audit path has a node
        # covering the edited record.
        index = rng.randrange(new)
        proof = inclusion_proof(index, new, edited)
        with pytest.raises(ProofError):
            verify_inclusion(index, new, edited[index], proof, root(new))


def test_trivial_consistency_cases() -> None:
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, root(5), [])
    verify_consistency(5, 5, root(5), root(5), [])
    with pytest.raises(ProofError, match="same size"):
        verify_consistency(5, 5, root(5), root(4), [])
    with pytest.raises(ProofError, match="must be empty"):
        verify_consistency(5, 5, root(5), root(5), [root(5)])
    with pytest.raises(ProofError, match="must be empty"):
        verify_consistency(0, 5, EMPTY_ROOT, root(5), [EMPTY_ROOT])
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 5, root(1), root(5), [])
    with pytest.raises(ProofError, match="never shrinks"):
        verify_consistency(6, 5, root(6), root(5), [])
    with pytest.raises(ProofError, match="has 0 nodes"):
        verify_consistency(1, 2, root(1), root(2), [])


def test_verifiers_refuse_malformed_arguments_with_a_reason() -> None:
    proof = inclusion_proof(1, 5, DATA)
    with pytest.raises(ProofError, match="not a leaf"):
        verify_inclusion(5, 5, DATA[1], proof, root(5))
    with pytest.raises(ProofError, match="not a leaf"):
        verify_inclusion(0, 0, DATA[0], [], EMPTY_ROOT)
    with pytest.raises(ProofError, match="non-negative"):
        verify_inclusion(-1, 5, DATA[1], proof, root(5))
    with pytest.raises(ProofError, match="proof node 1 must be a 32-byte hash, got 31"):
        verify_inclusion(1, 5, DATA[1], [proof[0], proof[1][:31], proof[2]], root(5))
    with pytest.raises(ProofError, match="proof node 3 must be a 32-byte hash, got 0"):
        verify_inclusion(1, 5, DATA[1], [*proof, b""], root(5))
    with pytest.raises(ProofError, match="root must be a 32-byte hash"):
        verify_inclusion(1, 5, DATA[1], proof, root(5)[:16])
    with pytest.raises(
        ProofError, match="has 2 nodes; a proof for leaf 1 in a tree of size 5 has 3"
    ):
        verify_inclusion(1, 5, DATA[1], proof[:2], root(5))
    with pytest.raises(ProofError, match="leads to root"):
        verify_inclusion(1, 5, DATA[2], proof, root(5))
    with pytest.raises(ProofError, match="not one string"):
        verify_inclusion(0, 1, DATA[0], b"", root(1))  # type: ignore[arg-type]
    with pytest.raises(ProofError, match="non-negative"):
        verify_consistency(True, 5, root(1), root(5), [])
    with pytest.raises(ProofError, match="new root must be a 32-byte hash"):
        verify_consistency(1, 5, root(1), b"WrongRoot", consistency_proof(1, 5, DATA))
    with pytest.raises(ProofError, match="old root"):
        verify_consistency(3, 5, root(2), root(5), consistency_proof(3, 5, DATA))
    with pytest.raises(ProofError, match="new root"):
        verify_consistency(3, 5, root(3), root(6), consistency_proof(3, 5, DATA))
    with pytest.raises(ProofError, match="new root"):  # a complete old tree is taken as given
        verify_consistency(2, 5, root(3), root(5), consistency_proof(2, 5, DATA))


def test_single_leaf_tree() -> None:
    verify_inclusion(0, 1, DATA[0], [], leaf_hash(DATA[0]))
    assert root_of(DATA[:1]) == leaf_hash(DATA[0])
    assert _rejects(verify_inclusion, 0, 1, DATA[1], [], leaf_hash(DATA[0]))
    assert _rejects(verify_inclusion, 0, 1, DATA[0], [EMPTY_ROOT], leaf_hash(DATA[0]))
    # A leaf hash is never taken for a node: the 0x00 / 0x01 prefixes separate them.
    assert node_hash(leaf_hash(DATA[0]), leaf_hash(DATA[1])) == root(2)
    assert leaf_hash(leaf_hash(DATA[0]) + leaf_hash(DATA[1])) != root(2)


# -- the documented test vector ----------------------------------------------------------

DOC_DATA = [hashlib.sha256(str(i).encode()).digest() for i in range(5)]
DOC_VECTOR = {
    "root of 3": "8be871f13785b4c81a1700459c76ac2b3ae2caebb7876c376e223c6adff98c47",
    "root of 5": "4e23fb40d8876f1299cca9b3c28432a01b11d1a20126606914612892ff2e09a7",
    "inclusion 2 in 5": [
        "395421df5d0a75bdeb3c2ff42b96c071e4e197b1df5b7f7bbfd3e61a4864de46",
        "bbb441530bdded54e6e2bfcdc829819ff39b30768eb9f023071dffc16b410f10",
        "4c6bf817639562abeec7d3a2a6d4d2aaf3e1e818e0ff82cd04a43463ff84f6d6",
    ],
    "consistency 3 to 5": [
        "393ec8686f48e854d38c68530b0adc1469655252e12ec7d849e4e4117b7ad4a7",
        "395421df5d0a75bdeb3c2ff42b96c071e4e197b1df5b7f7bbfd3e61a4864de46",
        "bbb441530bdded54e6e2bfcdc829819ff39b30768eb9f023071dffc16b410f10",
        "4c6bf817639562abeec7d3a2a6d4d2aaf3e1e818e0ff82cd04a43463ff84f6d6",
    ],
}


def test_documented_merkle_vector() -> None:
    doc = DOC.read_text(encoding="utf-8")
    assert root_of(DOC_DATA[:3]).hex() == DOC_VECTOR["root of 3"] == ref_mth(DOC_DATA[:3]).hex()
    assert root_of(DOC_DATA).hex() == DOC_VECTOR["root of 5"]
    assert _hexes(inclusion_proof(2, 5, DOC_DATA)) == DOC_VECTOR["inclusion 2 in 5"]
    assert _hexes(consistency_proof(3, 5, DOC_DATA)) == DOC_VECTOR["consistency 3 to 5"]
    for value in DOC_VECTOR.values():
        for text in [value] if isinstance(value, str) else value:
            assert text in doc, f"{text} is not in {DOC.name}"
    for data in DOC_DATA:
        assert data.hex() in doc
