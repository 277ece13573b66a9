"""The store's window of GPU samples, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from fleet.gpu import GpuSample
from fleet.report import GpuReport, HealthReport, NodeHealth
from fleet.stragglers import WINDOW
from server.store import Store
from tests.store.test_store import node, report, run


def with_samples(node_id: str, clock: int) -> tuple[GpuSample, ...]:
    return tuple(
        GpuSample(index=g, uuid=f"GPU-{node_id}-{g}", name="H100", sm_clock_mhz=clock)
        for g in range(2)
    )


def test_each_node_keeps_its_latest_window_in_order(db_url: str) -> None:
    async def body(store: Store) -> None:
        for name in ("n1", "n2", "n3"):
            await store.enroll(node(name))
        for i in range(WINDOW + 3):
            samples = with_samples("n1", 1000 + i)
            health = NodeHealth("healthy", (), tuple(GpuReport(s, ()) for s in samples), ())
            sent = replace(report("n1"), health=health)
            assert await store.add_report(sent, 100 + i, "127.0.0.1", f"{i:032x}")
        await store.add_report(report("n2"), 200, "127.0.0.1", "f" * 32)  # no samples
        old = replace(report("n3"), health=NodeHealth("healthy", (), (), ()))
        await store.add_report(old, 50, "127.0.0.1", "e" * 32)

        (window,) = await store.gpu_windows(since=0)
        assert window.node_id == "n1"
        assert [at for at, _ in window.reports] == [100.0 + i for i in range(3, WINDOW + 3)]
        assert [s.sm_clock_mhz for _, samples in window.reports for s in samples[:1]] == list(
            range(1003, 1003 + WINDOW)
        )
        assert window.reports[-1][1] == with_samples("n1", 1000 + WINDOW + 2)
        assert await store.gpu_windows(since=100 + WINDOW + 3) == []  # n1 went quiet since

    run(db_url, body)


def test_reports_committed_together_keep_the_window(db_url: str) -> None:
    """Reports arriving at once share one transaction (group commit): the window
    still keeps each node's latest sets, in order."""

    async def body(store: Store) -> None:
        await store.enroll(node("n1"))

        def sent(i: int) -> HealthReport:
            samples = with_samples("n1", 1000 + i)
            health = NodeHealth("healthy", (), tuple(GpuReport(s, ()) for s in samples), ())
            return replace(report("n1"), health=health)

        stored = await asyncio.gather(
            *(store.add_report(sent(i), 100 + i, "", f"{i:032x}") for i in range(WINDOW + 3))
        )
        assert all(stored)
        (window,) = await store.gpu_windows(since=0)
        assert [at for at, _ in window.reports] == [100.0 + i for i in range(3, WINDOW + 3)]

    run(db_url, body)
