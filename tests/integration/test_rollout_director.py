"""Rollouts steer real agents through the director: waves, a halt, a rollback.

The engine assigns bundles in the store; the server signs them into each node's
director repository; the agents, which trust only what the director and the
image repository agree on, install them and report. No simulated shortcut
between the engine and the slots.
"""

from __future__ import annotations

import json
from typing import Any

from gpuward.node import run_once
from node.config import AgentConfig
from tests.conftest import Site
from tests.simnode import operator_get, operator_post


def _round(site: Site, agents: list[AgentConfig]) -> dict[str, str]:
    outcomes = {a.node_id: run_once(a).outcome.update for a in agents}
    site.server.tick_rollouts()
    return outcomes


def _rollout(site: Site, token: str, rollout_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        operator_get(site.url, f"/v1/rollouts/{rollout_id}", token).data
    )
    return doc


def _start(site: Site, token: str, rollout_id: str, target: str) -> None:
    body = {
        "id": rollout_id,
        "pool": "default",
        "target": target,
        "policy": {"waves": "1,100%", "max_unavailable": 3, "soak_s": 0},
    }
    started = operator_post(site.url, "/v1/rollouts", token, body)
    assert started.status == 201, started.data


def test_a_rollout_reaches_every_agent_through_the_director(site: Site) -> None:
    old = site.publish("580.65.06")
    new = site.publish("580.82.07")
    agents = [site.agent(f"gpu-{i}", directed=True) for i in range(3)]
    assert set(_round(site, agents).values()) == {"up-to-date"}  # nothing assigned yet
    token = site.server.issue_token("operator")

    _start(site, token, "r-old", old.target_path)
    for _ in range(4):
        _round(site, agents)
    assert _rollout(site, token, "r-old")["phase"] == "completed"

    _start(site, token, "r-new", new.target_path)
    for _ in range(4):
        _round(site, agents)
    assert _rollout(site, token, "r-new")["phase"] == "completed"
    for agent in agents:
        assert run_once(agent).report.driver_version == "580.82.07"


def test_a_bad_driver_halts_in_the_canary_and_rollback_restores_it(site: Site) -> None:
    old = site.publish("580.65.06")
    bad = site.publish("580.82.07")
    agents = [
        site.agent(f"gpu-{i}", unhealthy=frozenset({"580.82.07"}), directed=True) for i in range(3)
    ]
    _round(site, agents)
    token = site.server.issue_token("operator")
    _start(site, token, "r-old", old.target_path)
    for _ in range(4):
        _round(site, agents)

    _start(site, token, "r-bad", bad.target_path)
    outcomes = [_round(site, agents) for _ in range(3)]
    doc = _rollout(site, token, "r-bad")
    assert doc["phase"] == "halted", doc
    rolled_back = [n for o in outcomes for n, u in o.items() if u == "rolled-back"]
    assert len(set(rolled_back)) == 1  # only the canary ever tried the bad driver
    assert all(run_once(a).report.driver_version == "580.65.06" for a in agents)

    back = operator_post(site.url, "/v1/rollouts/r-bad/rollback", token)
    assert back.status == 200, back.data
    for _ in range(2):
        _round(site, agents)
    assert all(run_once(a).report.driver_version == "580.65.06" for a in agents)
