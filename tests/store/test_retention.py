"""Report retention on SQLite and PostgreSQL: each node keeps its newest ``count``
reports (trimmed as reports arrive, within a slack of count/16) and none older
than ``max_age_s`` (the hourly sweep), its latest always, and every report young
enough to be replayed, whose row refuses the replay at another replica."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

import pytest

from server.store import REPLAY_WINDOW_S, Retention, Store, open_store, sql
from server.store.sql import _slack
from tests.store.test_store import node, report

T = TypeVar("T")
DAY = 86_400
START = 1_000_000
KEY = b"k" * 32


def run(db_url: str, retention: Retention, body: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        store = await open_store(db_url, retention)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


async def send(store: Store, node_id: str, at: int, nonce: str) -> bool:
    sent = replace(report(node_id), reason=nonce)  # tells the reports apart in history
    return await store.add_report(sent, at, "", nonce, None, KEY)


async def reasons(store: Store, node_id: str) -> list[str]:
    return [r.report.reason for r in await store.history(node_id, 100_000)]


def test_each_node_keeps_its_newest_count_as_reports_arrive(db_url: str) -> None:
    count = 32

    async def body(store: Store) -> None:
        for node_id in ("busy", "quiet"):
            await store.enroll(node(node_id, key=KEY))
        await send(store, "quiet", START, "q0")
        seen = 0
        for i in range(200):  # a report every 10 minutes: each soon past the replay window
            assert await send(store, "busy", START + 600 * i, f"b{i}")
            seen = max(seen, len(await reasons(store, "busy")))
        assert seen <= count + _slack(count)
        kept = await reasons(store, "busy")
        assert kept == [f"b{i}" for i in reversed(range(200))][: len(kept)]
        assert await reasons(store, "quiet") == ["q0"]  # another node's are its own
        assert await store.enforce_retention(START + 600 * 200) == len(kept) - count
        assert await reasons(store, "busy") == [f"b{i}" for i in reversed(range(168, 200))]

    run(db_url, Retention(count, 30 * DAY), body)


def test_a_flood_within_the_replay_window_is_kept_until_it_leaves_it(db_url: str) -> None:
    """One report a second: retention never deletes a report whose nonce could still
    be replayed, so a replay is refused even here; once the window has passed, the
    node is back to its count."""

    async def body(store: Store) -> None:
        await store.enroll(node("n1", key=KEY))
        for i in range(100):
            assert await send(store, "n1", START + i, f"f{i}")
        assert len(await reasons(store, "n1")) == 100
        assert not await send(store, "n1", START + 100, "f0")  # the replay, refused
        after = START + 99 + REPLAY_WINDOW_S + 1
        assert await store.enforce_retention(after) == 98
        assert await reasons(store, "n1") == ["f99", "f98"]
        assert await send(store, "n1", after, "f100")
        assert len(await reasons(store, "n1")) <= 2 + _slack(2)

    run(db_url, Retention(2, 30 * DAY), body)


def test_reports_older_than_the_age_go_but_each_nodes_latest_stays(db_url: str) -> None:
    async def body(store: Store) -> None:
        for node_id in ("silent", "active"):
            await store.enroll(node(node_id, key=KEY))
        for i in range(5):
            await send(store, "silent", START + i * DAY, f"s{i}")
            await send(store, "active", START + i * DAY, f"a{i}")
        await send(store, "active", START + 10 * DAY, "a-recent")
        # At day 12 with a 3-day limit: everything of the silent node but its latest.
        # (The server's clock, as the sweep reads it, has fractions.)
        assert await store.enforce_retention(START + 12 * DAY + 0.5) == 4 + 5
        assert await reasons(store, "silent") == ["s4"]
        assert await reasons(store, "active") == ["a-recent"]
        silent = await store.node("silent")
        assert silent is not None and silent.report is not None
        assert silent.report.reason == "s4" and silent.last_seen == START + 4 * DAY
        assert await store.enforce_retention(START + 12 * DAY) == 0
        # What the store counts stayed right: the count still trims exactly (a count
        # the sweep left too high would trim below it).
        for i in range(12):
            await send(store, "silent", START + 13 * DAY + 3_600 * i, f"t{i}")
        assert 10 <= len(await reasons(store, "silent")) <= 10 + _slack(10)

    run(db_url, Retention(10, 3 * DAY), body)


def test_a_late_report_does_not_displace_the_latest_nor_is_it_kept_in_its_place(
    db_url: str,
) -> None:
    """From a replica whose report arrived late: stored and counted, not the latest."""

    async def body(store: Store) -> None:
        await store.enroll(node("n1", key=KEY))
        await send(store, "n1", START + 5_000, "newest")
        await send(store, "n1", START, "late")
        assert await store.enforce_retention(START + 5_000 + REPLAY_WINDOW_S + 1) == 1
        status = await store.node("n1")
        assert status is not None and status.report is not None
        assert status.report.reason == "newest"
        assert await reasons(store, "n1") == ["newest"]

    run(db_url, Retention(1, 30 * DAY), body)


def test_a_lowered_count_applies_at_the_next_sweep(db_url: str) -> None:
    async def fill(store: Store) -> None:
        await store.enroll(node("n1", key=KEY))
        for i in range(40):
            await send(store, "n1", START + 600 * i, f"r{i}")

    run(db_url, Retention(100, 30 * DAY), fill)

    async def lowered(store: Store) -> None:
        assert len(await reasons(store, "n1")) == 40
        assert await store.enforce_retention(START + 600 * 40) == 30
        assert await reasons(store, "n1") == [f"r{i}" for i in reversed(range(30, 40))]

    run(db_url, Retention(10, 30 * DAY), lowered)


def test_without_a_policy_every_report_is_kept(db_url: str) -> None:
    async def body(store: Store) -> None:
        await store.enroll(node("n1", key=KEY))
        for i in range(30):
            await send(store, "n1", START + DAY * i, f"r{i}")
        assert await store.enforce_retention(START + DAY * 400) == 0
        assert len(await reasons(store, "n1")) == 30

    async def main() -> None:
        store = await open_store(db_url)
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def test_a_sweep_deletes_in_bounded_transactions_and_all_it_must(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Report writes wait for one of the sweep's transactions, never the whole sweep:
    with three deletions a transaction, several nodes far over the count and past
    the age still end exactly at their policy."""
    monkeypatch.setattr(sql, "TRIM_ROWS", 3)

    async def fill(store: Store) -> None:
        for n in range(4):
            await store.enroll(node(f"n{n}", key=KEY))
            for i in range(12):
                await send(store, f"n{n}", START + DAY * (i if n < 2 else 20 + i), f"r{i}")

    run(db_url, Retention(100, 60 * DAY), fill)

    async def swept(store: Store) -> None:
        # n0, n1: old, and over the count; n2, n3: recent, over the count.
        assert await store.enforce_retention(START + 45 * DAY) == 2 * 11 + 2 * 7
        for n in ("n0", "n1"):
            assert await reasons(store, n) == ["r11"]
        for n in ("n2", "n3"):
            assert await reasons(store, n) == [f"r{i}" for i in reversed(range(7, 12))]

    run(db_url, Retention(5, 30 * DAY), swept)
