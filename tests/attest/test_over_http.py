"""TPM enrollment and attested reports through the real server on loopback, with
swtpm and the agent's code.

The agent enrolls with its TPM and is shown "tpm2" attested beside a node enrolled
with the token, shown unattested; evidence from an unknown EK CA, evidence that
certifies another key than the one enrolled, and replayed evidence are refused.
Its reports are quoted over server challenges and shown attested; a quote over a
spent challenge, a report changed after quoting, and an unattested report from a
TPM-enrolled node are refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import pytest
import urllib3
from cryptography.hazmat.primitives import serialization

from agent.identity import enroll, load_key
from agent.reporter import post_report
from fleet.attestation import AttestedReport, Challenge, CredentialChallenge
from fleet.errors import GpuwardError
from fleet.eventlog import parse
from fleet.nodeauth import ENROLLMENT_TOKEN_HEADER
from node.attest.attestor import Attestor
from node.config import AgentConfig, load_config
from server.attestation.enrollment import EnrolledTpm
from tests.attest.conftest import Tpm, ek_site, extend_log, self_signed_ca
from tests.attest.test_end_to_end import LOGS, make_report, startup_locality
from tests.conftest import Site, make_site
from tests.simnode import ENROLLMENT_TOKEN, SimNode


@pytest.fixture
def site(tpm_site: Site) -> Site:
    """This module's tests run against the server that enrolls TPMs."""
    return tpm_site


def _agent_config(site: Site, tpm: Tpm, folder: Path, event_log: Path | None = None) -> Path:
    folder.mkdir()
    extra = f'\n[attestation]\ntcti = "{tpm.tcti}"\n'
    if event_log is not None:
        extra += f'event_log = "{event_log}"\n'
    return site.agent_toml(folder, extra=extra)


def begin(url: str, attestor: Attestor, node_id: str) -> tuple[CredentialChallenge, Challenge]:
    """``POST /v1/enroll/tpm/begin`` at the server ``url``, with the enrollment token."""
    body = json.dumps(attestor.enrollment_request(node_id).to_dict()).encode()
    response = urllib3.request(
        "POST",
        f"{url}/v1/enroll/tpm/begin",
        body=body,
        headers={"Content-Type": "application/json", ENROLLMENT_TOKEN_HEADER: ENROLLMENT_TOKEN},
    )
    assert response.status == 200, response.data
    doc = json.loads(response.data)
    return (
        CredentialChallenge.from_dict(doc["credential"]),
        Challenge.from_dict(doc["session_key_challenge"]),
    )


def tpm_evidence(url: str, tpm: Tpm, folder: Path, node: SimNode) -> dict[str, object]:
    """The agent's TPM evidence for ``node``'s key, begun at the server ``url``."""
    with Attestor(tpm.config(), folder) as attestor:
        credential, challenge = begin(url, attestor, node.node_id)
        return {
            "type": "tpm2",
            "credential": attestor.activate(node.node_id, credential).to_dict(),
            "session_key": attestor.certify_key(node.node_id, node.public_key, challenge).to_dict(),
        }


def enroll_body(node: SimNode, evidence: Mapping[str, object]) -> bytes:
    doc = {
        "node_id": node.node_id,
        "public_key": base64.b64encode(node.public_key).decode(),
        "evidence": evidence,
    }
    return json.dumps(doc).encode()


def test_a_node_enrolls_with_its_tpm_and_is_shown_attested(
    site: Site, tpm: Tpm, tmp_path: Path
) -> None:
    config = load_config(_agent_config(site, tpm, tmp_path / "node"))
    result = enroll(config)
    assert result["attested"] is True and result["attestation"] == "tpm2"
    token_node = SimNode(site.url, "lab-1")
    assert token_node.enroll().status == 201

    fleet = site.fleet()
    assert (fleet["n1"]["attested"], fleet["n1"]["attestation"]) == (True, "tpm2")
    assert (fleet["lab-1"]["attested"], fleet["lab-1"]["attestation"]) == (False, "unattested")
    # The AK record later quotes verify with is stored with the node.
    stored = site.server.call(lambda svc: svc.store.enrolled("n1"))
    assert stored is not None and stored.tpm is not None
    with Attestor(tpm.config(), config.state_dir) as attestor:
        ak_public = attestor.enrollment_request("n1").ak_public
    assert EnrolledTpm.from_dict(json.loads(stored.tpm)).ak_public == ak_public
    public = (
        load_key(config)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    assert stored.public_key == public
    # Enrolling again is harmless: the same key, a fresh TPM exchange.
    assert enroll(config)["attested"] is True


def test_a_tpm_node_needs_the_enrollment_token_to_begin(
    site: Site, tpm: Tpm, tmp_path: Path
) -> None:
    path = _agent_config(site, tpm, tmp_path / "node")
    path.write_text(
        "\n".join(
            line
            for line in path.read_text().splitlines()
            if not line.startswith("enrollment_token_file")
        )
    )
    with pytest.raises(GpuwardError, match="set enrollment_token_file"):
        enroll(load_config(path))
    assert site.fleet() == {}


def test_tpm_evidence_certifying_another_key_is_refused_and_not_reusable(
    site: Site, tpm: Tpm, tmp_path: Path
) -> None:
    node, thief = SimNode(site.url, "n1"), SimNode(site.url, "n1")
    evidence = tpm_evidence(site.url, tpm, tmp_path, node)
    # Evidence for node's key, presented to enroll the thief's key.
    body = enroll_body(thief, evidence)
    refused = thief.send("POST", "/v1/enroll", body)
    assert refused.status == 403 and "another key" in json.loads(refused.data)["error"]
    body = enroll_body(node, evidence)
    assert node.send("POST", "/v1/enroll", body).status == 201
    # The same evidence again (a replay, even by the node itself): its challenges are spent.
    replayed = node.send("POST", "/v1/enroll", body)
    assert replayed.status == 403
    assert "already used" in json.loads(replayed.data)["error"]


def _foreign_ca(folder: Path) -> Path:
    _key, cert = self_signed_ca("Some other TPM vendor")
    path = folder / "other-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_an_ek_certificate_from_an_unknown_ca_is_refused(
    _template_repo: Path, tpm: Tpm, tmp_path: Path
) -> None:
    for site in ek_site(_template_repo, tmp_path / "site", _foreign_ca(tmp_path)):
        config = load_config(_agent_config(site, tpm, tmp_path / "node"))
        with pytest.raises(GpuwardError, match=r"HTTP 403.*does not lead to an allowed CA"):
            enroll(config)
        assert site.fleet() == {}


def test_a_server_without_ek_cas_has_no_tpm_enrollment(
    _template_repo: Path, tpm: Tpm, tmp_path: Path
) -> None:
    base = tmp_path / "site"
    base.mkdir()
    for site in make_site(_template_repo, base, str(base / "server.db")):
        config = load_config(_agent_config(site, tpm, tmp_path / "node"))
        with pytest.raises(GpuwardError, match=r"HTTP 404.*--ek-ca"):
            enroll(config)
        # The token mode is as before: a TPM evidence type is not even considered.
        node = SimNode(site.url, "n2")
        body = enroll_body(node, {"type": "tpm2"})
        assert node.send("POST", "/v1/enroll", body).status == 403
        assert site.fleet() == {}


def reference_log() -> Path:
    """A reference log swtpm can reproduce (not started at locality 3), with sha256."""
    for path in LOGS:
        if startup_locality(path) != 3 and "sha256" in parse(path.read_bytes()).digest_sizes:
            return path
    raise AssertionError(f"no usable event log in {LOGS}")


def enroll_agent(site: Site, tpm: Tpm, folder: Path) -> tuple[AgentConfig, SimNode]:
    """An agent enrolled with its TPM, whose PCRs its event log explains; and a
    client signing with its key, for the requests an attacker would forge."""
    log_path = reference_log()
    extend_log(tpm, log_path)
    config = load_config(_agent_config(site, tpm, folder, event_log=log_path))
    assert enroll(config)["attestation"] == "tpm2"
    return config, SimNode(site.url, config.node_id, key=load_key(config))


def ask_challenge(node: SimNode) -> tuple[Challenge, str | None]:
    response = node.send("GET", "/v1/challenge")
    assert response.status == 200, response.data
    doc = json.loads(response.data)
    return Challenge.from_dict(doc["challenge"]), doc["event_log_sha256"]


def test_reports_of_a_tpm_node_are_attested_and_shown_so(
    site: Site, tpm: Tpm, tmp_path: Path
) -> None:
    config, node = enroll_agent(site, tpm, tmp_path / "node")
    post_report(config, make_report())
    shown = site.fleet()["n1"]["report_attestation"]
    digest = hashlib.sha256(reference_log().read_bytes()).hexdigest()
    assert shown["passed"] is True and shown["reasons"] == []
    assert shown["event_log_sha256"] == digest
    # The server keeps the verified log: the next challenge names it, and the
    # agent's next report, sent without it, is verified against the kept one.
    assert ask_challenge(node)[1] == digest
    post_report(config, make_report(reason="still nothing newer"))
    latest = site.fleet()["n1"]
    assert latest["report"]["reason"] == "still nothing newer"
    assert latest["report_attestation"]["passed"] is True
    token = site.server.issue_token("viewer")
    page = urllib3.request(
        "GET", f"{site.url}/v1/nodes/n1", headers={"Authorization": f"Bearer {token}"}
    )
    history = json.loads(page.data)["history"]
    assert [h["attestation"]["passed"] for h in history] == [True, True]


def test_an_attested_report_with_text_the_server_cleans_still_verifies(
    site: Site, tpm: Tpm, tmp_path: Path
) -> None:
    """A reason holding a lone surrogate (an OS error naming an undecodable file
    name) arrives as U+FFFD: the quote covers the report the server reads."""
    config, _node = enroll_agent(site, tpm, tmp_path / "node")
    post_report(config, make_report(reason="cannot read /tmp/\udcff: denied"))
    latest = site.fleet()["n1"]
    assert latest["report"]["reason"] == "cannot read /tmp/\ufffd: denied"
    assert latest["report_attestation"]["passed"] is True


def test_forged_or_replayed_attested_reports_are_refused(
    site: Site, tpm: Tpm, tmp_path: Path
) -> None:
    config, node = enroll_agent(site, tpm, tmp_path / "node")
    assert config.attestation is not None
    with Attestor(config.attestation, config.state_dir) as attestor:
        challenge, _ = ask_challenge(node)
        report = make_report()
        attested = attestor.attest_report(report, challenge)
        body = json.dumps(attested.to_dict()).encode()
        assert node.send("POST", "/v1/reports", body).status == 202

        # The same quote again, in a freshly signed request: its challenge is spent.
        old = node.send("POST", "/v1/reports", body)
        assert old.status == 403 and "already used" in json.loads(old.data)["error"]

        # A report changed after quoting: the quote binds the original's digest.
        challenge, _ = ask_challenge(node)
        quoted = attestor.attest_report(make_report(reason="all good"), challenge)
        changed = AttestedReport(
            make_report(reason="all good, and nothing to see"), quoted.evidence
        )
        refused = node.send("POST", "/v1/reports", json.dumps(changed.to_dict()).encode())
        assert refused.status == 403
        assert "another report" in json.loads(refused.data)["error"]

    # Without evidence, the node's request key alone does not make a report.
    plain = node.send("POST", "/v1/reports", json.dumps(make_report().to_dict()).encode())
    assert plain.status == 403 and "GET /v1/challenge" in json.loads(plain.data)["error"]
    assert site.fleet()["n1"]["report"]["reason"] == report.reason
    assert len(site.server.call(lambda svc: svc.store.history("n1", 10))) == 1


def test_a_node_enrolled_without_a_tpm_is_shown_unattested(site: Site) -> None:
    node = SimNode(site.url, "lab-1")
    assert node.enroll().status == 201
    assert node.send("GET", "/v1/challenge").status == 409
    body = json.dumps(make_report("lab-1").to_dict()).encode()
    assert node.send("POST", "/v1/reports", body).status == 202
    shown = site.fleet()["lab-1"]
    assert (shown["attested"], shown["attestation"], shown["report_attestation"]) == (
        False,
        "unattested",
        None,
    )
