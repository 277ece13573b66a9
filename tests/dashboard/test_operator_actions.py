"""Steering a rollout from the dashboard: an operator in real headless chromium
pauses and resumes it; a viewer sees no buttons and is refused; a forged POST
(no form token, another session's, another site's) changes nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from server.operators import form_token
from tests.conftest import Fleet, make_site
from tests.dashboard.devtools import browser
from tests.simnode import FakeClock, dashboard_sign_in, operator_get, operator_post

NO_REDIRECT = urllib3.PoolManager(
    retries=urllib3.Retry(total=0, redirect=0, raise_on_redirect=False)
)


@pytest.fixture
def steered(_template_repo: Path, tmp_path: Path) -> Iterator[tuple[Fleet, str]]:
    """A running rollout, r-web, of four nodes; and an operator token named alice."""
    clock = FakeClock()
    for site in make_site(_template_repo, tmp_path, str(tmp_path / "s.db"), clock):
        fleet = Fleet(site, clock)
        old, new = site.publish("580.65.06"), site.publish("580.82.07")
        for i in range(4):
            fleet.node(f"gpu-{i}", pool="prod").report(bundle=old.target_path, driver="580.65.06")
        alice = site.server.issue_token("operator", "alice")
        rollout = {"id": "r-web", "pool": "prod", "target": new.target_path}
        started = operator_post(site.url, "/v1/rollouts", alice, rollout)
        assert started.status == 201 and json.loads(started.data)["phase"] == "running"
        yield fleet, alice


def _rollout(fleet: Fleet, token: str) -> dict[str, object]:
    found = operator_get(fleet.url, "/v1/rollouts/r-web", token)
    assert found.status == 200
    doc: dict[str, object] = json.loads(found.data)
    return doc


def _post(
    fleet: Fleet, path: str, cookie: str, fields: dict[str, str], origin: str | None = "self"
) -> urllib3.BaseHTTPResponse:
    headers = {"Cookie": cookie}
    if origin is not None:
        headers["Origin"] = fleet.url if origin == "self" else origin
    return NO_REDIRECT.request_encode_body(
        "POST", fleet.url + path, fields=fields, encode_multipart=False, headers=headers
    )


def _session(cookie: str) -> str:
    return cookie.split("=", 1)[1]


def test_an_operator_pauses_and_resumes_a_rollout_in_chromium(
    steered: tuple[Fleet, str], tmp_path: Path
) -> None:
    fleet, alice = steered

    async def steer() -> tuple[str, str, str]:
        async with browser(tmp_path / "profile", fleet.url) as page:
            await page.open(f"{fleet.url}/login")
            await page.type_into('input[name="token"]', alice)
            await page.click("form[action='/login'] button")
            assert "alice (operator)" in await page.dom()
            await page.open(f"{fleet.url}/rollouts/r-web")
            before = await page.dom()
            assert await page.count("#actions button") == 3  # pause, abort, rollback
            await page.click("#do-pause")
            paused = await page.dom()
            await page.click("#do-resume")
            return before, paused, await page.dom()

    before, paused, resumed = asyncio.run(steer())
    assert 'id="phase">running' in before and 'http-equiv="refresh"' in before
    assert 'id="do-resume"' not in before
    assert 'id="phase">paused' in paused
    assert 'id="do-resume"' in paused and 'id="do-pause"' not in paused
    assert "pause by alice (operator) on the dashboard" in paused  # the audit event
    assert 'id="phase">running' in resumed and 'id="do-pause"' in resumed
    doc = _rollout(fleet, alice)
    assert doc["phase"] == "running"
    events = [e["event"] for e in doc["events"]]  # type: ignore[attr-defined]
    assert events[-2:] == [
        "pause by alice (operator) on the dashboard",
        "resume by alice (operator) on the dashboard",
    ]


def test_a_viewer_sees_no_buttons_and_cannot_steer(
    steered: tuple[Fleet, str], tmp_path: Path
) -> None:
    fleet, alice = steered
    viewer = fleet.site.server.issue_token("viewer", "victor")
    cookie = dashboard_sign_in(fleet.url, viewer)

    async def look() -> tuple[int, int, str]:
        async with browser(tmp_path / "profile", fleet.url, cookie) as page:
            await page.open(f"{fleet.url}/rollouts/r-web")
            forms = await page.count('form[action^="/rollouts/"]')
            return forms, await page.count("button"), await page.dom()

    forms, buttons, dom = asyncio.run(look())
    assert forms == 0 and buttons == 1  # "Sign out" only
    assert 'id="phase">running' in dom and "victor (viewer)" in dom
    # Even with its session's form token (no page showed it one), the POST is refused.
    refused = _post(fleet, "/rollouts/r-web/pause", cookie, {"csrf": form_token(_session(cookie))})
    assert refused.status == 403 and b"needs the operator role" in refused.data
    assert _rollout(fleet, alice)["phase"] == "running"


def test_a_forged_post_is_refused(steered: tuple[Fleet, str]) -> None:
    fleet, alice = steered
    cookie = dashboard_sign_in(fleet.url, alice)
    token = form_token(_session(cookie))
    another = form_token(_session(dashboard_sign_in(fleet.url, alice)))
    for fields, origin in (
        ({}, "self"),  # no form token: what a forged form from anywhere sends
        ({"csrf": ""}, "self"),
        ({"csrf": another}, "self"),  # another session's token
        ({"csrf": token.upper()}, "self"),
        ({"csrf": token}, "https://evil.example"),  # from another site
        ({"csrf": token}, "null"),  # a sandboxed frame or a file:// page
    ):
        refused = _post(fleet, "/rollouts/r-web/pause", cookie, fields, origin)
        assert refused.status == 403, (fields, origin)
    # No Origin (an older browser): Fetch Metadata says where the form came from.
    refused = NO_REDIRECT.request_encode_body(
        "POST", f"{fleet.url}/rollouts/r-web/pause", fields={"csrf": token},
        encode_multipart=False, headers={"Cookie": cookie, "Sec-Fetch-Site": "cross-site"},
    )  # fmt: skip
    assert refused.status == 403
    # Without a session at all, off to sign in.
    anonymous = _post(fleet, "/rollouts/r-web/pause", "", {"csrf": token})
    assert anonymous.status == 303 and anonymous.headers["Location"] == "/login"
    doc = _rollout(fleet, alice)
    assert doc["phase"] == "running"
    assert not any("pause" in e["event"] for e in doc["events"])  # type: ignore[attr-defined]

    # The session's own token, from this site: done, and the overview shows it at once.
    overview = NO_REDIRECT.request("GET", f"{fleet.url}/", headers={"Cookie": cookie}).data
    assert b'<span class="running">running</span>' in overview
    done = _post(fleet, "/rollouts/r-web/pause", cookie, {"csrf": token})
    assert done.status == 303 and done.headers["Location"] == "/rollouts/r-web"
    assert _rollout(fleet, alice)["phase"] == "paused"
    overview = NO_REDIRECT.request("GET", f"{fleet.url}/", headers={"Cookie": cookie}).data
    assert b'<span class="paused">paused</span>' in overview
    # What the phase does not allow, an unknown command or rollout: refused, nothing done.
    for path, status in (
        ("/rollouts/r-web/pause", 409),
        ("/rollouts/r-web/explode", 409),
        ("/rollouts/r-nope/resume", 404),
    ):
        answer = _post(fleet, path, cookie, {"csrf": token})
        assert answer.status == status, path
        assert b'id="refused"' in answer.data
    assert _rollout(fleet, alice)["phase"] == "paused"
