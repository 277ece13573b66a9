"""bench/tlog.py at a tiny size: it runs, its store and tree agree, and it prints
its figures as ratios against the reference."""

from __future__ import annotations

from pathlib import Path

from bench.tlog import run


def test_the_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    figures = run(entries=300, batch=64, proofs=20, base=tmp_path)
    assert (figures.entries, figures.proofs) == (300, 20)
    assert set(figures.ratios()) == {
        "tree append", "store append", "inclusion proofs", "consistency proofs",
    }  # fmt: skip
    assert all(seconds > 0 for seconds in (figures.sha256_s, figures.store_append_s))
