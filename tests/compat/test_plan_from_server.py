"""``gpuward compat plan`` on the server's fleet: each enrolled node judged by the
inventory its agent reported, read from ``GET /v1/fleet`` or a saved copy of it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.conftest import GPU_NAME, Site
from tests.simnode import SimNode


def test_plan_from_the_servers_fleet_view(site: Site, tmp_path: Path) -> None:
    published = site.publish("580.95.05")
    config = site.agent_toml(tmp_path)
    assert gpuward("agent", "enroll", "--config", str(config)).returncode == 0
    assert gpuward("agent", "run", "--once", "--config", str(config)).returncode == 0
    assert SimNode(site.url, "silent").enroll().status == 201  # enrolled, never reported
    inventory = site.fleet()["n1"]["report"]["inventory"]
    assert (inventory["kernel"], inventory["gpus"][0]["model"]) == (os.uname().release, GPU_NAME)

    token = tmp_path / "viewer.token"
    token.write_text(site.server.issue_token("viewer"))
    plan = ("compat", "plan", "--repo", str(site.repo.root), "--token-file", str(token))
    done = gpuward(*plan, "--from-server", site.url, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    [node] = doc["nodes"]
    assert node["node_id"] == "n1"
    [fit] = node["branches"]
    assert (fit["branch"], fit["driver_version"]) == ("R580", published.manifest.driver_version)
    assert doc["without_inventory"] == ["silent"]
    # The driver its latest report names has advisories open; the only published
    # bundle is that same driver, so nothing closes them yet.
    assert node["advisories"]["driver_version"] == "580.95.05"
    assert node["advisory_fix"] == {
        "branch": "R580", "open": 13, "worst": "high", "needed": "580.159.03", "bundle": None,
        "nearest_branch": None, "nearest": None,
    }  # fmt: skip

    human = gpuward(*plan, "--from-server", site.url)
    assert human.returncode == 0, human.stderr
    assert "13 open (high): needs 580.159.03, no published R580 bundle" in human.stdout
    assert "not planned, no inventory reported yet: 1 node(s) (silent)" in human.stdout

    # The same view saved to a file plans the same.
    viewer = gpuward("nodes", "list", "--json", "--server", site.url, "--token-file", str(token))
    saved = tmp_path / "fleet.json"
    saved.write_text(json.dumps({"nodes": json.loads(viewer.stdout)}))
    offline = gpuward("compat", "plan", "--repo", str(site.repo.root), "--fleet", str(saved))
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout == human.stdout


def test_plan_from_a_server_whose_nodes_never_reported(site: Site, tmp_path: Path) -> None:
    site.publish("580.95.05")
    assert SimNode(site.url, "silent").enroll().status == 201
    token = tmp_path / "viewer.token"
    token.write_text(site.server.issue_token("viewer"))
    done = gpuward(
        "compat", "plan", "--repo", str(site.repo.root), "--from-server", site.url,
        "--token-file", str(token),
    )  # fmt: skip
    assert_one_line_error(done, f"{site.url}/v1/fleet: no node to plan", "reported an inventory")
