"""The Merkle tree against RFC 9162's definitions, written out as the RFC writes
them (recursively, over the data), and its proof checks attacked."""

from __future__ import annotations

import hashlib

import pytest

from fleet.merkle import (
    ProofError,
    Tree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)


def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def mth(d: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1, MTH."""
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return leaf_hash(d[0])
    k = _split(len(d))
    return node_hash(mth(d[:k]), mth(d[k:]))


def path(m: int, d: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1, PATH."""
    if len(d) <= 1:
        return []
    k = _split(len(d))
    if m < k:
        return [*path(m, d[:k]), mth(d[k:])]
    return [*path(m - k, d[k:]), mth(d[:k])]


def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """RFC 9162 §2.1.4.1, SUBPROOF."""
    if m == len(d):
        return [] if b else [mth(d)]
    k = _split(len(d))
    if m <= k:
        return [*subproof(m, d[:k], b), mth(d[k:])]
    return [*subproof(m - k, d[k:], False), mth(d[:k])]


DATA = [i.to_bytes(2, "big") for i in range(40)]


@pytest.fixture(scope="module")
def tree() -> Tree:
    t = Tree()
    for d in DATA:
        t.append(leaf_hash(d))
    return t


def test_roots_and_proofs_are_rfc_9162s(tree: Tree) -> None:
    for n in range(1, len(DATA) + 1):
        assert tree.root(n) == mth(DATA[:n])
        for i in range(n):
            proof = tree.inclusion(i, n)
            assert proof == path(i, DATA[:n])
            verify_inclusion(leaf_hash(DATA[i]), i, n, proof, tree.root(n))
        for m in range(1, n + 1):
            proof = tree.consistency(m, n)
            assert proof == subproof(m, DATA[:n], True)
            verify_consistency(m, n, tree.root(m), tree.root(n), proof)
    assert tree.root(0) == hashlib.sha256(b"").digest()


def test_a_forged_inclusion_proof_fails(tree: Tree) -> None:
    n, i = 37, 21
    proof, root = tree.inclusion(i, n), tree.root(n)
    attacks = [
        (leaf_hash(b"not logged"), i, n, proof, root),
        (leaf_hash(DATA[i]), i + 1, n, proof, root),  # another position
        (leaf_hash(DATA[i]), i, n, proof[:-1], root),
        (leaf_hash(DATA[i]), i, n, [*proof, proof[0]], root),
        (leaf_hash(DATA[i]), i, n, [bytes(32), *proof[1:]], root),
        (leaf_hash(DATA[i]), i, n, proof, tree.root(n - 1)),
        (leaf_hash(DATA[i]), n, n, proof, root),
    ]
    # (The tree size is not among them: for a leaf in the left, perfect part a
    # proof is the same in trees of a few more leaves; the signed checkpoint binds
    # the size to the root.)
    for leaf, index, size, hashes, want in attacks:
        with pytest.raises(ProofError):
            verify_inclusion(leaf, index, size, hashes, want)


def test_a_rewritten_history_fails_consistency(tree: Tree) -> None:
    forked = Tree()
    for j, d in enumerate(DATA):
        forked.append(leaf_hash(b"forged" if j == 5 else d))
    m, n = 13, 40
    proof = tree.consistency(m, n)
    with pytest.raises(ProofError, match="does not extend"):
        verify_consistency(m, n, forked.root(m), tree.root(n), proof)
    with pytest.raises(ProofError, match="does not extend"):
        verify_consistency(m, n, tree.root(m), forked.root(n), proof)
    with pytest.raises(ProofError):
        verify_consistency(m, n, tree.root(m), tree.root(n), proof[1:])
    with pytest.raises(ProofError):
        verify_consistency(n, m, tree.root(n), tree.root(m), proof)
    with pytest.raises(ProofError):
        verify_consistency(m, m, tree.root(m), forked.root(m), [])
