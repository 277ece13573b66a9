"""The transparency log's Merkle tree: RFC 9162 hashing, proofs and their checks.

TUF stops a node installing what the keys did not sign; it cannot show what the
keys *did* sign, or that every node saw the same. An append-only Merkle tree
does (``server.tlog`` keeps one of the fleet's decisions): a signed root commits
to every entry, an inclusion proof shows one entry is under it, and a
consistency proof shows a later root extends an earlier one, so two clients
comparing roots notice a split view.

Hashing is RFC 9162's (as Certificate Transparency, Go's checksum database and
Sigstore's Rekor use): a leaf is SHA-256(0x00 || data), a node SHA-256(0x01 ||
left || right), and a tree of n leaves splits at the largest power of two below
n. Proofs are RFC 9162 §2.1.3/§2.1.4's, built from the hashes of *perfect*
subtrees (2**level leaves, aligned): those are all a tree ever needs to keep,
each written once when it completes, so a store answers a proof with a few
dozen lookups (``proof_subtrees``) instead of rehashing the log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence

from fleet.errors import GpuwardError

HASH_BYTES = 32
# A tree of 2**63 leaves is deeper than any proof a client should accept.
MAX_PROOF_HASHES = 63

Subtree = tuple[int, int]  # (level, index): leaves [index * 2**level, (index + 1) * 2**level)
Range = tuple[int, int]  # leaves [start, end)


class ProofError(GpuwardError):
    """A proof that does not show what it claims: the log, or what served it, lies."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two below ``n`` (n > 1): where RFC 9162 splits a tree."""
    return 1 << ((n - 1).bit_length() - 1)


def perfect_subtrees(start: int, end: int) -> list[Subtree]:
    """The aligned perfect subtrees that make up leaves [start, end), largest first.

    For the ranges RFC 9162's recursion produces (``start`` a multiple of a power
    of two at least ``end - start``), folding their hashes from the right gives
    the range's tree hash (``fold``).
    """
    found: list[Subtree] = []
    while start < end:
        level = (start & -start).bit_length() - 1 if start else (end - start).bit_length()
        while (1 << level) > end - start:
            level -= 1
        found.append((level, start >> level))
        start += 1 << level
    return found


def fold(hashes: Sequence[bytes]) -> bytes:
    """The tree hash of perfect subtrees' hashes, largest first (``perfect_subtrees``)."""
    if not hashes:
        return hashlib.sha256(b"").digest()  # RFC 9162: the empty tree's hash
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The ranges whose tree hashes are leaf ``index``'s inclusion proof in a tree of
    ``size`` leaves, bottom up (RFC 9162 §2.1.3.1, PATH)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
    ranges: list[Range] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    return ranges[::-1]


def consistency_ranges(old: int, new: int) -> list[Range]:
    """The ranges whose tree hashes prove a tree of ``old`` leaves is a prefix of one
    of ``new`` leaves, bottom up (RFC 9162 §2.1.4.1, SUBPROOF)."""
    if not 0 < old <= new:
        raise ProofError(f"no consistency proof from {old} leaves to {new}")
    ranges: list[Range] = []
    start, end, complete = 0, new, True
    while True:
        n = end - start
        if old - start == n:
            if not complete:
                ranges.append((start, end))
            return ranges[::-1]
        k = _split(n)
        if old - start <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
            complete = False


def proof_subtrees(ranges: Iterable[Range]) -> set[Subtree]:
    """Every perfect subtree whose hash the ranges' tree hashes need."""
    return {subtree for start, end in ranges for subtree in perfect_subtrees(start, end)}


def proof(ranges: Sequence[Range], hashes: Mapping[Subtree, bytes]) -> list[bytes]:
    """The ranges' tree hashes, from the perfect subtrees' hashes."""
    return [fold([hashes[s] for s in perfect_subtrees(start, end)]) for start, end in ranges]


def frontier(size: int) -> list[Subtree]:
    """The perfect subtrees of a tree of ``size`` leaves that appending completes:
    all ``extend`` reads."""
    return perfect_subtrees(0, size)


def extend(
    size: int, subtree: Callable[[Subtree], bytes], leaves: Sequence[bytes]
) -> list[tuple[Subtree, bytes]]:
    """The perfect subtrees that appending leaf hashes ``leaves`` to a tree of
    ``size`` leaves completes, with their hashes, in the order they complete.
    ``subtree`` gives the hashes of the tree's ``frontier``."""
    made: dict[Subtree, bytes] = {}
    for index, leaf in enumerate(leaves, start=size):
        level, h = 0, leaf
        made[(0, index)] = h
        while index & 1:
            left = (level, index - 1)
            h = node_hash(made[left] if left in made else subtree(left), h)
            level, index = level + 1, index >> 1
            made[(level, index)] = h
    return list(made.items())


class Tree:
    """A whole tree in memory: every perfect subtree's hash, by level.

    What ``gpuward log verify`` rebuilds from an export, the benchmark measures,
    and the tests compare the store with.
    """

    def __init__(self) -> None:
        self.levels: list[list[bytes]] = [[]]

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def append(self, leaf: bytes) -> list[tuple[Subtree, bytes]]:
        """Add a leaf hash; the perfect subtrees it completes, itself first."""
        done = extend(self.size, self.subtree, [leaf])
        for (level, _), h in done:
            if len(self.levels) == level:
                self.levels.append([])
            self.levels[level].append(h)
        return done

    def subtree(self, subtree: Subtree) -> bytes:
        level, index = subtree
        return self.levels[level][index]

    def hashes(self, ranges: Sequence[Range]) -> list[bytes]:
        return proof(ranges, {s: self.subtree(s) for s in proof_subtrees(ranges)})

    def root(self, size: int | None = None) -> bytes:
        """The tree hash of the first ``size`` leaves (all of them by default)."""
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ProofError(f"the tree has {self.size} leaves, not {size}")
        return fold([self.subtree(s) for s in perfect_subtrees(0, size)])

    def inclusion(self, index: int, size: int) -> list[bytes]:
        return self.hashes(inclusion_ranges(index, size))

    def consistency(self, old: int, new: int) -> list[bytes]:
        return self.hashes(consistency_ranges(old, new))


def _check_hashes(hashes: Sequence[bytes]) -> None:
    if len(hashes) > MAX_PROOF_HASHES or any(len(h) != HASH_BYTES for h in hashes):
        raise ProofError("a proof is at most 63 hashes of 32 bytes each")


def verify_inclusion(
    leaf: bytes, index: int, size: int, hashes: Sequence[bytes], root: bytes
) -> None:
    """Raise ``ProofError`` unless ``hashes`` prove leaf hash ``leaf`` is leaf
    ``index`` of the tree of ``size`` leaves whose hash is ``root`` (RFC 9162 §2.1.3.2)."""
    _check_hashes(hashes)
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
    fn, sn, r = index, size - 1, leaf
    for p in hashes:
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or r != root:
        raise ProofError(f"leaf {index} is not in the tree of {size} leaves with this root")


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, hashes: Sequence[bytes]
) -> None:
    """Raise ``ProofError`` unless ``hashes`` prove the tree of ``old`` leaves with
    ``old_root`` is a prefix of the one of ``new`` leaves with ``new_root``
    (RFC 9162 §2.1.4.2)."""
    _check_hashes(hashes)
    if not 0 <= old <= new:
        raise ProofError(f"a log never shrinks, from {old} leaves to {new}")
    if old in (0, new):
        if hashes or (old == new and old_root != new_root):
            raise _not_extended(old, new)
        return
    path = list(hashes)
    if old & (old - 1) == 0:  # a power of two: the old root is the proof's first node
        path.insert(0, old_root)
    if not path:
        raise ProofError("an empty consistency proof")
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or fr != old_root or sr != new_root:
        raise _not_extended(old, new)


def _not_extended(old: int, new: int) -> ProofError:
    return ProofError(
        f"the tree of {new} leaves does not extend the one of {old} leaves: "
        "the log was rewritten, or shows different clients different trees"
    )
