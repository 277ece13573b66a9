"""The log's proofs checked by code gpuward did not write.

* Certificate Transparency's RFC 6962 test vectors, as transparency-dev/merkle
  (the Go library behind Trillian, Tessera and Go's checksum database) tests its
  own verifier with (proof/verify_test.go): the tree of eight leaves, its roots
  at every size, and its published inclusion and consistency proofs. Our tree
  must produce exactly those proofs, and our checks must accept them.
* Sigstore's own Merkle inclusion verification (``sigstore._internal.merkle``,
  what Sigstore clients run on Rekor's proofs) accepts the inclusion proofs the
  server serves from the fleet store, and refuses them for a changed entry.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from sigstore._internal.merkle import verify_merkle_inclusion
from sigstore.errors import VerificationError

from fleet.merkle import Tree, leaf_hash, verify_consistency, verify_inclusion
from fleet.tlog import EntryKind, InclusionProof, LogEntry
from keys import tlog_key
from server.store import open_store
from server.tlog import TransparencyLog

LEAVES = [
    bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657")
] + [bytes.fromhex("606162636465666768696a6b6c6d6e6f")]
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
H = {
    "96a2": "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "5f08": "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "6b47": "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    "bc1a": "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    "ca85": "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    "d37e": "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "fac5": "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "6e34": "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "0ebc": "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
    "b086": "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
}
# (leaf number from 1, tree size, proof), as the vectors number leaves.
INCLUSION = [
    (1, 8, ["96a2", "5f08", "6b47"]),
    (6, 8, ["bc1a", "ca85", "d37e"]),
    (3, 3, ["fac5"]),
    (2, 5, ["6e34", "5f08", "bc1a"]),
]
CONSISTENCY = [
    (1, 8, ["96a2", "5f08", "6b47"]),
    (6, 8, ["0ebc", "ca85", "d37e"]),
    (2, 5, ["5f08", "bc1a"]),
    (6, 7, ["0ebc", "b086", "d37e"]),
]


def _hashes(names: list[str]) -> list[bytes]:
    return [bytes.fromhex(H[name]) for name in names]


@pytest.fixture(scope="module")
def tree() -> Tree:
    t = Tree()
    for leaf in LEAVES:
        t.append(leaf_hash(leaf))
    return t


def test_roots_are_certificate_transparencys(tree: Tree) -> None:
    assert [tree.root(n) for n in range(1, 9)] == ROOTS


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION)
def test_inclusion_proofs_are_the_published_ones(
    tree: Tree, leaf: int, size: int, proof: list[str]
) -> None:
    assert tree.inclusion(leaf - 1, size) == _hashes(proof)
    verify_inclusion(leaf_hash(LEAVES[leaf - 1]), leaf - 1, size, _hashes(proof), ROOTS[size - 1])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_proofs_are_the_published_ones(
    tree: Tree, old: int, new: int, proof: list[str]
) -> None:
    assert tree.consistency(old, new) == _hashes(proof)
    verify_consistency(old, new, ROOTS[old - 1], ROOTS[new - 1], _hashes(proof))


def _sigstore_entry(proof: InclusionProof, root: bytes, body: bytes) -> Any:
    """What sigstore's verifier reads of a Rekor entry: its inclusion proof and the
    body the leaf hashes (the attributes of sigstore.models.TransparencyLogEntry)."""
    inner = SimpleNamespace(
        inclusion_proof=SimpleNamespace(
            log_index=proof.index, tree_size=proof.size, hashes=list(proof.hashes), root_hash=root
        ),
        canonicalized_body=body,
    )
    return cast(Any, SimpleNamespace(_inner=inner))


def test_sigstore_verifies_the_served_inclusion_proofs(tmp_path: Path) -> None:
    signer = tlog_key.load_or_create(tmp_path / "tlog.key")
    entries = [LogEntry(EntryKind.BUNDLE, i, f"b/{i}.tar", f"{i:064x}") for i in range(45)]

    async def main() -> None:
        store = await open_store(f"sqlite://{tmp_path / 'fleet.db'}")
        try:
            tlog = TransparencyLog(store, signer)
            await tlog.append(entries)
            for index in (0, 1, 17, 31, 32, 44):
                proof = await tlog.inclusion(index)
                root = signer.verifier.verify(proof.checkpoint).root
                verify_merkle_inclusion(_sigstore_entry(proof, root, entries[index].data))
                with pytest.raises(VerificationError):
                    changed = entries[(index + 1) % len(entries)].data
                    verify_merkle_inclusion(_sigstore_entry(proof, root, changed))
        finally:
            await store.close()

    asyncio.run(main())
