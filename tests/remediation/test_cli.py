"""``gpuward fleet remediation`` against a real server draining real Slurm nodes:
``status`` and ``audit`` print what the API answers (the same JSON with
``--json``), ``approve`` and ``release`` act in Slurm and say what they did, a
refusal is one line naming what to do next, and what a node wrote in its report
reaches the terminal as visible escapes, never as control sequences."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.human_time import when
from fleet.remediation import RemediationPolicy
from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.remediation.conftest import HOLD_DOWN_S, Remediated, remediated_site
from tests.remediation.slurm_cluster import SlurmCluster
from tests.simnode import operator_get

BUDGET_OF_ONE = RemediationPolicy(budget=1, failure_domain=None, hold_down_s=HOLD_DOWN_S)
WITH_APPROVAL = RemediationPolicy(approval=True, failure_domain=None, hold_down_s=HOLD_DOWN_S)
XID_79 = "GPU 3: XID 79 (GPU has fallen off the bus)"
# What a compromised node could put in its report: clear the screen, recolour,
# retitle the window, fake a line of output, reverse the text after it, and an
# 8-bit CSI.
HOSTILE = "\x1b[2J\x1b[31mGPU 3 lost\x1b]0;pwned\x07\r\nFAKE: all nodes healthy\u202eok\x9b1m"
RAW = ("\x1b", "\x07", "\r", "\u202e", "\x9b")


@pytest.fixture
def prod(_template_repo: Path, tmp_path: Path, slurm: SlurmCluster) -> Iterator[Remediated]:
    yield from remediated_site(_template_repo, tmp_path, slurm, BUDGET_OF_ONE)


def cli(prod: Remediated, tmp_path: Path, role: str, *args: str) -> list[str]:
    """``gpuward fleet remediation ARGS`` with a token of ``role``, as arguments."""
    token = tmp_path / f"{role}.token"
    if not token.exists():
        token.write_text(prod.token(role))
    return ["fleet", "remediation", *args, "--server", prod.url, "--token-file", str(token)]


def run(prod: Remediated, tmp_path: Path, role: str, *args: str) -> str:
    done = gpuward(*cli(prod, tmp_path, role, *args))
    assert done.returncode == 0, done.stderr
    return done.stdout


STATUS = ("NODE", "STAGE", "ACTION", "SYMPTOM", "SINCE", "LAST ERROR")
HELD = ("HELD OR NOTIFIED", "WHY")
AUDIT = ("TIME", "POOL", "NODE", "EVENT", "ACTION", "SYMPTOM", "DETAIL", "BY")


def rows(text: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of the table with these ``columns``, each cell by its column's name
    (a column starts where its name does in the header line)."""
    lines = text.splitlines()
    words = " ".join(columns).split()
    start = next(i for i, line in enumerate(lines) if line.split() == words)
    at = [lines[start].index(name) for name in columns]
    ends = [*at[1:], None]
    found = []
    for line in lines[start + 1 :]:
        if not line or line.startswith(("pool ", HELD[0])):
            break
        found.append({n: line[a:e].strip() for n, a, e in zip(columns, at, ends, strict=True)})
    return found


def api(prod: Remediated, path: str) -> object:
    response = operator_get(prod.url, path, prod.token("viewer"))
    assert response.status == 200, response.data
    return json.loads(response.data)


def test_status_and_audit_show_a_drain_and_release_resumes_it_in_slurm(
    prod: Remediated, tmp_path: Path
) -> None:
    prod.healthy()
    prod.xid("gpu-a01", 79)
    prod.xid("gpu-b01", 79)  # held back: the budget is one node
    prod.tick()
    assert prod.slurm.states()["gpu-a01"] == "drained"
    decided_at = when(prod.clock())

    status = run(prod, tmp_path, "viewer", "status")
    assert (
        status.splitlines()[0] == "pool prod: 1 node(s) under remediation, 1 held back or notified"
    )
    [drained] = rows(status, STATUS)
    assert drained["NODE"] == "gpu-a01" and drained["STAGE"] == "drained"
    assert drained["ACTION"] == "drain" and drained["SYMPTOM"].startswith(XID_79)
    assert drained["SINCE"] == decided_at and drained["LAST ERROR"] == "-"
    [held] = rows(status, HELD)
    assert held == {
        "HELD OR NOTIFIED": "gpu-b01",
        "WHY": "pool budget of 1 node(s) reached (gpu-a01 under remediation)",
    }
    as_json = json.loads(run(prod, tmp_path, "viewer", "status", "--json"))
    assert as_json == api(prod, "/v1/remediation")

    entries = rows(run(prod, tmp_path, "viewer", "audit"), AUDIT)
    assert [(e["NODE"], e["EVENT"]) for e in entries] == [
        ("gpu-a01", "decided"),
        ("gpu-b01", "held"),
        ("gpu-a01", "done"),
    ]
    for entry in entries:
        assert entry["TIME"] == decided_at and entry["POOL"] == "prod"
        assert entry["ACTION"] == "drain" and entry["SYMPTOM"].startswith(XID_79)
        assert entry["BY"] == "gpuward"
    assert entries[2]["DETAIL"].startswith("drained in Slurm: gpuward drain: GPU 3: XID 79")
    [last] = rows(
        run(prod, tmp_path, "viewer", "audit", "--node", "gpu-a01", "--limit", "1"), AUDIT
    )
    assert last["EVENT"] == "done"
    one = json.loads(run(prod, tmp_path, "viewer", "audit", "--node", "gpu-a01", "--json"))
    assert one == api(prod, "/v1/remediation/audit?node=gpu-a01")
    assert len(one["entries"]) == 2

    released = run(prod, tmp_path, "operator", "release", "gpu-a01")
    assert released == "gpu-a01: released; no longer under remediation in pool prod\n"
    assert prod.slurm.state("gpu-a01").state == "idle"
    after = rows(run(prod, tmp_path, "viewer", "audit", "--node", "gpu-a01"), AUDIT)
    assert [e["EVENT"] for e in after] == ["decided", "done", "released", "resumed"]
    assert after[2]["BY"] == "test (operator)" and after[2]["DETAIL"] == "the node is resumed"
    assert after[3]["DETAIL"] == "resumed in Slurm"

    no_entries = run(prod, tmp_path, "viewer", "audit", "--node", "gpu-a02")
    assert no_entries == "no remediation audit entries\n"
    refused = gpuward(*cli(prod, tmp_path, "viewer", "audit", "--limit", "0"))
    assert_one_line_error(refused, "--limit must be from 1 to 10000")


def test_approval_through_the_cli_and_a_viewer_is_told_what_token_it_needs(
    _template_repo: Path, tmp_path: Path, slurm: SlurmCluster
) -> None:
    for prod in remediated_site(_template_repo, tmp_path, slurm, WITH_APPROVAL):
        prod.healthy()
        prod.xid("gpu-a02", 48)  # double-bit ECC error
        prod.tick()
        [waiting] = rows(run(prod, tmp_path, "viewer", "status"), STATUS)
        assert (waiting["NODE"], waiting["STAGE"]) == ("gpu-a02", "awaiting-approval")

        viewer = gpuward(*cli(prod, tmp_path, "viewer", "approve", "gpu-a02"))
        assert_one_line_error(
            viewer,
            "POST /v1/remediation/nodes/gpu-a02/approve",
            "this needs the operator role; the token has viewer",
            "gpuward server token create --role operator",
        )
        assert prod.slurm.state("gpu-a02").state == "idle"

        approved = run(prod, tmp_path, "operator", "approve", "gpu-a02")
        assert approved.startswith("gpu-a02: approved; drain for GPU 3: XID 48 ")
        assert approved.endswith(", now drained\n")
        assert prod.slurm.state("gpu-a02").state == "drained"
        as_json = json.loads(run(prod, tmp_path, "operator", "release", "gpu-a02", "--json"))
        resumed = {"gpu-a02": int(prod.clock())}  # for the flapping rule
        assert as_json == {
            "boards": [
                {"pool": "prod", "nodes": [], "held": {}, "resumed": resumed, "notified": {}}
            ]
        }
        assert prod.slurm.state("gpu-a02").state == "idle"

        for command in ("approve", "release"):
            again = gpuward(*cli(prod, tmp_path, "operator", command, "gpu-a02"))
            assert_one_line_error(
                again,
                "gpu-a02 is not under remediation in any pool",
                "see 'gpuward fleet remediation status'",
            )
        events = [e["EVENT"] for e in rows(run(prod, tmp_path, "viewer", "audit"), AUDIT)]
        assert events == ["awaiting-approval", "approved", "done", "released", "resumed"]


def test_what_a_node_wrote_reaches_the_terminal_escaped(prod: Remediated, tmp_path: Path) -> None:
    prod.healthy()
    prod.report("gpu-b02", {"status": "failed", "reasons": [HOSTILE], "gpus": [], "xids": []})
    prod.tick()
    assert prod.slurm.state("gpu-b02").state == "drained"
    shown = HOSTILE.encode("unicode_escape").decode()
    assert shown.startswith("\\x1b[2J\\x1b[31mGPU 3 lost\\x1b]0;pwned\\x07\\r\\nFAKE")

    for command in ("status", "audit"):
        text = run(prod, tmp_path, "viewer", command)
        assert not any(c in text for c in RAW), command
        assert not any(line.startswith("FAKE") for line in text.splitlines()), command
        assert shown in text, command
        as_json = run(prod, tmp_path, "viewer", command, "--json")
        assert not any(c in as_json for c in RAW), command
    [drained] = rows(run(prod, tmp_path, "viewer", "status"), STATUS)
    assert drained["SYMPTOM"] == shown  # one cell, on the node's own line
    assert drained["LAST ERROR"] == "-"
    audit = json.loads(run(prod, tmp_path, "viewer", "audit", "--json"))
    assert {e["symptom"]["summary"] for e in audit["entries"]} == {HOSTILE}  # unchanged in JSON

    # An error line is made safe the same way: here the server quotes the node id given.
    refused = gpuward(*cli(prod, tmp_path, "operator", "release", "\x1b[2Jgpu-x"))
    line = assert_one_line_error(refused, "\\x1b[2Jgpu-x is not under remediation in any pool")
    assert "\x1b" not in refused.stderr and line.endswith("for the node's stage")
