"""The challenge answered with each attested report, through the real server on
loopback with swtpm and the agent's code.

An accepted report's answer carries the node's next challenge, so the next
report is one request. The agent keeps it in its state folder; it asks for a
fresh one when it holds none it can use (replaced at the server, expiring,
unreadable). That the server takes each once, at any replica, is in
``test_replicas``; that only its node can, in ``tests/store/test_challenges.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent import reporter
from fleet.attestation import Challenge, ReportChallenge
from node.config import AgentConfig
from tests.attest.conftest import Tpm
from tests.attest.test_end_to_end import make_report
from tests.attest.test_over_http import ask_challenge, enroll_agent
from tests.conftest import Site
from tests.simnode import SimNode


def kept(config: AgentConfig) -> ReportChallenge:
    return ReportChallenge.from_dict(json.loads(config.report_challenge_file.read_bytes()))


def history(site: Site) -> list[tuple[str, bool]]:
    """The node's reports, oldest first: (reason, attested and passed)."""
    records = site.server.call(lambda svc: svc.store.history("n1", 10))
    return [
        (r.report.reason, r.attestation is not None and r.attestation.passed)
        for r in reversed(records)
    ]


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each time the agent asks GET /v1/challenge (the real request is still made)."""
    calls: list[str] = []
    ask = reporter._ask_challenge

    def counted(config: AgentConfig, key: object) -> ReportChallenge:
        calls.append(config.node_id)
        return ask(config, key)  # type: ignore[arg-type]

    monkeypatch.setattr(reporter, "_ask_challenge", counted)
    return calls


def test_the_next_report_needs_no_challenge_request(
    tpm_site: Site,
    tpm: Tpm,
    tmp_path: Path,
    asked: list[str],
) -> None:
    config, _ = enroll_agent(tpm_site, tpm, tmp_path / "node")
    reporter.post_report(config, make_report(reason="first"))
    assert asked == ["n1"]
    first = kept(config)
    # The log the first report carried is kept by the server: named, not sent.
    assert first.event_log_sha256 is not None
    interval = tpm_site.server.config.report_interval_s
    assert first.challenge.expires_at >= time.time() + 2 * interval - 5

    for reason in ("second", "third"):
        reporter.post_report(config, make_report(reason=reason))
    assert asked == ["n1"]
    assert kept(config).challenge.nonce != first.challenge.nonce
    assert history(tpm_site) == [("first", True), ("second", True), ("third", True)]


def test_a_kept_challenge_the_server_replaced_is_retried_once_with_a_fresh_one(
    tpm_site: Site,
    tpm: Tpm,
    tmp_path: Path,
    asked: list[str],
) -> None:
    config, node = enroll_agent(tpm_site, tpm, tmp_path / "node")
    reporter.post_report(config, make_report(reason="first"))
    ask_challenge(node)  # someone else asked for the node: its kept one is void
    reporter.post_report(config, make_report(reason="second"))
    assert asked == ["n1", "n1"]
    assert history(tpm_site) == [("first", True), ("second", True)]
    reporter.post_report(config, make_report(reason="third"))
    assert asked == ["n1", "n1"]


@pytest.mark.parametrize(
    "damage",
    [
        "expiring",  # too close to its end to quote and send in time
        "not json",
        "wrong schema",
        "too large",
    ],
)
def test_a_kept_challenge_the_agent_cannot_use_is_replaced_by_a_fresh_one(
    tpm_site: Site,
    tpm: Tpm,
    tmp_path: Path,
    asked: list[str],
    damage: str,
) -> None:
    config, _ = enroll_agent(tpm_site, tpm, tmp_path / "node")
    reporter.post_report(config, make_report(reason="first"))
    good = kept(config)
    path = config.report_challenge_file
    if damage == "expiring":
        soon = Challenge(good.challenge.nonce, int(time.time()) + reporter.EXPIRY_MARGIN_S - 5)
        path.write_text(json.dumps(ReportChallenge(soon, good.event_log_sha256).to_dict()))
    elif damage == "not json":
        path.write_bytes(b"\x00{")
    elif damage == "wrong schema":
        path.write_text(json.dumps({"challenge": good.challenge.to_dict(), "extra": 1}))
    else:
        path.write_bytes(b" " * (reporter.MAX_CHALLENGE_FILE_BYTES + 1))
    reporter.post_report(config, make_report(reason="second"))
    assert asked == ["n1", "n1"]
    assert history(tpm_site) == [("first", True), ("second", True)]
    assert kept(config).challenge.nonce != good.challenge.nonce


def test_only_attested_reports_are_answered_with_a_challenge(tpm_site: Site) -> None:
    node = SimNode(tpm_site.url, "plain")
    assert node.enroll().status == 201
    answer = node.send("POST", "/v1/reports", json.dumps(make_report("plain").to_dict()).encode())
    assert answer.status == 202 and json.loads(answer.data) == {"accepted": True}
