"""Remediation end to end: simulated nodes report to a real server, which drains
and resumes them in a real Slurm cluster (slurmctld, a slurmd per node, munge).

A node whose GPU raises XID 79 is drained, with the reason, by the first tick
after its report (ticks come at least once per report interval); once healthy
for the hold-down it is resumed; a pool budget of one holds a second node back
until the first is resumed; every step is in the audit log with the finding.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.remediation import Action, RemediationPolicy
from fleet.stragglers import WINDOW
from tests.remediation.conftest import (
    HOLD_DOWN_S,
    RACKS,
    REPORT_INTERVAL_S,
    Remediated,
    remediated_site,
)
from tests.remediation.slurm_cluster import SlurmCluster
from tests.server.test_stragglers import health as straggler_health
from tests.simnode import operator_post

BUDGET_OF_ONE = RemediationPolicy(budget=1, failure_domain=None, hold_down_s=HOLD_DOWN_S)


@pytest.fixture
def prod(_template_repo: Path, tmp_path: Path, slurm: SlurmCluster) -> Iterator[Remediated]:
    yield from remediated_site(_template_repo, tmp_path, slurm, BUDGET_OF_ONE)


def test_xid_79_drains_within_a_report_interval_resumes_after_the_hold_down(
    prod: Remediated,
) -> None:
    prod.healthy()
    prod.tick()
    assert set(prod.slurm.states().values()) == {"idle"}
    assert prod.audit() == []

    prod.xid("gpu-a01", 79)
    prod.clock.advance(REPORT_INTERVAL_S - 1)
    prod.tick()
    drained = prod.slurm.state("gpu-a01")
    assert drained.state == "drained"
    assert "XID 79" in drained.reason and "fallen off the bus" in drained.reason
    assert drained.reason.startswith("gpuward drain: GPU 3: XID 79")
    decided, done = prod.audit("gpu-a01")
    assert (decided["event"], done["event"]) == ("decided", "done")
    for entry in (decided, done):
        assert entry["action"] == "drain" and entry["pool"] == "prod"
        assert entry["symptom"]["kind"] == "xid" and entry["symptom"]["xid"] == 79
    assert done["detail"].startswith("drained in Slurm")

    # A second node fails: the budget of one holds it back, once in the log.
    prod.xid("gpu-b01", 79)
    prod.tick()
    prod.tick()
    assert prod.slurm.state("gpu-b01").state == "idle"
    (held,) = prod.audit("gpu-b01")
    assert held["event"] == "held" and "pool budget of 1" in held["detail"]
    assert "gpu-a01" in held["detail"] and held["symptom"]["xid"] == 79

    # gpu-a01 is healthy again; gpu-b01 stays failed.
    failed = {"status": "failed", "reasons": ["GPU 3: lost"], "gpus": [], "xids": []}
    for _ in range(HOLD_DOWN_S // REPORT_INTERVAL_S):
        prod.clock.advance(REPORT_INTERVAL_S)
        prod.healthy("gpu-a01", "gpu-a02", "gpu-b02")
        prod.report("gpu-b01", failed)
        prod.tick()
    assert prod.slurm.state("gpu-a01").state == "drained"  # not yet healthy for the hold-down
    prod.clock.advance(REPORT_INTERVAL_S)
    prod.healthy("gpu-a01")
    prod.tick()
    assert prod.slurm.state("gpu-a01").state == "idle"
    assert prod.events("gpu-a01") == ["decided", "done", "resume-decided", "resumed"]
    # Its place in the budget went to gpu-b01, in the same tick.
    assert prod.slurm.state("gpu-b01").state == "drained"
    assert prod.events("gpu-b01") == ["held", "decided", "done"]
    assert prod.slurm.state("gpu-b01").reason.startswith("gpuward drain: GPU 3: lost")


def test_operator_approval_then_release(
    _template_repo: Path, tmp_path: Path, slurm: SlurmCluster
) -> None:
    policy = RemediationPolicy(approval=True, failure_domain=None, hold_down_s=HOLD_DOWN_S)
    for prod in remediated_site(_template_repo, tmp_path, slurm, policy):
        prod.healthy()
        prod.xid("gpu-a02", 48)  # double-bit ECC error
        prod.tick()
        assert prod.slurm.state("gpu-a02").state == "idle"
        assert prod.events("gpu-a02") == ["awaiting-approval"]

        viewer = operator_post(
            prod.url, "/v1/remediation/nodes/gpu-a02/approve", prod.token("viewer")
        )
        assert viewer.status == 403
        token = prod.token("operator")
        approved = operator_post(prod.url, "/v1/remediation/nodes/gpu-a02/approve", token)
        assert approved.status == 200, approved.data
        assert prod.slurm.state("gpu-a02").state == "drained"
        again = operator_post(prod.url, "/v1/remediation/nodes/gpu-a02/approve", token)
        assert again.status == 409 and b"no action awaits approval" in again.data

        released = operator_post(prod.url, "/v1/remediation/nodes/gpu-a02/release", token)
        assert released.status == 200, released.data
        assert prod.slurm.state("gpu-a02").state == "idle"
        entries = prod.audit("gpu-a02")
        assert [e["event"] for e in entries] == [
            "awaiting-approval",
            "approved",
            "done",
            "released",
            "resumed",
        ]
        assert entries[1]["by"] == entries[3]["by"] == "test (operator)"
        assert all(e["symptom"]["xid"] == 48 for e in entries)


def test_one_node_per_rack_at_a_time(
    _template_repo: Path, tmp_path: Path, slurm: SlurmCluster
) -> None:
    policy = RemediationPolicy(budget=3, failure_domain="rack", hold_down_s=HOLD_DOWN_S)
    for prod in remediated_site(_template_repo, tmp_path, slurm, policy):
        prod.healthy()
        for node in ("gpu-a01", "gpu-a02", "gpu-b02"):
            prod.xid(node, 79)
        prod.tick()
        assert prod.slurm.states() == {
            "gpu-a01": "drained",
            "gpu-a02": "idle",
            "gpu-b01": "idle",
            "gpu-b02": "drained",
        }
        (held,) = prod.audit("gpu-a02")
        assert "gpu-a01 in the same rack (rack-a)" in held["detail"]


def test_a_node_that_fails_again_soon_after_resuming_is_marked_for_service(
    prod: Remediated,
) -> None:
    prod.healthy()
    prod.xid("gpu-b02", 79)
    prod.tick()
    for _ in range(HOLD_DOWN_S // REPORT_INTERVAL_S + 1):
        prod.clock.advance(REPORT_INTERVAL_S)
        prod.healthy()
        prod.tick()
    assert prod.slurm.state("gpu-b02").state == "idle"

    prod.clock.advance(REPORT_INTERVAL_S)
    prod.xid("gpu-b02", 79)
    prod.tick()
    state = prod.slurm.state("gpu-b02")
    assert state.state == "drained" and state.reason.startswith("gpuward service:")
    for _ in range(2 * HOLD_DOWN_S // REPORT_INTERVAL_S):
        prod.clock.advance(REPORT_INTERVAL_S)
        prod.healthy()
        prod.tick()
    assert prod.slurm.state("gpu-b02").state == "drained"  # service waits for an operator
    entries = prod.audit("gpu-b02")
    assert entries[-2]["event"] == "decided" and "marked for service" in entries[-2]["detail"]
    assert entries[-1]["event"] == "done" and entries[-1]["action"] == Action.SERVICE


def test_heartbeat_loss_drains_and_the_return_resumes(prod: Remediated) -> None:
    prod.healthy()
    prod.tick()
    for _ in range(4):  # gpu-a02 falls silent; missing after 3 intervals
        prod.clock.advance(REPORT_INTERVAL_S)
        prod.healthy("gpu-a01", "gpu-b01", "gpu-b02")
        prod.tick()
    state = prod.slurm.state("gpu-a02")
    assert state.state == "drained" and "heartbeat lost" in state.reason
    for _ in range(HOLD_DOWN_S // REPORT_INTERVAL_S + 1):
        prod.clock.advance(REPORT_INTERVAL_S)
        prod.healthy()
        prod.tick()
    assert prod.slurm.state("gpu-a02").state == "idle"
    assert [e["symptom"]["kind"] for e in prod.audit("gpu-a02")] == ["missing"] * 4


def test_a_straggler_the_fleet_ranking_names_is_drained_when_the_policy_says_so(
    _template_repo: Path, tmp_path: Path, slurm: SlurmCluster
) -> None:
    policy = RemediationPolicy(on_straggler=Action.DRAIN, failure_domain=None)
    for prod in remediated_site(_template_repo, tmp_path, slurm, policy):
        for _ in range(WINDOW):
            for i, node_id in enumerate(RACKS):
                slow = {5: 1250} if node_id == "gpu-b02" else {}
                prod.report(node_id, straggler_health(i, 8, slow))
            prod.clock.advance(REPORT_INTERVAL_S)
        prod.tick()
        states = prod.slurm.states()
        assert states.pop("gpu-b02") == "drained"
        assert set(states.values()) == {"idle"}
        reason = prod.slurm.state("gpu-b02").reason
        assert reason.startswith("gpuward drain: gpu-b02 GPU 5: sm_clock_ratio 0.6313")
        (decided, _done) = prod.audit("gpu-b02")
        assert decided["symptom"]["kind"] == "straggler"
