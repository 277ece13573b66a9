"""A report on a node enrolled and attested by a real (software) TPM: the EK
certificate's subject and serial, the verdict and Secure Boot as measured."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from cryptography import x509

from agent.reporter import post_report
from fleet.compliance import schema_text
from fleet.eventlog import parse
from node.attest.attestor import Attestor
from server.attestation.policy import from_eventlog
from tests.attest.conftest import LOCAL_CA, Tpm
from tests.attest.test_end_to_end import make_report
from tests.attest.test_over_http import enroll_agent, reference_log
from tests.cli.test_errors import gpuward
from tests.conftest import Site, make_site


@pytest.fixture
def site(_template_repo: Path, tmp_path: Path) -> Iterator[Site]:
    """A server trusting swtpm's local CA for EK certificates, judging every boot by
    the policy of the reference log the test's TPM replays."""
    base = tmp_path / "site"
    base.mkdir()
    policy = base / "boot-policy.json"
    reference = from_eventlog(parse(reference_log().read_bytes())).to_dict()
    # Its kernel command line does not count as measured under swtpm's replay
    # (the verifier says so): judge the rest.
    policy.write_text(json.dumps({**reference, "kernel_cmdlines": []}))
    yield from make_site(
        _template_repo, base, str(base / "server.db"), ek_ca=(LOCAL_CA,), boot_policy=policy
    )


def test_report_of_a_tpm_attested_node(site: Site, tpm: Tpm, tmp_path: Path) -> None:
    config, _ = enroll_agent(site, tpm, tmp_path / "node")
    post_report(config, make_report())
    token = tmp_path / "token"
    token.write_text(site.server.issue_token("viewer"))
    out = tmp_path / "n1.json"
    done = gpuward(
        "report", "node", "n1", "-o", str(out), "--server", site.url, "--token-file", str(token)
    )
    assert done.returncode == 0, done.stderr

    doc = json.loads(out.read_text())
    jsonschema.Draft202012Validator(json.loads(schema_text())).validate(doc)
    [node] = doc["nodes"]
    with Attestor(tpm.config(), config.state_dir) as attestor:
        cert = x509.load_der_x509_certificate(attestor.enrollment_request("n1").ek_certificate)
    assert node["identity"]["enrollment"] == "tpm2"
    assert node["identity"]["ek_certificate"]["subject"] == cert.subject.rfc4514_string()
    assert node["identity"]["ek_certificate"]["serial"] == format(cert.serial_number, "x")
    assert node["attestation"]["result"] == "passed"
    assert node["measured_boot_policy"] == {"policy": "default", "result": "passed", "reasons": []}
    measured = from_eventlog(parse(reference_log().read_bytes())).secure_boot
    assert node["secure_boot"] == ("on" if measured else "off")
