"""``gpuward repo remove``: a bad bundle is withdrawn through TUF. Agents stop seeing
it, a node that never had it does not install it, and a node already running it
is flagged in the fleet view and ``gpuward nodes``."""

from __future__ import annotations

import json
from pathlib import Path

from agent.channel import ImageChannel
from node.config import load_config
from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.conftest import Site


def test_a_withdrawn_bundle_is_no_candidate_and_its_nodes_are_flagged(
    site: Site, tmp_path: Path
) -> None:
    kept = site.publish("580.65.06")
    bad = site.publish("580.95.05")
    for host in ("running", "fresh"):
        (tmp_path / host).mkdir()
    config = site.agent_toml(tmp_path / "running")
    assert gpuward("agent", "enroll", "--config", str(config)).returncode == 0
    ran = gpuward("agent", "run", "--once", "--config", str(config), "--json")
    assert ran.returncode == 0, ran.stderr
    assert site.fleet()["n1"]["report"]["bundle"] == bad.target_path
    assert site.fleet()["n1"]["withdrawn"] is False

    done = gpuward("repo", "remove", bad.target_path, "--repo", str(site.repo.root), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["withdrawn"] == bad.target_path
    assert [b.target_path for b in site.repo.published()] == [kept.target_path]

    # The agent's verified view of the repository no longer offers it.
    channel = ImageChannel(load_config(config))
    channel.refresh()
    assert [c.target_path for c in channel.candidates("R580")] == [kept.target_path]

    # A node that never had it installs the bundle still published instead.
    fresh = site.agent_toml(tmp_path / "fresh")
    fresh.write_text(fresh.read_text().replace('node_id = "n1"', 'node_id = "n2"'))
    assert gpuward("agent", "enroll", "--config", str(fresh)).returncode == 0
    ran = gpuward("agent", "run", "--once", "--config", str(fresh), "--json")
    assert ran.returncode == 0, ran.stderr
    fleet = site.fleet()
    assert fleet["n2"]["report"]["bundle"] == kept.target_path
    assert (fleet["n1"]["withdrawn"], fleet["n2"]["withdrawn"]) == (True, False)

    token = tmp_path / "viewer.token"
    token.write_text(site.server.issue_token("viewer"))
    server = ["--server", site.url, "--token-file", str(token)]
    listed = gpuward("nodes", "list", *server)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert "580.95.05 (withdrawn)" in rows["n1"]
    assert "withdrawn" not in rows["n2"]
    shown = gpuward("nodes", "show", "n1", *server)
    assert f"driver 580.95.05 (withdrawn), bundle {bad.target_path}" in shown.stdout


def test_removing_what_is_not_published(site: Site) -> None:
    site.publish("580.95.05")
    done = gpuward("repo", "remove", "drivers/R580/nope.bundle", "--repo", str(site.repo.root))
    assert_one_line_error(done, "drivers/R580/nope.bundle is not a published bundle", "repo list")
    assert len(site.repo.published()) == 1
