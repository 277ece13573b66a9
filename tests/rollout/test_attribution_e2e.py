"""Attribution end to end: simulated nodes with topology labels report to a real server.

Ten degraded nodes of one rack are the rack's (cooling or power), and a rollout
going on meanwhile is not the cause, so it runs on. Every node that moves to a
new driver turning degraded (slow, yet passing its own health gate) is the
driver's, and the rollout to it halts naming the driver and the evidence. A
real agent sends the labels its config gives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from fleet.topology import Topology
from gpuward.node import run_once
from keys.image_repo import PublishedBundle
from tests.conftest import Fleet, Site
from tests.simnode import SimNode, operator_get, operator_post, report_doc

RACKS, PER_RACK = 4, 10


@dataclass
class Host:
    """A simulated host in a rack: follows its assignment; degraded on ``bad_driver``
    (the new driver slows it), or when its rack is failing (``overheating``)."""

    node: SimNode
    rack: str
    running: PublishedBundle
    bad_driver: str | None = None
    overheating: bool = False

    def report(self, update: str = "up-to-date") -> None:
        driver = self.running.manifest.driver_version
        doc = report_doc(
            self.node.node_id, bundle=self.running.target_path, driver=driver, update=update
        )
        doc["topology"] = {"rack": self.rack, "row": "row-a"}
        if self.overheating or driver == self.bad_driver:
            doc["health"] = {
                "status": "degraded",
                "reasons": ["SM clocks 8% below peers under load (hw_slowdown)"],
                "gpus": [],
                "xids": [],
            }
        response = self.node.send("POST", "/v1/reports", json.dumps(doc).encode())
        assert response.status == 202, response.data

    def follow(self, bundles: dict[str, PublishedBundle]) -> None:
        target = json.loads(self.node.assignment().data)["target"]
        if target is None or target == self.running.target_path:
            self.report()
        else:
            self.running = bundles[target]
            self.report("committed")


def _setup(fleet: Fleet, bad_driver: str | None) -> tuple[list[Host], dict[str, PublishedBundle]]:
    old, new = fleet.site.publish("580.65.06"), fleet.site.publish("580.82.07")
    hosts = [
        Host(fleet.node(f"gpu-{r}{i}", pool="prod"), f"rack-{r}", old, bad_driver)
        for r in range(RACKS)
        for i in range(PER_RACK)
    ]
    for host in hosts:
        host.report()
    return hosts, {b.target_path: b for b in (old, new)}


def _start(fleet: Fleet, token: str, target: str, rollout_id: str) -> None:
    policy = {"waves": "5,100%", "max_unavailable": 5, "soak_s": 300}
    body = {"id": rollout_id, "pool": "prod", "target": target, "policy": policy}
    started = operator_post(fleet.url, "/v1/rollouts", token, body)
    assert started.status == 201, started.data


def _round(fleet: Fleet, hosts: list[Host], bundles: dict[str, PublishedBundle]) -> None:
    fleet.clock.advance(100)
    for host in hosts:
        host.follow(bundles)
    fleet.site.server.tick_rollouts()


def _get(fleet: Fleet, token: str, path: str) -> dict[str, Any]:
    response = operator_get(fleet.url, path, token)
    assert response.status == 200, response.data
    doc: dict[str, Any] = json.loads(response.data)
    return doc


def test_every_node_on_a_new_driver_degraded_halts_its_rollout(fleet: Fleet) -> None:
    new_driver = "580.82.07"
    hosts, bundles = _setup(fleet, bad_driver=new_driver)
    token = fleet.token("operator")
    new = next(b for b in bundles.values() if b.manifest.driver_version == new_driver)
    _start(fleet, token, new.target_path, "r-slow")
    for _ in range(3):
        _round(fleet, hosts, bundles)

    rollout = _get(fleet, token, "/v1/rollouts/r-slow")
    assert rollout["phase"] == "halted", rollout
    assert rollout["reason"].startswith(f"attributed to driver {new_driver}: 5 of the 5 nodes")
    assert "likely the driver version" in rollout["reason"]
    moved = {h.node.node_id for h in hosts if h.running == new}
    assert len(moved) == 5  # the canary wave: the rest of the pool was never assigned
    assert {n["node_id"] for n in rollout["nodes"] if n["progress"] != "pending"} == moved

    found = _get(fleet, fleet.token("viewer"), "/v1/fleet/attribution")
    (cluster,) = found["clusters"]
    assert (cluster["cause"], cluster["label"]) == ("driver", new_driver)
    assert (cluster["nodes"], cluster["degraded"]) == (5, 5)
    assert set(cluster["degraded_nodes"]) == moved
    assert found["nodes"] == RACKS * PER_RACK and found["degraded"] == 5


def test_ten_degraded_nodes_of_one_rack_are_the_rack_and_the_rollout_runs_on(
    fleet: Fleet,
) -> None:
    hosts, bundles = _setup(fleet, bad_driver=None)
    token = fleet.token("operator")
    new = next(b for b in bundles.values() if b.manifest.driver_version == "580.82.07")
    for host in hosts:
        host.overheating = host.rack == "rack-2"
    _start(fleet, token, new.target_path, "r-good")
    for _ in range(3):
        _round(fleet, hosts, bundles)

    found = _get(fleet, fleet.token("viewer"), "/v1/fleet/attribution")
    assert [(c["cause"], c["label"]) for c in found["clusters"]] == [("rack", "rack-2")]
    (rack,) = found["clusters"]
    assert (rack["nodes"], rack["degraded"], rack["share"]) == (PER_RACK, PER_RACK, 1.0)
    assert rack["likely"] == "the rack's cooling or power"
    assert rack["p_value"] < 1e-5 and rack["fleet_rate"] == 0.25
    rollout = _get(fleet, token, "/v1/rollouts/r-good")
    assert rollout["phase"] == "running" and rollout["reason"] == ""


def test_a_real_agent_sends_its_configured_labels(site: Site) -> None:
    site.publish("580.65.06")
    labels = Topology(rack="rack-7", row="row-b", pdu="rack-7-a", nvlink_domain="nvl72-1")
    run_once(replace(site.agent("node-7"), topology=labels))
    report = site.fleet()["node-7"]["report"]
    assert Topology.from_dict(report["topology"]) == labels
