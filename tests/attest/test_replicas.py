"""Two server replicas on one PostgreSQL database, with a real TPM (swtpm).

Attestation challenges live in the shared store: a challenge one replica issued
is redeemed at the other, once; the same evidence replayed to either replica is
refused. The event log one replica verified is known to the other, so a node
may send it once and name it by digest wherever it reports next.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from fleet.attestation import ReportChallenge
from node.attest.attestor import Attestor
from server.lifecycle import BackgroundServer
from tests.attest.conftest import LOCAL_CA, Tpm
from tests.attest.test_end_to_end import make_report
from tests.attest.test_over_http import (
    ask_challenge,
    enroll_agent,
    enroll_body,
    reference_log,
    tpm_evidence,
)
from tests.conftest import Site, make_site
from tests.simnode import SimNode


@pytest.fixture
def replicas(
    _template_repo: Path, tmp_path: Path, postgres_url: str
) -> Iterator[tuple[Site, BackgroundServer]]:
    base = tmp_path / "site"
    base.mkdir()
    for first in make_site(_template_repo, base, postgres_url, ek_ca=(LOCAL_CA,)):
        with BackgroundServer(replace(first.server.config, port=0)) as second:
            yield first, second


def test_enrollment_begun_at_one_replica_finishes_at_the_other_once(
    replicas: tuple[Site, BackgroundServer], tpm: Tpm, tmp_path: Path
) -> None:
    site, second = replicas
    node = SimNode(second.url, "n1")
    body = enroll_body(node, tpm_evidence(site.url, tpm, tmp_path, node))
    enrolled = node.send("POST", "/v1/enroll", body)
    assert enrolled.status == 201, enrolled.data
    assert json.loads(enrolled.data)["attestation"] == "tpm2"
    # The same evidence, freshly signed, at either replica: its challenges are spent.
    for url in (second.url, site.url):
        node.url = url
        replayed = node.send("POST", "/v1/enroll", body)
        assert replayed.status == 403, replayed.data
        assert "already used" in json.loads(replayed.data)["error"]


def test_report_challenge_from_one_replica_is_answered_at_the_other_once(
    replicas: tuple[Site, BackgroundServer], tpm: Tpm, tmp_path: Path
) -> None:
    site, second = replicas
    config, node = enroll_agent(site, tpm, tmp_path / "node")
    assert config.attestation is not None
    digest = hashlib.sha256(reference_log().read_bytes()).hexdigest()
    with Attestor(config.attestation, config.state_dir) as attestor:
        challenge, known = ask_challenge(node)
        assert known is None
        body = json.dumps(attestor.attest_report(make_report(), challenge).to_dict()).encode()
        node.url = second.url
        assert node.send("POST", "/v1/reports", body).status == 202
        for url in (second.url, site.url):
            node.url = url
            replayed = node.send("POST", "/v1/reports", body)
            assert replayed.status == 403 and "already used" in json.loads(replayed.data)["error"]

        # The first replica names the log the second verified, and takes a report
        # that names it by digest only.
        node.url = site.url
        challenge, known = ask_challenge(node)
        assert known == digest
        attested = attestor.attest_report(make_report(reason="by digest"), challenge)
        by_digest = replace(attested, evidence=attested.evidence.without_log())
        sent = node.send("POST", "/v1/reports", json.dumps(by_digest.to_dict()).encode())
        assert sent.status == 202, sent.data
    shown = site.fleet()["n1"]
    assert shown["report"]["reason"] == "by digest"
    assert shown["report_attestation"]["passed"] is True
    assert shown["report_attestation"]["event_log_sha256"] == digest


def test_the_challenge_one_replica_answers_with_is_taken_at_the_other_once(
    replicas: tuple[Site, BackgroundServer], tpm: Tpm, tmp_path: Path
) -> None:
    """The next challenge lives in the shared store: the agent's next report, to the
    other replica, needs no challenge request, and its quote is accepted once."""
    site, second = replicas
    config, node = enroll_agent(site, tpm, tmp_path / "node")
    assert config.attestation is not None
    with Attestor(config.attestation, config.state_dir) as attestor:
        challenge, _ = ask_challenge(node)
        first = attestor.attest_report(make_report(reason="first"), challenge)
        answer = node.send("POST", "/v1/reports", json.dumps(first.to_dict()).encode())
        assert answer.status == 202, answer.data
        following = ReportChallenge.from_dict(json.loads(answer.data)["next"])
        digest = hashlib.sha256(reference_log().read_bytes()).hexdigest()
        assert following.event_log_sha256 == digest  # kept: named, not sent, next time
        quoted = attestor.attest_report(make_report(reason="second"), following.challenge)
        by_digest = replace(quoted, evidence=quoted.evidence.without_log())
        body = json.dumps(by_digest.to_dict()).encode()
        node.url = second.url
        sent = node.send("POST", "/v1/reports", body)
        assert sent.status == 202, sent.data
        for url in (second.url, site.url):
            node.url = url
            replayed = node.send("POST", "/v1/reports", body)
            assert replayed.status == 403 and "already used" in json.loads(replayed.data)["error"]
    shown = site.fleet()["n1"]
    assert shown["report"]["reason"] == "second"
    assert shown["report_attestation"]["passed"] is True
