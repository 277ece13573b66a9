"""A split view: someone holding the server's keys serves one node a second,
validly signed bundle under a published name, from a log of their own signed
with the stolen checkpoint key. The node refuses it (its last accepted
checkpoint is not extended), and the honest server flags the split view from
the node's next report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from agent.cycle_state import load_state
from agent.identity import enroll
from fleet.tlog import LogEntry
from gpuward.node import run_once
from keys import tlog_key
from tests.conftest import Site, make_site
from tests.simnode import operator_get


def _pass(site: Site) -> None:
    site.server.call(lambda svc: svc.renewer.run_pass())  # type: ignore[union-attr]


def test_a_bundle_served_to_one_node_alone_is_refused_and_flagged(
    site: Site, tmp_path: Path
) -> None:
    pinned = site.repo.root / "keys" / "tlog.vkey"
    site.publish("580.95.05")
    _pass(site)
    config = replace(site.agent("node-1"), log_key=pinned)
    assert run_once(config).outcome.update == "committed"
    accepted = load_state(config.state_file).log_checkpoint
    assert accepted

    # The attacker copies the repository with its keys, signs a second 580.95.06,
    # and serves it with a log of their own, signed with the stolen checkpoint key.
    for fork in make_site(site.repo.root, tmp_path / "fork", str(tmp_path / "fork.db")):
        forged = fork.publish("580.95.06", content=b"forged NVML\n")
        _pass(fork)
        shown = replace(config, server_url=fork.url)
        enroll(shown)
        refused = run_once(shown)
        assert refused.outcome.update == "refused", refused.outcome
        assert "does not extend the one this node accepted" in refused.outcome.reason
        assert refused.report.bundle == "drivers/R580/nvidia-580.95.05.bundle"
        state = load_state(config.state_file)
        assert state.log_checkpoint == accepted and state.log_conflict

    # The honest server publishes on; the node updates from it, proofs and all, and
    # its report carries the conflicting checkpoint, which the server flags.
    same_name = site.publish("580.95.06")
    assert (same_name.target_path, same_name.sha256 != forged.sha256) == (forged.target_path, True)
    legit = site.publish("580.95.07")
    _pass(site)
    assert legit.target_path.endswith("580.95.07.bundle")
    updated = run_once(config)
    assert updated.outcome.update == "committed", updated.outcome
    assert updated.report.bundle == legit.target_path
    token = site.server.issue_token("viewer")
    export = json.loads(operator_get(site.url, "/v1/log/export", token).data)
    flagged = [
        LogEntry.from_dict(json.loads(e))
        for e in export["entries"]
        if json.loads(e)["kind"] == "split-view"
    ]
    assert [(f.subject, f.detail and f.detail["size"]) for f in flagged] == [
        (
            "node-1",
            str(tlog_key.NoteVerifier.parse(pinned.read_text()).verify(state.log_conflict).size),
        )
    ]


def test_a_bundle_the_log_lacks_is_refused(site: Site) -> None:
    site.publish("580.95.05")  # published, but no pass has logged it yet
    config = replace(site.agent("node-1"), log_key=site.repo.root / "keys" / "tlog.vkey")
    result = run_once(config)
    assert result.outcome.update == "refused", result.outcome
    assert "is not in the fleet's transparency log" in result.outcome.reason
    assert result.report.bundle is None
