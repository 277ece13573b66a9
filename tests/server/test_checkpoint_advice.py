"""Checkpoint advice from the server: interruptions counted in the reports nodes
sent, per pool, on each store backend; and the CLI's offline mode."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

from fleet.gpu import XidEvent
from fleet.report import NodeHealth
from tests.conftest import Fleet
from tests.simnode import SimNode, operator_get, report_doc

HOUR_S = 3600


def send(fleet: Fleet, node: SimNode, status: str = "healthy", xids: tuple[int, ...] = ()) -> None:
    events = tuple(XidEvent(fleet.clock(), 0, "GPU-1", xid) for xid in xids)
    doc = {**report_doc(node.node_id), "health": NodeHealth(status, (), (), events).to_dict()}
    response = node.send("POST", "/v1/reports", json.dumps(doc).encode())
    assert response.status == 202, response.data


def advice(fleet: Fleet, token: str, query: str) -> tuple[int, Any]:
    response = operator_get(fleet.url, f"/v1/fleet/checkpoint-advice?{query}", token)
    return response.status, json.loads(response.data)


def test_a_pools_interruptions_give_its_advice(fleet: Fleet) -> None:
    prod = [fleet.node(f"prod-{i}", pool="prod") for i in range(2)]
    dev = fleet.node("dev-0", pool="dev")
    viewer = fleet.token("viewer")
    for node in [*prod, dev]:
        send(fleet, node)
    fleet.clock.advance(2 * HOUR_S)
    send(fleet, prod[0], "failed", (79,))  # fell off the bus: an interruption
    send(fleet, prod[1], "healthy", (13,))  # the application's own fault: not one
    send(fleet, dev, "failed", (48,))
    fleet.clock.advance(2 * HOUR_S)
    for node in [*prod, dev]:
        send(fleet, node)

    status, doc = advice(fleet, viewer, "pool=prod&gpus=8&checkpoint_cost=60")
    assert status == 200, doc
    # Two nodes of one GPU each, watched for four hours: 8 GPU-hours, one interruption.
    assert (doc["pool"], doc["interruptions"], doc["gpu_hours"]) == ("prod", 1, 8.0)
    mtbf = 8.0 * HOUR_S / 8
    assert doc["job_mtbf_s"] == mtbf
    assert math.isclose(doc["young_interval_s"], math.sqrt(2 * 60 * mtbf))

    status, doc = advice(fleet, viewer, "gpus=1&checkpoint_cost=60")
    assert (status, doc["pool"], doc["interruptions"], doc["gpu_hours"]) == (200, None, 2, 12.0)


def test_bad_queries_are_refused(fleet: Fleet) -> None:
    fleet.node("prod-0", pool="prod")
    viewer = fleet.token("viewer")
    for query, status in [
        ("gpus=0&checkpoint_cost=60", 400),
        ("gpus=8&checkpoint_cost=nan", 400),
        ("gpus=8", 400),
        ("gpus=%C2%B2&checkpoint_cost=60", 400),  # "²": a digit to str.isdigit, not to int()
        (f"gpus={'9' * 5000}&checkpoint_cost=60", 400),  # more digits than int() reads
        ("pool=nowhere&gpus=8&checkpoint_cost=60", 404),
    ]:
        assert advice(fleet, viewer, query)[0] == status, query
    assert operator_get(fleet.url, "/v1/fleet/checkpoint-advice?gpus=8", None).status == 401


def test_cli_computes_offline_from_given_counts() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpuward",
            "fleet",
            "checkpoint-advice",
            "--gpus=16384",
            "--checkpoint-cost=300",
            "--interruptions=466",
            f"--gpu-hours={16384 * 54 * 24}",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "", "GPUWARD_SERVER": "http://127.0.0.1:9"},  # unreachable: unused
    )
    doc = json.loads(result.stdout)
    assert math.isclose(doc["job_mtbf_s"], 54 * 86_400 / 466)
    assert doc["daly_interval_s"] < doc["young_interval_s"]
