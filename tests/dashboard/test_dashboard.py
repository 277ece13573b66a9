"""The dashboard in real headless Debian chromium against a live server with data,
and its sign-in rules without a browser."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from fleet.remediation import RemediationPolicy
from server.config import RemediationConfig
from tests.conftest import Fleet, Site, make_site
from tests.simnode import FakeClock, SimNode, dashboard_sign_in, operator_post, report_doc

CHROMIUM = shutil.which("chromium")


@pytest.fixture
def populated(_template_repo: Path, tmp_path: Path) -> Iterator[tuple[Fleet, str]]:
    """A fleet with healthy, unhealthy and silent nodes, a halted rollout, and the
    unhealthy node under remediation (scheduler "none": audited, not drained)."""
    clock = FakeClock()
    remediation = RemediationConfig(tick_s=0, pools={"prod": RemediationPolicy()})
    for site in make_site(
        _template_repo, tmp_path, str(tmp_path / "s.db"), clock, remediation=remediation
    ):
        fleet = Fleet(site, clock)
        old, new = site.publish("580.65.06"), site.publish("580.82.07")
        nodes = [fleet.node(f"gpu-{i}", pool="prod") for i in range(6)]
        for node in nodes:
            node.report(bundle=old.target_path, driver="580.65.06")
        nodes[1].report(healthy=False, driver="580.65.06")
        site.server.tick_remediation()
        token = fleet.token("operator")
        started = operator_post(
            site.url,
            "/v1/rollouts",
            token,
            {"id": "r-web", "pool": "prod", "target": new.target_path},
        )
        assert started.status == 201
        canary = next(
            n for n in nodes if json.loads(n.assignment().data)["target"] == new.target_path
        )
        clock.advance(10)
        canary.report(bundle=old.target_path, update="rolled-back", driver="580.65.06")
        site.server.tick_rollouts()
        clock.advance(3 * 300 - 5)  # the nodes that reported first are now missing
        nodes[2].report(bundle=old.target_path, driver="580.65.06")
        nodes[3].report(bundle=old.target_path, driver="580.65.06")
        fleet.node("gpu-new")
        yield fleet, fleet.token("viewer")


def chromium(tmp_path: Path, *args: str) -> str:
    assert CHROMIUM, "chromium is not installed: run 'make setup' (it is in DEB_PACKAGES)"
    profile = tmp_path / "chromium-profile"
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def signed_in_page(fleet: Fleet, cookie: str, path: str, tmp_path: Path) -> str:
    """The page as the signed-in operator's browser receives it, saved for chromium
    to render: headless chromium cannot sign in itself (no script POSTs the form,
    and a URL no longer can), so it is handed what the server sent."""
    page = urllib3.request("GET", fleet.url + path, headers={"Cookie": cookie}, retries=False)
    assert page.status == 200
    saved = tmp_path / (path.strip("/").replace("/", "-") or "fleet")
    saved = saved.with_suffix(".html")
    saved.write_bytes(page.data)
    return saved.as_uri()


def test_pages_render_with_data_in_headless_chromium(
    populated: tuple[Fleet, str], tmp_path: Path
) -> None:
    fleet, viewer = populated
    cookie = dashboard_sign_in(fleet.url, viewer)
    shot = tmp_path / "dashboard.png"
    fleet_page = signed_in_page(fleet, cookie, "/", tmp_path)
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1000", fleet_page)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dom = chromium(tmp_path, "--dump-dom", fleet_page)
    assert "Fleet: 7 nodes" in dom
    assert 'id="count-healthy"><b>2</b>' in dom
    assert 'id="count-missing"><b>4</b>' in dom  # silent for more than 3 intervals
    assert 'id="count-new"><b>1</b>' in dom
    assert 'id="count-unattested"><b>7</b>' in dom
    assert "580.65.06" in dom and 'href="/nodes/gpu-0"' in dom
    assert 'href="/rollouts/r-web"' in dom and '<span class="halted">halted</span>' in dom
    assert 'id="stragglers"' in dom
    assert viewer not in dom and cookie.split("=", 1)[1] not in dom
    # The canary is assigned the new bundle and runs the old one (it rolled back).
    [canary] = [n for n, doc in fleet.site.fleet().items() if doc["assigned"]]
    assert 'id="count-differs"><b>1</b>' in dom
    assert '<span class="differs">(assigned drivers/R580/nvidia-580.82.07.bundle)</span>' in dom
    assert '<meta http-equiv="refresh" content="30">' in dom
    assert 'href="/checkpoints" id="nav-checkpoints"' in dom

    checkpoints = signed_in_page(fleet, cookie, "/checkpoints", tmp_path)
    advice = chromium(tmp_path, "--dump-dom", checkpoints)
    table = advice[advice.index('<table id="checkpoint-advice">') :].split("</table>", 1)[0]
    # Nodes with reports: gpu-new has sent none.
    assert "<td>whole fleet</td><td>6</td><td>0</td>" in table
    assert '<td><a href="/?pool=default">default</a></td><td>0</td><td>0</td>' in table
    assert '<td><a href="/?pool=prod">prod</a></td><td>6</td><td>0</td>' in table
    assert 'name="gpus" value="1024"' in advice and "refresh" not in advice

    node = chromium(tmp_path, "--dump-dom", signed_in_page(fleet, cookie, "/nodes/gpu-1", tmp_path))
    assert "Node gpu-1" in node and 'id="history"' in node
    assert node.count("<tr>") >= 3  # header + two reports
    assert '<span class="unhealthy">no</span>' in node
    gpus = node[node.index('<table id="gpu-table">') :].split("</table>", 1)[0]
    assert "<td>NVIDIA H100</td><td>GPU-1</td><td>580.65.06</td>" in gpus
    assert '<span class="unhealthy">no</span></td><td>XID 79</td>' in gpus
    assert 'id="differs"' not in node
    flagged = chromium(
        tmp_path, "--dump-dom", signed_in_page(fleet, cookie, f"/nodes/{canary}", tmp_path)
    )
    assert 'id="differs"' in flagged

    rollout_page = signed_in_page(fleet, cookie, "/rollouts/r-web", tmp_path)
    rollout = chromium(tmp_path, "--dump-dom", rollout_page)
    assert 'id="phase">halted' in rollout and "wave 0" in rollout
    assert "rolled-back" in rollout  # the canary's verdict in the events
    wave = rollout[rollout.index('<table id="wave-0-nodes">') :].split("</table>", 1)[0]
    assert f'<a href="/nodes/{canary}">{canary}</a></td><td><span class="failed">' in wave
    assert 'id="wave-1-nodes"' in rollout  # the waves not started are listed too
    assert 'id="actions"' not in rollout  # a viewer

    remediation = chromium(
        tmp_path, "--dump-dom", signed_in_page(fleet, cookie, "/remediation", tmp_path)
    )
    assert 'href="/remediation" id="nav-remediation"' in dom
    board = remediation[remediation.index('<table id="remediating">') :].split("</table>", 1)[0]
    assert (
        '<td>prod</td><td><a href="/nodes/gpu-1">gpu-1</a></td><td><span class="drained">'
        "drained</span></td><td>drain</td><td>XID 79</td>"
    ) in board
    audit = remediation[remediation.index('<table id="audit">') :].split("</table>", 1)[0]
    assert audit.index('<span class="done">done') < audit.index('<span class="decided">decided')
    assert "no scheduler configured: not drained (gpuward drain: XID 79)" in audit


def test_sign_in_rules(populated: tuple[Fleet, str]) -> None:
    fleet, viewer = populated
    http = urllib3.PoolManager(retries=urllib3.Retry(total=0, redirect=0, raise_on_redirect=False))
    anonymous = http.request("GET", f"{fleet.url}/")
    assert anonymous.status == 303 and anonymous.headers["Location"] == "/login"

    form = {"token": viewer}
    foreign = http.request_encode_body(
        "POST", f"{fleet.url}/login", fields=form, encode_multipart=False,
        headers={"Origin": "https://evil.example"},
    )  # fmt: skip
    assert foreign.status == 403 and "Set-Cookie" not in foreign.headers
    session = dashboard_sign_in(fleet.url, viewer)
    page = http.request("GET", f"{fleet.url}/", headers={"Cookie": session})
    assert page.status == 200 and "script-src" not in page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    # The JSON API never accepts the dashboard cookie.
    assert http.request("GET", f"{fleet.url}/v1/fleet", headers={"Cookie": session}).status == 401


def test_report_text_is_escaped(site: Site) -> None:
    node = SimNode(site.url, "gpu-x")
    assert node.enroll().status == 201
    body = json.dumps(
        {
            "schema": 1, "node_id": "gpu-x", "sent_at": 1, "active_slot": "a",
            "driver_version": None, "bundle": "<img src=x onerror=alert(1)>",
            "update": "failed", "reason": "<script>alert(1)</script>", "gpus": [],
        }
    ).encode()  # fmt: skip
    assert node.send("POST", "/v1/reports", body).status == 202
    viewer = site.server.issue_token("viewer")
    http = urllib3.PoolManager(retries=urllib3.Retry(total=0, redirect=0, raise_on_redirect=False))
    cookie = dashboard_sign_in(site.url, viewer)
    page = http.request("GET", f"{site.url}/nodes/gpu-x", headers={"Cookie": cookie}).data.decode()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page


def test_the_node_page_shows_each_gpus_sample(site: Site) -> None:
    node = SimNode(site.url, "gpu-s")
    assert node.enroll().status == 201
    doc = report_doc("gpu-s", driver="580.65.06")
    sample = {"index": 0, "uuid": "GPU-1", "name": "NVIDIA H100", "temperature_c": 71,
              "power_mw": 352_500, "sm_clock_mhz": 1980, "gpu_util_pct": 97,
              "ecc_uncorrected_volatile": 0, "pcie_gen": 5, "pcie_width": 16}  # fmt: skip
    finding = {"rule": "thermal", "severity": "warning", "message": "hot <b>GPU</b>"}
    doc["health"] = {"status": "degraded", "reasons": ["hot"], "xids": [],
                     "gpus": [{"sample": sample, "findings": [finding]}]}  # fmt: skip
    assert node.send("POST", "/v1/reports", json.dumps(doc).encode()).status == 202
    http = urllib3.PoolManager(retries=urllib3.Retry(total=0, redirect=0, raise_on_redirect=False))
    cookie = dashboard_sign_in(site.url, site.server.issue_token("viewer"))
    page = http.request("GET", f"{site.url}/nodes/gpu-s", headers={"Cookie": cookie}).data.decode()
    gpus = page[page.index('<table id="gpu-table">') :].split("</table>", 1)[0]
    row = "<td>71 °C</td><td>352.5 W</td><td>1980 MHz</td><td>97 %</td><td>0</td><td>gen 5 x16</td>"
    assert row in gpus
    assert "<td>warning: hot &lt;b&gt;GPU&lt;/b&gt;</td>" in gpus
