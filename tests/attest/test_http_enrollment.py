"""TPM enrollment through the real server on loopback, with swtpm and the agent's code.

The agent enrolls with its TPM and is shown "tpm2" attested beside a node enrolled
with the token, shown unattested; evidence from an unknown EK CA, evidence that
certifies another key than the one enrolled, and replayed evidence are refused.
"""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.attest.attestor import Attestor
from agent.config import load_config
from agent.identity import enroll, load_key
from fleet.attestation import Challenge, CredentialChallenge
from fleet.errors import GpuwardError
from server.attestation.enrollment import EnrolledNode
from tests.attest.conftest import LOCAL_CA, Tpm
from tests.conftest import Site, make_site
from tests.simnode import SimNode


def _site(template: Path, base: Path, ek_ca: Path) -> Iterator[Site]:
    base.mkdir()
    yield from make_site(template, base, str(base / "server.db"), ek_ca=(ek_ca,))


@pytest.fixture
def site(_template_repo: Path, tmp_path: Path) -> Iterator[Site]:
    """The server trusting swtpm's local CA, and the enrollment token too."""
    yield from _site(_template_repo, tmp_path / "site", LOCAL_CA)


def _agent_config(site: Site, tpm: Tpm, folder: Path) -> Path:
    folder.mkdir()
    return site.agent_toml(folder, extra=f'\n[attestation]\ntcti = "{tpm.tcti}"\n')


def _begin(site: Site, attestor: Attestor, node_id: str) -> tuple[CredentialChallenge, Challenge]:
    body = json.dumps(attestor.enrollment_request(node_id).to_dict()).encode()
    response = urllib3.request(
        "POST",
        f"{site.url}/v1/enroll/tpm/begin",
        body=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 200, response.data
    doc = json.loads(response.data)
    return (
        CredentialChallenge.from_dict(doc["credential"]),
        Challenge.from_dict(doc["session_key_challenge"]),
    )


def _enroll_body(node: SimNode, evidence: Mapping[str, object]) -> bytes:
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
    assert EnrolledNode.from_dict(json.loads(stored.tpm)).ak_public == ak_public
    public = (
        load_key(config)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    assert stored.public_key == public
    # Enrolling again is harmless: the same key, a fresh TPM exchange.
    assert enroll(config)["attested"] is True


def test_tpm_evidence_certifying_another_key_is_refused_and_not_reusable(
    site: Site, tpm: Tpm, tmp_path: Path
) -> None:
    node, thief = SimNode(site.url, "n1"), SimNode(site.url, "n1")
    with Attestor(tpm.config(), tmp_path) as attestor:
        credential, challenge = _begin(site, attestor, "n1")
        evidence = {
            "type": "tpm2",
            "credential": attestor.activate("n1", credential).to_dict(),
            "session_key": attestor.certify_key("n1", node.public_key, challenge).to_dict(),
        }
    # Evidence for node's key, presented to enroll the thief's key.
    body = _enroll_body(thief, evidence)
    refused = thief.send("POST", "/v1/enroll", body)
    assert refused.status == 403 and "another key" in json.loads(refused.data)["error"]
    body = _enroll_body(node, evidence)
    assert node.send("POST", "/v1/enroll", body).status == 201
    # The same evidence again (a replay, even by the node itself): its challenges are spent.
    replayed = node.send("POST", "/v1/enroll", body)
    assert replayed.status == 403
    assert "already used" in json.loads(replayed.data)["error"]


def _foreign_ca(folder: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some other TPM vendor")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = folder / "other-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_an_ek_certificate_from_an_unknown_ca_is_refused(
    _template_repo: Path, tpm: Tpm, tmp_path: Path
) -> None:
    for site in _site(_template_repo, tmp_path / "site", _foreign_ca(tmp_path)):
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
        body = _enroll_body(node, {"type": "tpm2"})
        assert node.send("POST", "/v1/enroll", body).status == 403
        assert site.fleet() == {}
