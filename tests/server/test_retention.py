"""Retention through the real server on SQLite and PostgreSQL (issue 17, item 5):
a node reporting as fast as it may holds no more than the configured count, a
node that went silent keeps only its latest report past the age, and a failed
sweep is logged and leaves the server serving."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from server import retention
from server.config import DAY_S
from server.http import Services
from server.store import Retention, open_store
from server.store.sql import _slack
from tests.conftest import Site, make_site
from tests.simnode import FakeClock, SimNode, operator_get

COUNT = 10


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def site(_template_repo: Path, tmp_path: Path, db_url: str, clock: FakeClock) -> Iterator[Site]:
    yield from make_site(
        _template_repo, tmp_path, db_url, clock, report_retention_count=COUNT,
        report_retention_days=7,
    )  # fmt: skip


@pytest.fixture
def viewer(site: Site) -> str:
    return site.server.issue_token("viewer")


def history(site: Site, viewer: str, node_id: str) -> list[dict[str, Any]]:
    response = operator_get(site.url, f"/v1/nodes/{node_id}?limit=500", viewer)
    assert response.status == 200, response.data
    found: list[dict[str, Any]] = json.loads(response.data)["history"]
    return found


def test_a_node_reporting_flat_out_holds_the_count(
    site: Site, clock: FakeClock, viewer: str
) -> None:
    busy, quiet = SimNode(site.url, "busy", clock=clock), SimNode(site.url, "quiet", clock=clock)
    for node in (busy, quiet):
        assert node.enroll().status == 201
    assert quiet.report(bundle="quiet one").status == 202
    most = 0
    for i in range(120):  # the per-node rate's sustained 1/s, for two minutes
        clock.advance(1)
        assert busy.report(bundle=f"r{i}").status == 202
        most = max(most, len(history(site, viewer, "busy")))
    # Every report is still replayable: none may go yet.
    assert most == 120
    clock.advance(30 * 60)
    for i in range(120, 130):
        clock.advance(1)
        assert busy.report(bundle=f"r{i}").status == 202
        assert len(history(site, viewer, "busy")) <= COUNT + _slack(COUNT)
    assert [h["report"]["bundle"] for h in history(site, viewer, "busy")][:COUNT] == [
        f"r{i}" for i in reversed(range(120, 130))
    ]
    assert [h["report"]["bundle"] for h in history(site, viewer, "quiet")] == ["quiet one"]


def test_the_sweep_ages_out_a_silent_nodes_reports_but_its_latest(
    site: Site, clock: FakeClock, viewer: str
) -> None:
    node = SimNode(site.url, "silent", clock=clock)
    assert node.enroll().status == 201
    for i in range(5):
        clock.advance(DAY_S)
        assert node.report(bundle=f"day {i}").status == 202
    clock.advance(30 * DAY_S)

    async def sweep(svc: Services) -> None:
        await retention.sweep(svc.store, svc.clock)

    site.server.call(sweep)
    assert [h["report"]["bundle"] for h in history(site, viewer, "silent")] == ["day 4"]
    assert site.fleet()["silent"]["report"]["bundle"] == "day 4"


def test_a_failed_sweep_is_logged_and_not_raised(db_url: str) -> None:
    async def main() -> None:
        store = await open_store(db_url, Retention(COUNT, DAY_S))
        await store.close()  # the database gone under it
        await retention.sweep(store, lambda: 1_800_000_000.0)

    with capture_logs() as logs:
        asyncio.run(main())
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["retention_sweep_failed"]
