"""Rollouts end to end: simulated nodes follow their assignments over the real API.

Each simulated node reads its own assignment (signed), "installs" it, and
reports the outcome; the engine is advanced by the test on a fake clock, so
soak times pass without sleeping. Runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from keys.image_repo import PublishedBundle
from tests.conftest import Fleet
from tests.simnode import SimNode, operator_get, operator_post

POOL_SIZE = 20


class Host:
    """A simulated host: runs a bundle, moves to its assignment, may fail the new driver."""

    def __init__(self, node: SimNode, running: PublishedBundle, bad: str | None) -> None:
        self.node = node
        self.running = running
        self.bad = bad  # target path whose driver fails health here

    def report(self, update: str = "up-to-date") -> None:
        response = self.node.report(
            bundle=self.running.target_path,
            driver=self.running.manifest.driver_version,
            update=update,
        )
        assert response.status == 202, response.data

    def follow(self, bundles: dict[str, PublishedBundle]) -> None:
        response = self.node.assignment()
        assert response.status == 200
        target = json.loads(response.data)["target"]
        if target is None or target == self.running.target_path:
            self.report()
        elif target == self.bad:
            self.report("rolled-back")  # installed, failed its health gate, switched back
        else:
            self.running = bundles[target]
            self.report("committed")


def _setup(fleet: Fleet, bad: bool) -> tuple[list[Host], PublishedBundle, PublishedBundle, str]:
    old, new = fleet.site.publish("580.65.06"), fleet.site.publish("580.82.07")
    hosts = [
        Host(fleet.node(f"gpu-{i:02}", pool="prod"), old, new.target_path if bad else None)
        for i in range(POOL_SIZE)
    ]
    fleet.node("dev-1", pool="dev")  # another pool: never touched
    for host in hosts:
        host.report()
    return hosts, old, new, fleet.token("operator")


def _rollout(fleet: Fleet, token: str, rollout_id: str) -> dict[str, Any]:
    response = operator_get(fleet.url, f"/v1/rollouts/{rollout_id}", token)
    assert response.status == 200
    doc: dict[str, Any] = json.loads(response.data)
    return doc


def _round(fleet: Fleet, hosts: list[Host], bundles: dict[str, PublishedBundle]) -> None:
    fleet.clock.advance(100)
    for host in hosts:
        host.follow(bundles)
    fleet.site.server.tick_rollouts()


def test_a_good_bundle_reaches_every_node_wave_by_wave(fleet: Fleet) -> None:
    hosts, old, new, token = _setup(fleet, bad=False)
    bundles = {b.target_path: b for b in (old, new)}
    started = operator_post(
        fleet.url,
        "/v1/rollouts",
        token,
        {
            "id": "r-good",
            "pool": "prod",
            "target": new.target_path,
            "policy": {"waves": "1,5%,25%,100%", "max_unavailable": 5, "soak_s": 300},
        },
    )
    assert started.status == 201, started.data
    assert [w["nodes"] for w in json.loads(started.data)["waves"]] == [1, 4, 15]

    waves_seen = []
    for _ in range(60):
        doc = _rollout(fleet, token, "r-good")
        waves_seen.append(doc["wave"])
        if doc["phase"] == "completed":
            break
        # At most max_unavailable nodes of the wave are ever in flight.
        assert all(w["assigned"] <= 5 for w in doc["waves"])
        _round(fleet, hosts, bundles)
    assert doc["phase"] == "completed", doc
    assert sorted(set(waves_seen)) == [0, 1, 2, 3]
    # Each wave soaked for its 300 s: the canary alone for at least 3 rounds of 100 s.
    assert waves_seen.count(0) >= 3
    assert all(h.running == new for h in hosts)
    events = [e["event"] for e in doc["events"]]
    assert "wave 1 started" in events and "completed" in events
    fleet_doc = json.loads(operator_get(fleet.url, "/v1/fleet", token).data)
    assigned = {n["node_id"]: n["assigned"] for n in fleet_doc["nodes"]}
    assert assigned.pop("dev-1") is None
    assert set(assigned.values()) == {new.target_path}


def test_a_bad_bundle_halts_in_the_canary_and_rolls_back(fleet: Fleet) -> None:
    hosts, old, new, token = _setup(fleet, bad=True)
    bundles = {b.target_path: b for b in (old, new)}
    started = operator_post(
        fleet.url,
        "/v1/rollouts",
        token,
        {"id": "r-bad", "pool": "prod", "target": new.target_path},
    )
    assert started.status == 201, started.data
    for _ in range(3):
        _round(fleet, hosts, bundles)
    doc = _rollout(fleet, token, "r-bad")
    assert doc["phase"] == "halted"
    assert "wave 0" in doc["reason"]
    touched = [n["node_id"] for n in doc["nodes"] if n["progress"] != "pending"]
    assert len(touched) == 1  # only the canary was ever assigned the bad bundle
    for host in hosts:
        target = json.loads(host.node.assignment().data)["target"]
        assert target == (new.target_path if host.node.node_id in touched else None)

    # More rounds change nothing: a halted rollout assigns nothing new.
    _round(fleet, hosts, bundles)
    assert _rollout(fleet, token, "r-bad")["nodes"] == doc["nodes"]

    env = {**os.environ, "GPUWARD_TOKEN": token}
    result = subprocess.run(
        [sys.executable, "-m", "gpuward", "rollout", "rollback", "r-bad",
         "--server", fleet.url, "--json"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["phase"] == "rolled-back"
    canary = next(h for h in hosts if h.node.node_id == touched[0])
    assignment = json.loads(canary.node.assignment().data)
    assert assignment["target"] == old.target_path  # re-targeted at its previous bundle


def test_operator_commands_through_the_cli(fleet: Fleet) -> None:
    _hosts, _old, new, token = _setup(fleet, bad=False)
    env = {**os.environ, "GPUWARD_TOKEN": token}

    def gpuward(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gpuward", "rollout", *args, "--server", fleet.url, "--json"],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip

    started = gpuward("start", "--pool", "prod", "--target", new.target_path, "--id", "r-cli")
    assert started.returncode == 0, started.stderr
    assert json.loads(gpuward("pause", "r-cli").stdout)["phase"] == "paused"
    again = gpuward("pause", "r-cli")
    assert again.returncode == 1 and "cannot pause" in again.stderr
    assert json.loads(gpuward("resume", "r-cli").stdout)["phase"] == "running"
    clash = gpuward("start", "--pool", "prod", "--target", new.target_path)
    assert clash.returncode == 1 and "already exists" in clash.stderr
    assert json.loads(gpuward("abort", "r-cli").stdout)["phase"] == "aborted"
    listed = json.loads(gpuward("status").stdout)
    assert [(r["id"], r["phase"]) for r in listed] == [("r-cli", "aborted")]
    missing = gpuward("status", "nope")
    assert missing.returncode == 1 and "no rollout" in missing.stderr


def test_a_silent_node_halts_the_rollout_at_its_progress_deadline(fleet: Fleet) -> None:
    """A node that never reports after its assignment: the rollout does not wait for
    it as "running" forever, but halts at the deadline, its events naming the node."""
    hosts, old, new, token = _setup(fleet, bad=False)
    bundles = {b.target_path: b for b in (old, new)}
    silent, following = hosts[0], hosts[1:]
    result = subprocess.run(
        [sys.executable, "-m", "gpuward", "rollout", "start", "--pool", "prod",
         "--target", new.target_path, "--waves", "100%", "--max-unavailable", "20",
         "--progress-deadline", "600", "--id", "r-silent", "--server", fleet.url, "--json"],
        capture_output=True, text=True, env={**os.environ, "GPUWARD_TOKEN": token},
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["policy"]["progress_deadline_s"] == 600
    assigned_at = int(fleet.clock())

    for _ in range(5):  # 500 s: every node but the silent one is done
        _round(fleet, following, bundles)
    doc = _rollout(fleet, token, "r-silent")
    assert doc["phase"] == "running"
    assert (doc["waves"][0]["assigned"], doc["waves"][0]["done"]) == (1, POOL_SIZE - 1)

    _round(fleet, following, bundles)  # 600 s after the assignment
    doc = _rollout(fleet, token, "r-silent")
    assert doc["phase"] == "halted", doc
    assert f"missed the progress deadline: {silent.node.node_id}" in doc["reason"]
    node = next(n for n in doc["nodes"] if n["node_id"] == silent.node.node_id)
    assert (node["progress"], node["missed_deadline_at"]) == ("failed", assigned_at + 600)
    missed = [e for e in doc["events"] if "missed its progress deadline" in e["event"]]
    assert [(e["at"], e["event"].split(" ")[0]) for e in missed] == [
        (assigned_at + 600, silent.node.node_id)
    ]
