"""A node on a driver a bulletin names shows the CVE wherever the node is shown:
the API's node and fleet views, ``gpuward nodes``, the dashboard and the signed
compliance report; all from the real server, judging with the feed of the
catalog it publishes through TUF, which it believes only as its agents do."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import urllib3
from structlog.testing import capture_logs
from tuf.api.metadata import Metadata, TargetFile, Targets

from fleet.catalog import TARGET_PATH
from tests.cli.test_errors import gpuward
from tests.conftest import PASSPHRASE, Site
from tests.simnode import SimNode, dashboard_sign_in, operator_get

JAN_2025 = "https://nvidia.custhelp.com/app/answers/detail/a_id/5614"
MAY_2026 = "https://nvidia.custhelp.com/app/answers/detail/a_id/5821"
SHIPPED: dict[str, Any] = json.loads(
    resources.files("fleet").joinpath("data/catalog.json").read_bytes()
)


@pytest.fixture
def nodes(site: Site) -> Iterator[Site]:
    """A node on Debian's 535.216.03, one on R535's latest fix, one that never reported."""
    for node_id, driver in (("old-535", "535.216.03"), ("fixed-535", "535.309.01")):
        node = SimNode(site.url, node_id)
        assert node.enroll().status == 201
        assert (
            node.report(driver=driver, bundle=f"drivers/R535/nvidia-{driver}.bundle").status == 202
        )
    assert SimNode(site.url, "silent").enroll().status == 201
    yield site


def _get(site: Site, path: str) -> Any:
    response = operator_get(site.url, path, site.server.issue_token("viewer"))
    assert response.status == 200, response.data
    return json.loads(response.data)


def _viewer(site: Site, tmp_path: Path) -> tuple[str, ...]:
    token = tmp_path / "viewer.token"
    token.write_text(site.server.issue_token("viewer"))
    return ("--server", site.url, "--token-file", str(token))


def test_the_cve_shows_in_the_api_the_cli_the_dashboard_and_the_report(
    nodes: Site, tmp_path: Path
) -> None:
    site = nodes
    old = _get(site, "/v1/nodes/old-535")["advisories"]
    by_cve = {a["cve"]: a for a in old["open"]}
    assert by_cve["CVE-2024-0150"]["bulletin"] == JAN_2025
    assert by_cve["CVE-2024-0150"]["fixed"] == "535.230.02"
    assert by_cve["CVE-2024-0150"]["status"] == "affected"
    assert old["open"][0]["cve"] == "CVE-2026-24187" and old["fixed_by"] == "535.309.01"
    assert (old["driver_version"], old["catalog_version"]) == ("535.216.03", 2)
    assert _get(site, "/v1/nodes/fixed-535")["advisories"]["open"] == []
    assert _get(site, "/v1/nodes/silent")["advisories"] is None  # unknown, not clean

    summary = _get(site, "/v1/fleet")["summary"]["advisories"]
    assert (summary["nodes"], summary["exposed"], summary["high"]) == (2, 1, 1)
    first = summary["cves"][0]
    assert (first["cve"], first["nodes"], first["drivers"]) == ("CVE-2026-24187", 1, ["535.216.03"])
    assert first["bulletin"] == MAY_2026

    shown = gpuward("nodes", "show", "old-535", *_viewer(site, tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert "security advisories: 24 open on 535.216.03; 535.309.01 closes them all" in shown.stdout
    assert "CVE-2024-0150" in shown.stdout and JAN_2025 in shown.stdout
    listed = gpuward("nodes", "list", *_viewer(site, tmp_path))
    assert "24 open (high)" in listed.stdout and "none open" in listed.stdout

    http = urllib3.PoolManager(retries=urllib3.Retry(total=0, redirect=0, raise_on_redirect=False))
    cookie = {"Cookie": dashboard_sign_in(site.url, site.server.issue_token("viewer"))}
    page = http.request("GET", f"{site.url}/nodes/old-535", headers=cookie).data.decode()
    section = page[page.index('<section id="advisories">') :].split("</section>", 1)[0]
    assert "535.309.01 is the smallest release of its branch" in section
    assert f'<a href="{JAN_2025}" rel="noreferrer">' in section and "CVE-2024-0150" in section
    overview = http.request("GET", f"{site.url}/", headers=cookie).data.decode()
    cves = overview[overview.index('<table id="advisory-cves">') :].split("</table>", 1)[0]
    assert f'<a href="{MAY_2026}" rel="noreferrer">CVE-2026-24187</a>' in cves
    assert '<a href="/?driver=535.216.03">535.216.03</a>' in cves
    assert "1 of 2 node(s) reporting a driver" in overview
    assert '<span class="unhealthy">24 open (high)</span>' in overview  # in the node list
    silent = http.request("GET", f"{site.url}/nodes/silent", headers=cookie).data.decode()
    assert "No driver reported yet." in silent

    out = tmp_path / "old.json"
    fetched = gpuward("report", "node", "old-535", "-o", str(out), *_viewer(site, tmp_path))
    assert fetched.returncode == 0, fetched.stderr
    [node] = json.loads(out.read_text())["nodes"]
    assert node["advisories"]["status"] == "exposed"
    assert {"cve": "CVE-2024-0150", "severity": "high", "score": 7.1, "status": "affected",
            "fixed": "535.230.02", "bulletin": JAN_2025} in node["advisories"]["open"]  # fmt: skip


def _publish(site: Site, tmp_path: Path, doc: dict[str, Any]) -> None:
    path = tmp_path / f"catalog-{doc['catalog_version']}.json"
    path.write_text(json.dumps(doc))
    site.repo.add_catalog(path, lambda: PASSPHRASE)


def _without_may_2026(version: int) -> dict[str, Any]:
    doc: dict[str, Any] = copy.deepcopy(SHIPPED)
    doc["catalog_version"] = version
    doc["advisories"]["bulletins"] = [
        b for b in doc["advisories"]["bulletins"] if b["id"] != "5821"
    ]
    return doc


def _open_on(site: Site, node_id: str) -> set[str]:
    return {a["cve"] for a in _get(site, f"/v1/nodes/{node_id}")["advisories"]["open"]}


def test_the_server_judges_with_the_feed_it_publishes(site: Site, tmp_path: Path) -> None:
    node = SimNode(site.url, "n")
    assert node.enroll().status == 201
    assert node.report(driver="535.288.01").status == 202
    assert "CVE-2026-24187" in _open_on(site, "n")  # the shipped feed, nothing published

    _publish(site, tmp_path, _without_may_2026(3))  # newer than the shipped one
    assert _open_on(site, "n") == set()
    assert _get(site, "/v1/nodes/n")["advisories"]["catalog_version"] == 3

    older = copy.deepcopy(SHIPPED)
    older["catalog_version"] = 4
    older["advisories"]["bulletins"][-1]["cves"] = older["advisories"]["bulletins"][-1]["cves"][:1]
    _publish(site, tmp_path, older)
    assert _open_on(site, "n") == {"CVE-2026-24187"}


def test_the_feed_reaches_the_node_signed(site: Site, tmp_path: Path) -> None:
    from fleet.catalog import load_catalog
    from gpuward.node import run_once

    _publish(site, tmp_path, _without_may_2026(3))
    site.publish("580.95.05")
    agent = site.agent()
    assert run_once(agent).outcome.update == "committed"
    kept = load_catalog((agent.state_dir / "catalog.json").read_bytes())
    assert kept.catalog_version == 3 and kept.advisories is not None
    assert [b.id for b in kept.advisories.bulletins] == ["5614", "5630", "5670", "5703", "5747"]


def _tamper_file(site: Site, forged: bytes) -> None:
    """Replace the served catalog's bytes, leaving the signed metadata as it is."""
    info = site.repo.targets().signed.targets[TARGET_PATH]
    served = site.repo.targets_dir / "catalog" / f"{info.hashes['sha256']}.catalog.json"
    served.write_bytes(forged)


def _tamper_metadata(site: Site, forged: bytes) -> None:
    """Store the forged catalog and list it in the targets metadata, unsigned by the key
    that must sign it (its old signature no longer covers what it says)."""
    info = TargetFile.from_data(TARGET_PATH, forged, ["sha256"])
    (site.repo.targets_dir / "catalog" / f"{info.hashes['sha256']}.catalog.json").write_bytes(
        forged
    )
    version = site.repo.snapshot().signed.meta["targets.json"].version
    path = site.repo.metadata_dir / f"{version}.targets.json"
    md = Metadata[Targets].from_bytes(path.read_bytes())
    md.signed.targets[TARGET_PATH] = info
    path.write_bytes(md.to_bytes())


@pytest.mark.parametrize("tamper", [_tamper_file, _tamper_metadata])
def test_a_tampered_feed_is_refused_by_the_server_and_by_the_agent(
    site: Site, tmp_path: Path, tamper: Any
) -> None:
    """An attacker with write access to the served files hides the May 2026 CVEs
    from a catalog that claims to be newer; neither the server nor a node believes it."""
    _publish(site, tmp_path, {**SHIPPED, "catalog_version": 3})
    site.publish("580.95.05")  # signed by the operator before the attack
    tamper(site, json.dumps(_without_may_2026(9)).encode())
    node = SimNode(site.url, "n")
    assert node.enroll().status == 201
    assert node.report(driver="535.288.01").status == 202
    why = (
        "LengthOrHashMismatchError" if tamper is _tamper_file else "UnsignedMetadataError: targets"
    )
    with capture_logs() as logs:
        still = _open_on(site, "n")
    assert "CVE-2026-24187" in still  # judged with the shipped feed instead
    [refused] = [e for e in logs if e["event"] == "served_catalog_refused"]
    assert why in refused["reason"] and refused["judged_with"] == 2

    from gpuward.node import run_once

    agent = site.agent()
    outcome = run_once(agent).outcome
    assert outcome.update == "refused", outcome
    assert why in outcome.reason
    assert not (agent.state_dir / "catalog.json").exists()  # no last good catalog from it


def test_feed_text_is_escaped_wherever_it_is_shown(site: Site, tmp_path: Path) -> None:
    """The feed is signed, and still only text: markup in it is shown, never run."""
    markup = "<script>alert(1)</script><img src=x onerror=alert(1)>"
    doc = copy.deepcopy(SHIPPED)
    doc["catalog_version"] = 3
    doc["advisories"]["bulletins"][0]["title"] = markup
    doc["advisories"]["bulletins"][0]["cves"][0]["summary"] = markup
    _publish(site, tmp_path, doc)
    node = SimNode(site.url, "n")
    assert node.enroll().status == 201
    assert node.report(driver="535.216.03").status == 202
    http = urllib3.PoolManager(retries=urllib3.Retry(total=0, redirect=0, raise_on_redirect=False))
    cookie = {"Cookie": dashboard_sign_in(site.url, site.server.issue_token("viewer"))}
    page = http.request("GET", f"{site.url}/nodes/n", headers=cookie).data.decode()
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x" in page
    out = tmp_path / "n.html"
    fetched = gpuward("report", "node", "n", "-o", str(out), *_viewer(site, tmp_path))
    assert fetched.returncode == 0, fetched.stderr
    assert "<script>" not in out.read_text()
