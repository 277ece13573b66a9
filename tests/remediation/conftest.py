"""A real Slurm cluster for the module (slow to start), and a server per test
whose remediation drains and resumes its nodes through scontrol."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fleet.remediation import RemediationPolicy
from server.config import RemediationConfig
from tests.conftest import make_site
from tests.remediation.slurm_cluster import SCONTROL, SlurmCluster, slurm_cluster
from tests.simnode import FakeClock, SimNode, operator_get, report_doc

# Two racks of two nodes: gpuward node ids are the Slurm node names.
RACKS = {"gpu-a01": "rack-a", "gpu-a02": "rack-a", "gpu-b01": "rack-b", "gpu-b02": "rack-b"}
REPORT_INTERVAL_S = 60
HOLD_DOWN_S = 600


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    yield from slurm_cluster(sorted(RACKS))


@dataclass
class Remediated:
    """A server on a test clock whose pool "prod" is remediated in ``slurm``."""

    slurm: SlurmCluster
    clock: FakeClock
    url: str
    tick: Any  # () -> None: one remediation tick on the server
    token: Any  # (role) -> str
    nodes: dict[str, SimNode] = field(default_factory=dict)

    def report(self, node_id: str, health: dict[str, Any] | None = None) -> None:
        doc = report_doc(node_id)
        doc["topology"] = {"rack": RACKS[node_id]}
        if health is not None:
            doc["health"] = health
        response = self.nodes[node_id].send("POST", "/v1/reports", json.dumps(doc).encode())
        assert response.status == 202, response.data

    def healthy(self, *node_ids: str) -> None:
        for node_id in node_ids or tuple(self.nodes):
            self.report(node_id, {"status": "healthy", "reasons": [], "gpus": [], "xids": []})

    def xid(self, node_id: str, xid: int) -> None:
        event = {"at": self.clock(), "gpu_index": 3, "gpu_uuid": "GPU-3", "xid": xid}
        self.report(node_id, {"status": "failed", "reasons": [], "gpus": [], "xids": [event]})

    def audit(self, node_id: str | None = None) -> list[dict[str, Any]]:
        path = "/v1/remediation/audit" + ("" if node_id is None else f"?node={node_id}")
        response = operator_get(self.url, path, self.token("viewer"))
        assert response.status == 200, response.data
        entries: list[dict[str, Any]] = json.loads(response.data)["entries"]
        return entries

    def events(self, node_id: str) -> list[str]:
        return [e["event"] for e in self.audit(node_id)]


def remediated_site(
    template: Path, tmp_path: Path, slurm: SlurmCluster, policy: RemediationPolicy, **config: Any
) -> Iterator[Remediated]:
    slurm.reset()
    clock = FakeClock()
    remediation = RemediationConfig(
        scheduler="slurm",
        scontrol=config.pop("scontrol", (SCONTROL,)),
        slurm_conf=slurm.conf,
        hooks=config.pop("hooks", {}),
        tick_s=0,  # the test ticks
        pools={"prod": policy},
    )
    for site in make_site(
        template,
        tmp_path,
        f"sqlite://{tmp_path / 'fleet.db'}",
        clock,
        remediation=remediation,
        report_interval_s=REPORT_INTERVAL_S,
        **config,
    ):
        server = site.server
        fleet = Remediated(slurm, clock, site.url, server.tick_remediation, server.issue_token)
        for node_id in RACKS:
            fleet.nodes[node_id] = SimNode(site.url, node_id, "prod", clock)
            assert fleet.nodes[node_id].enroll().status == 201
        yield fleet
