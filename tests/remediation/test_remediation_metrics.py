"""Remediation as Prometheus sees it: the server's ``GET /metrics`` while it drains
nodes of a real Slurm cluster, holds one back by the budget, waits for an
operator's approval, and is refused by the controller.

The values are what the alerting rules (packaging/prometheus/gpuward-rules.yml)
read: a node awaiting approval since when, nodes held back, nodes whose step keeps
failing; and every audit entry counted by event and action.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.remediation import AuditEvent, RemediationPolicy, Stage
from tests.metrics.exposition import Exposition, check_metrics
from tests.remediation.conftest import HOLD_DOWN_S, Remediated, remediated_site
from tests.remediation.slurm_cluster import SCONTROL, SlurmCluster
from tests.simnode import operator_get, operator_post

BUDGET_OF_ONE = RemediationPolicy(budget=1, failure_domain=None, hold_down_s=HOLD_DOWN_S)
# The policy's actions: drain, and service for a node that fails again soon after.
ACTIONS = ("drain", "service")
EVENTS = "gpuward_remediation_events_total"


def scrape(prod: Remediated) -> Exposition:
    response = operator_get(prod.url, "/metrics", prod.token("viewer"))
    assert response.status == 200, response.data
    return Exposition(response.data.decode())


def events(shown: Exposition) -> dict[tuple[str, str], float]:
    """prod's audit entries counted by (event, action), those counted at all."""
    counted = {}
    for labels, value in shown.matching(EVENTS, pool="prod").items():
        named = dict(labels)
        if value:
            counted[(named["event"], named["action"])] = value
    return counted


def on_board(prod: Remediated, node_id: str) -> dict[str, object]:
    response = operator_get(prod.url, "/v1/remediation", prod.token("viewer"))
    assert response.status == 200, response.data
    (board,) = json.loads(response.data)["boards"]
    (node,) = [n for n in board["nodes"] if n["node_id"] == node_id]
    return dict(node)


@pytest.fixture
def prod(_template_repo: Path, tmp_path: Path, slurm: SlurmCluster) -> Iterator[Remediated]:
    yield from remediated_site(_template_repo, tmp_path, slurm, BUDGET_OF_ONE)


def test_a_drain_and_a_node_held_back_by_the_budget(prod: Remediated) -> None:
    prod.healthy()
    prod.tick()
    shown = scrape(prod)
    # Every series of the pool is there before anything happens, at 0.
    per_stage = shown.matching("gpuward_remediation_nodes", pool="prod")
    assert len(per_stage) == len(Stage) * len(ACTIONS) and set(per_stage.values()) == {0}
    every_event = shown.matching(EVENTS, pool="prod")
    assert len(every_event) == (len(AuditEvent) - 1) * len(ACTIONS)  # notified: notify's
    assert set(every_event.values()) == {0}
    assert shown.value("gpuward_remediation_held_nodes", pool="prod") == 0
    assert shown.value("gpuward_remediation_step_failures", pool="prod") == 0
    assert shown.matching("gpuward_remediation_oldest_decision_timestamp_seconds") == {}

    prod.xid("gpu-a01", 79)
    decided_at = int(prod.clock())
    prod.tick()
    assert prod.slurm.state("gpu-a01").state == "drained"
    shown = scrape(prod)
    nodes = "gpuward_remediation_nodes"
    assert shown.value(nodes, pool="prod", stage="drained", action="drain") == 1
    assert sum(shown.matching(nodes, pool="prod").values()) == 1
    oldest = "gpuward_remediation_oldest_decision_timestamp_seconds"
    assert shown.value(oldest, pool="prod", stage="drained") == decided_at
    assert events(shown) == {("decided", "drain"): 1, ("done", "drain"): 1}

    # A second node fails: the budget of one holds it back, on every tick.
    prod.xid("gpu-b01", 79)
    prod.tick()
    prod.tick()
    assert prod.slurm.state("gpu-b01").state == "idle"
    shown = scrape(prod)
    assert shown.value("gpuward_remediation_held_nodes", pool="prod") == 1
    assert sum(shown.matching(nodes, pool="prod").values()) == 1
    assert events(shown) == {("decided", "drain"): 1, ("done", "drain"): 1, ("held", "drain"): 1}
    # No series appeared that was not there from the start.
    assert shown.matching(EVENTS, pool="prod").keys() == every_event.keys()
    assert shown.value("gpuward_remediation_step_failures", pool="prod") == 0
    check_metrics(shown.text)


def test_a_node_awaiting_approval_shows_since_when(
    _template_repo: Path, tmp_path: Path, slurm: SlurmCluster
) -> None:
    policy = RemediationPolicy(approval=True, failure_domain=None, hold_down_s=HOLD_DOWN_S)
    for prod in remediated_site(_template_repo, tmp_path, slurm, policy):
        prod.healthy()
        prod.xid("gpu-a02", 48)
        waiting_since = int(prod.clock())
        prod.tick()
        prod.clock.advance(16 * 60)  # past the alert's quarter of an hour
        prod.healthy("gpu-a01", "gpu-b01", "gpu-b02")
        prod.xid("gpu-a02", 48)
        prod.tick()
        shown = scrape(prod)
        waiting = {"pool": "prod", "stage": "awaiting-approval"}
        assert shown.value("gpuward_remediation_nodes", action="drain", **waiting) == 1
        oldest = "gpuward_remediation_oldest_decision_timestamp_seconds"
        assert shown.value(oldest, **waiting) == waiting_since
        assert prod.clock() - shown.value(oldest, **waiting) > 15 * 60

        token = prod.token("operator")
        approved = operator_post(prod.url, "/v1/remediation/nodes/gpu-a02/approve", token)
        assert approved.status == 200, approved.data
        shown = scrape(prod)
        assert shown.value("gpuward_remediation_nodes", action="drain", **waiting) == 0
        assert shown.matching(oldest, **waiting) == {}
        assert shown.value(oldest, pool="prod", stage="drained") == waiting_since
        assert events(shown) == {
            ("awaiting-approval", "drain"): 1,
            ("approved", "drain"): 1,
            ("done", "drain"): 1,
        }


def test_a_server_user_slurm_refuses_fails_each_step_visibly(
    _template_repo: Path, tmp_path: Path, slurm: SlurmCluster
) -> None:
    # scontrol run as a user Slurm does not let drain nodes, as by a server whose
    # user was never allowed to: slurmctld answers "Invalid user id". The server
    # drains nothing by other means, and shows the failure in the audit, on the
    # board and to Prometheus.
    unprivileged = ("/usr/sbin/runuser", "-u", "nobody", "--", SCONTROL)
    for prod in remediated_site(
        _template_repo, tmp_path, slurm, BUDGET_OF_ONE, scontrol=unprivileged
    ):
        prod.healthy()
        prod.xid("gpu-b02", 79)
        for _ in range(3):
            prod.tick()  # retried, and refused each time
        assert prod.slurm.state("gpu-b02").state == "idle"
        decided, failed = prod.audit("gpu-b02")
        assert (decided["event"], failed["event"]) == ("decided", "failed")
        assert failed["detail"].startswith("runuser exited 1: slurm_update error: Invalid user id")
        assert "must be allowed to drain Slurm nodes" in failed["detail"]
        node = on_board(prod, "gpu-b02")
        assert (node["stage"], node["attempts"]) == ("acting", 3)
        assert node["last_error"] == failed["detail"]
        shown = scrape(prod)
        assert shown.value("gpuward_remediation_step_failures", pool="prod") == 1
        assert (
            shown.value("gpuward_remediation_nodes", pool="prod", stage="acting", action="drain")
            == 1
        )
        # Audited when it first failed, not on every retry.
        assert events(shown) == {("decided", "drain"): 1, ("failed", "drain"): 1}
