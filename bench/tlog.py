"""The transparency log's cost: appending entries and proving inclusion and consistency.

100,000 log entries (bundle entries, as the server writes them) are appended to
the in-memory tree (``fleet.merkle.Tree``: what ``gpuward log verify``
rebuilds) and to the fleet store (SQLite, in transactions of ``--batch``
entries: the server's path, subtree hashes and all); then inclusion proofs of
``--proofs`` entries and consistency proofs between as many pairs of sizes are
made from the store and checked. The reference is a bare SHA-256 of the same
entries' bytes, timed in the same run: each figure is printed as a ratio
against it (how many times the bare hashing of the whole log it costs).

    .venv/bin/python bench/tlog.py [--entries 100000] [--batch 500] [--proofs 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fleet import merkle
from fleet.tlog import EntryKind, LogEntry
from keys import tlog_key
from server.store import open_store
from server.tlog import TransparencyLog


@dataclass(frozen=True)
class TlogFigures:
    entries: int
    proofs: int
    sha256_s: float  # the reference: SHA-256 of every entry's bytes
    tree_append_s: float  # the in-memory tree, every entry
    store_append_s: float  # the fleet store, every entry
    inclusion_s: float  # made from the store and checked, every proof
    consistency_s: float

    def ratios(self) -> dict[str, float]:
        return {
            "tree append": self.tree_append_s / self.sha256_s,
            "store append": self.store_append_s / self.sha256_s,
            "inclusion proofs": self.inclusion_s / self.sha256_s,
            "consistency proofs": self.consistency_s / self.sha256_s,
        }


def _entries(count: int) -> list[LogEntry]:
    return [
        LogEntry(
            EntryKind.BUNDLE, 1_800_000_000 + i, f"drivers/R580/nvidia-{i}.bundle", f"{i:064x}"
        )
        for i in range(count)
    ]


def run(entries: int, batch: int, proofs: int, base: Path, seed: int = 0) -> TlogFigures:
    logged = _entries(entries)
    datas = [e.data for e in logged]
    start = time.perf_counter()
    for data in datas:
        hashlib.sha256(data).digest()
    sha256_s = time.perf_counter() - start

    tree = merkle.Tree()
    start = time.perf_counter()
    for data in datas:
        tree.append(merkle.leaf_hash(data))
    tree_append_s = time.perf_counter() - start

    signer = tlog_key.load_or_create(base / "tlog.key")
    rng = random.Random(seed)

    async def through_store() -> tuple[float, float, float]:
        store = await open_store(f"sqlite://{base / 'fleet.db'}")
        try:
            tlog = TransparencyLog(store, signer)
            began = time.perf_counter()
            for first in range(0, entries, batch):
                await store.append_log(logged[first : first + batch])
            appended = time.perf_counter() - began
            root = await tlog.root(entries)
            assert root == tree.root()
            began = time.perf_counter()
            for index in (rng.randrange(entries) for _ in range(proofs)):
                proof = await tlog.inclusion(index, entries)
                merkle.verify_inclusion(proof.leaf_hash, index, entries, proof.hashes, root)
            included = time.perf_counter() - began
            began = time.perf_counter()
            for old in (rng.randrange(1, entries + 1) for _ in range(proofs)):
                consistency = await tlog.consistency(old, entries)
                merkle.verify_consistency(old, entries, tree.root(old), root, consistency.hashes)
            consistent = time.perf_counter() - began
            return appended, included, consistent
        finally:
            await store.close()

    store_append_s, inclusion_s, consistency_s = asyncio.run(through_store())
    return TlogFigures(
        entries, proofs, sha256_s, tree_append_s, store_append_s, inclusion_s, consistency_s
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--proofs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = run(args.entries, args.batch, args.proofs, Path(tmp))
    print(f"{figures.entries} entries, {figures.proofs} proofs of each kind")
    print(f"SHA-256 of every entry (reference):   {figures.sha256_s * 1e3:10.1f} ms")
    for name, ratio in figures.ratios().items():
        print(f"{name + ' / reference:':38s}{ratio:10.1f}x")
    per = figures.proofs or 1
    print(f"one inclusion proof from the store:   {figures.inclusion_s / per * 1e3:10.3f} ms")
    print(f"one consistency proof from the store: {figures.consistency_s / per * 1e3:10.3f} ms")


if __name__ == "__main__":
    main()
