"""Revocation from OCSP responses carried offline (``server.gpu_attestation.ocsp``),
against the test PKI of the re-signed sample: current good answers for every
certificate pass without any waiver; a revoked, stale, or wrongly signed answer
fails even with one; a certificate without an answer is unknown unless waived."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from fleet.gpu_attestation import REVOCATION, GpuAttestationVerdict, GpuCheck, GpuOutcome
from server.gpu_attestation.certs import load_root
from server.gpu_attestation.errors import GpuEvidenceError
from server.gpu_attestation.ocsp import load_response, load_responses
from server.gpu_attestation.rim import RimFile
from server.gpu_attestation.spdm import read_report
from server.gpu_attestation.verifier import GpuTrust, RimSources, verify_evidence
from tests.cli.test_errors import gpuward
from tests.gpu_attest.conftest import MakeCase
from tests.gpu_attest.evidence import (
    Evidence,
    LabPki,
    good_responses,
    nonce_for,
    ocsp_responder,
    ocsp_response,
    root,
)

NOW = datetime.now(UTC)
ISSUED = NOW - timedelta(days=1)


@pytest.fixture(scope="module")
def case(lab_case: MakeCase) -> Evidence:
    return lab_case("revocation", nonce_for("revocation"))


def judge(
    case: Evidence, responses: dict[str, bytes], *, waive: bool = False
) -> GpuAttestationVerdict:
    assert case.device_root is not None and case.rim_root is not None
    pool = tuple(RimFile(p.name, p.read_bytes()) for p in sorted(case.rims.glob("*.swidtag")))
    return verify_evidence(
        read_report(case.report.read_bytes()),
        case.chain.read_bytes(),
        RimSources(pool=pool, responses=load_responses(sorted(responses.items()))),
        nonce=case.nonce,
        at=NOW,
        trust=GpuTrust(
            load_root(case.device_root.read_bytes(), "device root"),
            load_root(case.rim_root.read_bytes(), "RIM root"),
        ),
        waive_revocation=waive,
    )


def revocation(verdict: GpuAttestationVerdict) -> GpuCheck:
    return next(c for c in verdict.checks if c.name == REVOCATION)


def test_current_good_answers_for_every_certificate_pass_without_a_waiver(
    case: Evidence, pki: LabPki
) -> None:
    verdict = judge(case, good_responses(pki, ISSUED))
    assert verdict.verdict is GpuOutcome.PASS, verdict.reasons()
    check = revocation(verdict)
    assert check.detail.startswith(f"checked: {len(pki.links())} certificates good per OCSP")
    assert "waived" not in check.detail


def test_an_answer_signed_by_a_delegated_responder_counts(case: Evidence, pki: LabPki) -> None:
    responses = good_responses(pki, ISSUED)
    gpu, brom = pki.links()[0]
    responses["ocsp-0.der"] = ocsp_response(gpu, brom, at=ISSUED, signer=ocsp_responder(brom))
    assert judge(case, responses).verdict is GpuOutcome.PASS


@pytest.mark.parametrize("waive", [False, True])
def test_a_revoked_certificate_fails_even_when_revocation_is_waived(
    case: Evidence, pki: LabPki, waive: bool
) -> None:
    responses = good_responses(pki, ISSUED)
    gpu, brom = pki.links()[0]
    responses["ocsp-0.der"] = ocsp_response(
        gpu, brom, at=ISSUED, status=ocsp.OCSPCertStatus.REVOKED
    )
    verdict = judge(case, responses, waive=waive)
    assert verdict.verdict is GpuOutcome.FAIL
    assert revocation(verdict).outcome is GpuOutcome.FAIL
    assert "Test GH100 A01 GSP FMC LF" in revocation(verdict).detail
    assert "revoked on" in revocation(verdict).detail


@pytest.mark.parametrize(
    ("issued", "valid_for"),
    [
        (NOW - timedelta(days=10), timedelta(days=7)),  # nextUpdate passed
        (NOW + timedelta(days=1), timedelta(days=7)),  # not yet valid
    ],
)
def test_an_answer_not_current_at_the_verification_time_fails(
    case: Evidence, pki: LabPki, issued: datetime, valid_for: timedelta
) -> None:
    responses = good_responses(pki, ISSUED)
    signer, l3 = pki.links()[4]  # the RIM signer
    responses["ocsp-4.der"] = ocsp_response(signer, l3, at=issued, valid_for=valid_for)
    verdict = judge(case, responses, waive=True)
    assert revocation(verdict).outcome is GpuOutcome.FAIL
    assert "is not current" in revocation(verdict).detail
    assert "Test HCC RIM L4 Signer" in revocation(verdict).detail


def test_a_newer_answer_supersedes_a_stale_one(case: Evidence, pki: LabPki) -> None:
    responses = good_responses(pki, ISSUED)
    gpu, brom = pki.links()[0]
    responses["old.der"] = ocsp_response(gpu, brom, at=NOW - timedelta(days=30))
    assert judge(case, responses).verdict is GpuOutcome.PASS


def test_answers_from_the_wrong_issuer_fail(case: Evidence, pki: LabPki) -> None:
    gpu, brom = pki.links()[0]
    stranger = root("Test Device Identity CA")  # the same name as the real root, not its key
    for forged in (
        ocsp_response(gpu, brom, at=ISSUED, signer=stranger),
        # a responder with the OCSP-signing usage, but issued by another CA
        ocsp_response(gpu, brom, at=ISSUED, signer=ocsp_responder(pki.device_cas[1])),
    ):
        responses = good_responses(pki, ISSUED) | {"ocsp-0.der": forged}
        verdict = judge(case, responses, waive=True)
        assert revocation(verdict).outcome is GpuOutcome.FAIL, revocation(verdict).detail
        assert "is not signed by CN=Test GH100 A01 GSP BROM" in revocation(verdict).detail


def test_an_answer_altered_after_signing_fails(case: Evidence, pki: LabPki) -> None:
    gpu, brom = pki.links()[0]
    good = ocsp_response(gpu, brom, at=ISSUED)
    # Flip a bit of the signature (the last bytes of the DER are in it).
    altered = good[:-3] + bytes([good[-3] ^ 1]) + good[-2:]
    verdict = judge(case, good_responses(pki, ISSUED) | {"ocsp-0.der": altered})
    assert revocation(verdict).outcome is GpuOutcome.FAIL
    assert "altered or forged" in revocation(verdict).detail


def test_a_certificate_without_an_answer_is_unknown_unless_waived(
    case: Evidence, pki: LabPki
) -> None:
    responses = good_responses(pki, ISSUED)
    del responses["ocsp-2.der"]  # the provisioner CA's
    unwaived = judge(case, responses)
    assert unwaived.verdict is GpuOutcome.UNKNOWN
    assert revocation(unwaived).outcome is GpuOutcome.UNKNOWN
    assert "Test GH100 Provisioner ICA 1" in revocation(unwaived).detail
    waived = judge(case, responses, waive=True)
    assert waived.verdict is GpuOutcome.PASS
    assert "waived by the caller: CN=Test GH100 Provisioner ICA 1" in revocation(waived).detail


def test_a_file_that_is_not_a_successful_ocsp_response_is_refused() -> None:
    with pytest.raises(GpuEvidenceError, match="not a DER OCSP response"):
        load_response("junk.der", b"\x30\x03\x0a\x01\x00junk")
    unauthorized = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
    with pytest.raises(GpuEvidenceError, match="is unauthorized, not successful"):
        load_response("refused.der", unauthorized.public_bytes(Encoding.DER))


def test_the_command_checks_the_answers_in_a_folder(
    case: Evidence, pki: LabPki, tmp_path: Path
) -> None:
    assert case.device_root is not None and case.rim_root is not None
    for name, data in good_responses(pki, ISSUED).items():
        (tmp_path / name).write_bytes(data)
    done = gpuward(
        "gpu-attest", "verify", "--report", str(case.report), "--cert-chain", str(case.chain),
        "--rims", str(case.rims), "--device-root", str(case.device_root),
        "--rim-root", str(case.rim_root), "--nonce", case.nonce.hex(), "--ocsp", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(
        line.split()[:3] == ["revocation", "pass", "checked:"] for line in done.stdout.splitlines()
    )
