"""``gpuward nodes``: list and show the enrolled nodes, and remove one so it can enroll again."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.conftest import Site


def _token_file(site: Site, tmp_path: Path, role: str) -> str:
    path = tmp_path / f"{role}.token"
    path.write_text(site.server.issue_token(role))
    return str(path)


def _nodes(site: Site, token_file: str, *args: str) -> tuple[int, str, str]:
    done = gpuward("nodes", *args, "--server", site.url, "--token-file", token_file)
    return done.returncode, done.stdout, done.stderr


def test_list_and_show_a_node_and_its_reports(site: Site, tmp_path: Path) -> None:
    config = str(site.agent_toml(tmp_path))
    site.publish("580.95.05")
    assert gpuward("agent", "enroll", "--config", config).returncode == 0
    assert gpuward("agent", "run", "--once", "--config", config).returncode == 0
    viewer = _token_file(site, tmp_path, "viewer")

    status, out, err = _nodes(site, viewer, "list", "--json")
    assert status == 0, err
    [node] = json.loads(out)
    assert (node["node_id"], node["pool"], node["state"]) == ("n1", "default", "healthy")
    status, out, err = _nodes(site, viewer, "list")
    assert status == 0, err
    header, row = out.splitlines()
    assert header.split()[:3] == ["NODE", "POOL", "STATE"]
    assert row.split()[:5] == ["n1", "default", "healthy", "unattested", "580.95.05"]
    status, out, _ = _nodes(site, viewer, "list", "--pool", "other")
    assert (status, out.strip()) == (0, "no enrolled nodes")

    status, out, err = _nodes(site, viewer, "show", "n1", "--json")
    assert status == 0, err
    shown = json.loads(out)
    assert shown["node_id"] == "n1"
    assert [h["report"]["update"] for h in shown["history"]] == ["committed"]
    status, out, err = _nodes(site, viewer, "show", "n1")
    assert status == 0, err
    assert out.startswith("n1: healthy, pool default, unattested\n")
    assert "last update: committed" in out and "8/8" in out  # the simulated host: 8 GPUs


def test_show_an_unknown_node(site: Site, tmp_path: Path) -> None:
    done = gpuward(
        "nodes", "show", "nope", "--server", site.url,
        "--token-file", _token_file(site, tmp_path, "viewer"),
    )  # fmt: skip
    assert_one_line_error(done, "no enrolled node 'nope'")


def test_a_node_that_lost_its_key_enrolls_again_once_an_admin_removes_it(
    site: Site, tmp_path: Path
) -> None:
    config = str(site.agent_toml(tmp_path))
    assert gpuward("agent", "enroll", "--config", config).returncode == 0
    key = tmp_path / "host/var/lib/gpuward/node.key"
    first_key = key.read_bytes()
    key.unlink()  # reinstalled, or its key removed: a new key for the same node id

    refused = gpuward("agent", "enroll", "--config", config)
    assert_one_line_error(refused, "enrolled with another key", "gpuward nodes remove n1")

    for role in ("viewer", "operator"):
        status, _, err = _nodes(site, _token_file(site, tmp_path, role), "remove", "n1")
        assert status == 1
        assert err.strip() == (
            f"gpuward: error: DELETE /v1/nodes/n1: this needs the admin role; the token has {role}"
        )
    assert "n1" in site.fleet()

    status, out, err = _nodes(site, _token_file(site, tmp_path, "admin"), "remove", "n1", "--json")
    assert status == 0, err
    assert json.loads(out) == {"removed": "n1", "reports_deleted": 0, "ek_released": None}
    assert "n1" not in site.fleet()

    enrolled = gpuward("agent", "enroll", "--config", config, "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    assert json.loads(enrolled.stdout)["node_id"] == "n1"
    assert key.read_bytes() != first_key
    assert "n1" in site.fleet()


def test_removing_an_unknown_node(site: Site, tmp_path: Path) -> None:
    status, _, err = _nodes(site, _token_file(site, tmp_path, "admin"), "remove", "nope")
    assert status == 1
    assert err.strip() == "gpuward: error: DELETE /v1/nodes/nope: no enrolled node 'nope'"
