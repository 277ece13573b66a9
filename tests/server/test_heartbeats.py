"""Every report is a heartbeat; a node silent for N intervals is missing."""

from __future__ import annotations

import json

from tests.conftest import Fleet
from tests.simnode import operator_get


def _states(fleet: Fleet, token: str) -> dict[str, str]:
    doc = json.loads(operator_get(fleet.url, "/v1/fleet", token).data)
    return {n["node_id"]: n["state"] for n in doc["nodes"]}


def test_silent_nodes_become_missing_and_come_back(fleet: Fleet) -> None:
    config = fleet.site.server.config
    window = config.report_interval_s * config.missing_after
    token = fleet.token("viewer")
    talker, sick, quiet = fleet.node("gpu-1"), fleet.node("gpu-2"), fleet.node("gpu-3")
    talker.report()
    sick.report(healthy=False)
    assert _states(fleet, token) == {"gpu-1": "healthy", "gpu-2": "unhealthy", "gpu-3": "new"}

    fleet.clock.advance(window)  # exactly N intervals of silence: not missing yet
    talker.report()
    assert _states(fleet, token) == {"gpu-1": "healthy", "gpu-2": "unhealthy", "gpu-3": "new"}

    fleet.clock.advance(1)
    assert _states(fleet, token) == {"gpu-1": "healthy", "gpu-2": "missing", "gpu-3": "missing"}
    doc = json.loads(operator_get(fleet.url, "/v1/fleet", token).data)
    assert doc["summary"]["states"] == {"healthy": 1, "unhealthy": 0, "missing": 2, "new": 0}

    quiet.report()
    assert _states(fleet, token)["gpu-3"] == "healthy"
