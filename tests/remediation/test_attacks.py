"""Remediation under attack, against the real Slurm cluster.

A node holds its own key and writes its own report: whatever text it puts in
its reasons, it can drain only itself, with one safe line of reason; it cannot
get another node drained or resumed; and nodes failing together (or lying
together) drain no more than the pool's budget. (A server whose user Slurm
refuses: tests/remediation/test_remediation_metrics.py, where the failure shows.)
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

from fleet.remediation import Action, RemediationPolicy
from tests.remediation.conftest import HOLD_DOWN_S, RACKS, remediated_site
from tests.remediation.slurm_cluster import SlurmCluster
from tests.simnode import report_doc

DRAIN_DEGRADED = RemediationPolicy(
    on_degraded=Action.DRAIN, budget=1, failure_domain=None, hold_down_s=HOLD_DOWN_S
)
HOSTILE = [
    "x\nNodeName=gpu-b01 State=RESUME",
    "Reason=pwned' \"; $(touch /tmp/gpuward-pwned) `id` | cat /etc/shadow > /tmp/x",
    "\x1b[31mred\x1b[0m \u202eevil \u0000 nul",
    "A" * 512,
]


def test_a_node_drains_only_itself_whatever_its_reasons_say(
    _template_repo: Path, tmp_path: Path, slurm: SlurmCluster
) -> None:
    for prod in remediated_site(_template_repo, tmp_path, slurm, DRAIN_DEGRADED):
        prod.healthy()
        prod.report("gpu-a02", {"status": "degraded", "reasons": HOSTILE, "gpus": [], "xids": []})
        prod.tick()
        states = prod.slurm.states()
        assert states.pop("gpu-a02") == "drained"
        assert set(states.values()) == {"idle"}
        reason = prod.slurm.state("gpu-a02").reason
        assert reason.startswith("gpuward drain: x NodeName gpu-b01 State RESUME")
        assert reason.isprintable() and not set(reason) & set("=\"'`$|<>\x1b")
        assert len(reason) <= 256
        assert not Path("/tmp/gpuward-pwned").exists()
        # The audit log keeps what the node said, as data.
        (decided, _done) = prod.audit("gpu-a02")
        assert decided["symptom"]["summary"].startswith(HOSTILE[0])


def test_a_node_cannot_report_for_another(
    _template_repo: Path, tmp_path: Path, slurm: SlurmCluster
) -> None:
    for prod in remediated_site(_template_repo, tmp_path, slurm, DRAIN_DEGRADED):
        prod.healthy()
        forged = report_doc("gpu-b01")
        forged["health"] = {"status": "failed", "reasons": ["forged"], "gpus": [], "xids": []}
        response = prod.nodes["gpu-a01"].send("POST", "/v1/reports", json.dumps(forged).encode())
        assert response.status == 403, response.data
        prod.tick()
        assert set(prod.slurm.states().values()) == {"idle"}
        assert prod.audit() == []


def test_nodes_failing_or_lying_together_drain_no_more_than_the_budget(
    _template_repo: Path, tmp_path: Path, slurm: SlurmCluster
) -> None:
    policy = RemediationPolicy(budget=2, failure_domain=None, hold_down_s=HOLD_DOWN_S)
    for prod in remediated_site(_template_repo, tmp_path, slurm, policy):
        for node_id in RACKS:
            prod.xid(node_id, 79)
        for _ in range(3):
            prod.tick()
        assert sorted(prod.slurm.states().values()) == ["drained", "drained", "idle", "idle"]
        events = [e["event"] for e in prod.audit()]
        assert events.count("held") == 2 and events.count("done") == 2


def test_reboot_runs_the_operators_hook_after_the_drain(
    _template_repo: Path, tmp_path: Path, slurm: SlurmCluster
) -> None:
    calls = tmp_path / "calls"
    hook = tmp_path / "reboot-node"
    hook.write_text(f'#!/bin/sh\nprintf "%s|" "$@" >> {calls}\necho rebooting "$1"\n')
    hook.chmod(stat.S_IRWXU)
    policy = RemediationPolicy(xid_actions={79: Action.REBOOT}, failure_domain=None)
    for prod in remediated_site(
        _template_repo, tmp_path, slurm, policy, hooks={"reboot": (str(hook),)}
    ):
        prod.healthy()
        prod.xid("gpu-b01", 79)
        prod.tick()
        state = prod.slurm.state("gpu-b01")
        assert state.state == "drained" and state.reason.startswith("gpuward reboot:")
        assert calls.read_text() == f"gpu-b01|reboot|{state.reason}|"
        (_decided, done) = prod.audit("gpu-b01")
        assert done["detail"].endswith("reboot-node ran: rebooting gpu-b01")
