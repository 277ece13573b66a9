"""Re-signing survives any failure, says so, and recovers once the cause is fixed.

A real server on loopback, whose passes are scheduled fast (the retry delays are
settings); the failures are real ones caused in its repository: a key file that
is not a key, a metadata file turned into a folder. Before issue 16 only a
GpuwardError was caught, so either of these ended re-signing for good.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import urllib3
from structlog.testing import capture_logs

from server.config import ServerConfig
from server.http import Services
from server.lifecycle import BackgroundServer
from server.renewal import FAILED, OK, OVERDUE_AFTER_S, RenewalStatus, next_delay
from server.store import open_store
from tests.conftest import Site, make_site
from tests.simnode import dashboard_sign_in, operator_get

RETRY_S = (0.05, 0.2)
FAST: dict[str, Any] = {"resign_interval_s": 0.2, "resign_retry_s": RETRY_S}
MAX_PASSES = 100


@pytest.fixture
def fast_site(_template_repo: Path, _template_director: Path, tmp_path: Path) -> Iterator[Site]:
    yield from make_site(
        _template_repo, tmp_path, str(tmp_path / "s.db"), director=_template_director, **FAST
    )


def next_pass(server: BackgroundServer) -> RenewalStatus:
    async def wait(svc: Services) -> RenewalStatus:
        assert svc.renewer is not None
        return await svc.renewer.next_pass()

    return server.call(wait)


def pass_with(server: BackgroundServer, outcome: str) -> RenewalStatus:
    """The first pass from now that ends with ``outcome`` (a pass under way when
    the cause changed may still end the old way)."""
    for _ in range(MAX_PASSES):
        status = next_pass(server)
        if status.outcome == outcome:
            return status
    raise AssertionError(f"no {outcome} pass in {MAX_PASSES}")


def server_status(site: Site) -> dict[str, Any]:
    response = operator_get(site.url, "/v1/server/status", site.server.issue_token("viewer"))
    assert response.status == 200, response.data
    renewal: dict[str, Any] = json.loads(response.data)["renewal"]
    return renewal


def dashboard(site: Site) -> str:
    http = urllib3.PoolManager(retries=urllib3.Retry(total=0, redirect=0, raise_on_redirect=False))
    session = dashboard_sign_in(site.url, site.server.issue_token("viewer"))
    page = http.request("GET", f"{site.url}/", headers={"Cookie": session})
    assert page.status == 200
    return page.data.decode()


def test_a_key_that_is_not_a_key_is_shown_retried_and_recovered_from(fast_site: Site) -> None:
    site = fast_site
    site.server.stop()
    # A timestamp due for renewal, and its key file replaced by something else.
    site.repo.sign_timestamp(expires=datetime.now(UTC) + timedelta(minutes=5))
    key = site.repo.keyring.dir / "timestamp-1.key"
    good = key.read_bytes()
    key.write_bytes(b"not a key\n")
    config = dataclasses.replace(site.server.config, port=0)
    with capture_logs() as logs, BackgroundServer(config) as server:
        site.server = server
        failed = pass_with(server, FAILED)
        assert failed.failures >= 2  # the pass at start failed too: the loop went on
        (problem,) = failed.problems
        assert problem.role == "image:timestamp" and "timestamp-1.key" in problem.reason
        assert failed.next_try_at - failed.at <= 1  # a retry, not the next interval

        shown = server_status(site)
        assert shown["state"] == "failing"
        (signer,) = shown["signers"]
        assert signer["outcome"] == FAILED and signer["overdue"] is False
        assert signer["problems"][0]["role"] == "image:timestamp"
        assert signer["nearest_expiry"]["role"] == "image:timestamp"
        assert signer["nearest_expiry"]["expires_at"] < datetime.now(UTC).timestamp() + 600
        page = dashboard(site)
        assert 'id="renewal-failing"' in page and "timestamp-1.key" in page

        key.write_bytes(good)
        recovered = pass_with(server, OK)
        assert recovered.failures == 0 and recovered.problems == ()
        assert recovered.last_ok_at == recovered.at
        assert site.repo.timestamp().signed.expires > datetime.now(UTC) + timedelta(hours=23)
        assert server_status(site)["state"] == OK
        assert 'id="renewal-failing"' not in dashboard(site)

    errors = [e for e in logs if e["event"] == "metadata_renewal_failed"]
    assert errors and {e["log_level"] for e in errors} == {"error"}
    assert {e["role"] for e in errors} == {"image:timestamp"}
    assert all(e["retry_in_s"] <= RETRY_S[1] for e in errors)
    assert any(e["event"] == "metadata_renewal_recovered" for e in logs)
    # The template repository holds every key, as the workstation's does: said at start.
    (warning,) = [
        e for e in logs if e["event"] == "offline_keys_on_server" and "director" not in e["repo"]
    ]
    assert set(warning["keys"]) == {"root-1", "root-2", "root-3", "targets-1"}


def test_an_unreadable_timestamp_while_running_is_shown_until_fixed(fast_site: Site) -> None:
    site = fast_site
    timestamp = site.repo.metadata_dir / "timestamp.json"
    saved = timestamp.read_bytes()
    timestamp.unlink()
    timestamp.mkdir()  # an OSError, no GpuwardError: it once ended re-signing
    failed = pass_with(site.server, FAILED)
    assert "IsADirectoryError" in failed.problems[0].reason
    again = next_pass(site.server)
    assert again.outcome == FAILED and again.failures == failed.failures + 1
    assert server_status(site)["signers"][0]["failures"] >= again.failures

    timestamp.rmdir()
    timestamp.write_bytes(saved)
    assert pass_with(site.server, OK).problems == ()
    assert server_status(site)["state"] == OK


def test_the_status_needs_a_viewer_token(site: Site) -> None:
    assert operator_get(site.url, "/v1/server/status", None).status == 401


def test_a_stopped_server_leaves_no_status_and_a_silent_one_is_overdue(site: Site) -> None:
    status = server_status(site)["signers"][0]
    assert status["outcome"] == OK and status["overdue"] is False
    assert status["repo"] == str(site.repo.root.resolve())
    record = RenewalStatus.from_dict({k: v for k, v in status.items() if k != "overdue"})
    assert record.overdue(record.next_try_at + 300 + OVERDUE_AFTER_S, interval_s=300) is False
    assert record.overdue(record.next_try_at + 301 + OVERDUE_AFTER_S, interval_s=300) is True

    site.server.stop()
    assert asyncio.run(_renewals(site.server.config.db)) == []


async def _renewals(db: str) -> list[str]:
    store = await open_store(db)
    try:
        return await store.renewals()
    finally:
        await store.close()


def test_retries_back_off_to_a_bound() -> None:
    config = ServerConfig(repo=Path("r"), db="d")
    delays = [next_delay(n, config) for n in range(8)]
    assert delays == [300.0, 10.0, 20.0, 40.0, 80.0, 120.0, 120.0, 120.0]
    assert next_delay(10_000, config) == 120.0


def test_the_store_keeps_one_record_per_signer(db_url: str) -> None:
    async def run() -> tuple[list[str], list[str]]:
        store = await open_store(db_url)
        try:
            await store.keep_renewal("host-a:/repo", '{"n": 1}')
            await store.keep_renewal("host-b:/repo", '{"n": 2}')
            await store.keep_renewal("host-a:/repo", '{"n": 3}')
            kept = await store.renewals()
            await store.forget_renewal("host-a:/repo")
            return kept, await store.renewals()
        finally:
            await store.close()

    assert asyncio.run(run()) == (['{"n": 3}', '{"n": 2}'], ['{"n": 2}'])
