"""The dashboard's remediation page, for a viewer, while the server drains real
Slurm nodes: the boards with links to the nodes, the nodes held back with why,
the newest audit entries first and no more than the page shows; whatever a node
wrote is escaped."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.human_time import when
from fleet.remediation import RemediationPolicy
from server.dashboard import REMEDIATION_AUDIT
from tests.dashboard.test_node_list import NO_REDIRECT
from tests.remediation.conftest import HOLD_DOWN_S, Remediated, remediated_site
from tests.remediation.slurm_cluster import SlurmCluster
from tests.simnode import dashboard_sign_in

HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
BUDGET_OF_ONE = RemediationPolicy(budget=1, failure_domain=None, hold_down_s=HOLD_DOWN_S)


@pytest.fixture
def prod(_template_repo: Path, tmp_path: Path, slurm: SlurmCluster) -> Iterator[Remediated]:
    yield from remediated_site(_template_repo, tmp_path, slurm, BUDGET_OF_ONE)


def page(prod: Remediated) -> str:
    cookie = dashboard_sign_in(prod.url, prod.token("viewer"))
    answer = NO_REDIRECT.request("GET", f"{prod.url}/remediation", headers={"Cookie": cookie})
    assert answer.status == 200, answer.data[-1000:]
    return answer.data.decode()


def rows(text: str, table_id: str) -> list[list[str]]:
    """The table's rows, each cell as text (tags dropped, entities read)."""
    table = text[text.index(f'<table id="{table_id}">') :].split("</table>", 1)[0]
    return [
        [html.unescape(re.sub("<[^>]+>", "", c)) for c in re.findall("<td>(.*?)</td>", row)]
        for row in re.findall("<tr>(.*?)</tr>", table)[1:]
    ]


def test_boards_held_nodes_and_the_newest_audit_entries(prod: Remediated) -> None:
    prod.healthy()
    prod.xid("gpu-a01", 79)
    prod.report("gpu-b02", {"status": "failed", "reasons": [HOSTILE], "gpus": [], "xids": []})
    prod.tick()
    assert prod.slurm.state("gpu-a01").state == "drained"
    at = when(prod.clock())

    shown = page(prod)
    assert "<script>" not in shown and "<img" not in shown
    [drained] = rows(shown, "remediating")
    assert drained[:4] == ["prod", "gpu-a01", "drained", "drain"]
    assert drained[4].startswith("GPU 3: XID 79 (GPU has fallen off the bus)")
    assert drained[5:] == [at, "-", "0", "-"]
    assert '<td><a href="/nodes/gpu-a01">gpu-a01</a></td><td><span class="drained">' in shown
    assert rows(shown, "held") == [
        ["prod", "gpu-b02", "pool budget of 1 node(s) reached (gpu-a01 under remediation)"]
    ]
    audit = rows(shown, "audit")
    assert [(e[2], e[3]) for e in audit] == [
        ("gpu-a01", "done"),
        ("gpu-b02", "held"),
        ("gpu-a01", "decided"),
    ]  # newest first
    assert audit[1][5] == HOSTILE  # the node's text, escaped, reads as it was sent
    assert html.escape(HOSTILE, quote=True) in shown
    assert audit[0][6].startswith("drained in Slurm: gpuward drain: GPU 3: XID 79")
    assert {e[7] for e in audit} == {"gpuward"}
    assert '<a href="/?pool=prod">prod</a>: 1 under remediation, 1 held back or notified' in shown

    # A node whose symptom keeps changing adds an entry a tick: the page shows the newest.
    for n in range(REMEDIATION_AUDIT):
        prod.clock.advance(1)
        prod.xid("gpu-a01", 48 if n % 2 == 0 else 79)
        prod.tick()
    audit = rows(page(prod), "audit")
    assert len(audit) == REMEDIATION_AUDIT
    assert audit[0][0] == when(prod.clock()) and audit[0][3] == "recurred"
    assert "decided" not in {e[3] for e in audit}  # the oldest entries are left out
