"""NVIDIA's sample re-signed by a test PKI (``evidence.py``): evidence that passes,
and the same altered one way at a time, judged by gpuward and by NVIDIA's
verifier, which is given the test roots in place of NVIDIA's.

Certificates are judged now on both sides (the test PKI is valid until 2099);
OCSP as in ``test_nvidia_sample.py``: NVIDIA's online query replaced by a
stand-in, gpuward's revocation check waived by ``--no-revocation-check``.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from datetime import UTC, datetime

from fleet.gpu_attestation import (
    CERTIFICATE_CHAIN,
    DRIVER,
    FWID,
    MEASUREMENTS,
    NONCE,
    REVOCATION,
    SIGNATURE,
    VBIOS,
    VBIOS_RIM,
    GpuAttestationVerdict,
    GpuOutcome,
    MeasurementOutcome,
)
from server.gpu_attestation.certs import load_root
from server.gpu_attestation.ocsp import WAIVED
from server.gpu_attestation.rim import RimFile
from server.gpu_attestation.spdm import read_report
from server.gpu_attestation.verifier import GpuTrust, RimSources, verify_evidence
from tests.gpu_attest.conftest import MakeCase
from tests.gpu_attest.evidence import (
    SAMPLE_VBIOS_RIM,
    Evidence,
    LabPki,
    Sample,
    active_indexes,
    make_rim,
    measurements,
    nonce_for,
)
from tests.gpu_attest.nvidia import gpuward_verify, nvidia_verdicts

SOURCE = {"Driver": DRIVER, "Firmware": VBIOS}  # NVIDIA's names for the two RIMs
WAIVE = "--no-revocation-check"


def verdict_of(done: subprocess.CompletedProcess[str]) -> GpuAttestationVerdict:
    assert "Traceback" not in done.stderr, done.stderr
    return GpuAttestationVerdict.from_dict(json.loads(done.stdout))


def outcomes(verdict: GpuAttestationVerdict) -> dict[str, GpuOutcome]:
    return {check.name: check.outcome for check in verdict.checks}


def in_process(case: Evidence, *, nonce: bytes | None = None) -> GpuAttestationVerdict:
    """What ``gpuward gpu-attest verify`` computes, without a process per case."""
    assert case.device_root is not None and case.rim_root is not None
    trust = GpuTrust(
        load_root(case.device_root.read_bytes(), "device root"),
        load_root(case.rim_root.read_bytes(), "RIM root"),
    )
    pool = tuple(RimFile(p.name, p.read_bytes()) for p in sorted(case.rims.glob("*.swidtag")))
    return verify_evidence(
        read_report(case.report.read_bytes()),
        case.chain.read_bytes(),
        RimSources(pool=pool),
        nonce=case.nonce if nonce is None else nonce,
        at=datetime.now(UTC),
        trust=trust,
        waive_revocation=True,
    )


def test_the_resigned_sample_passes_on_both_sides(lab_case: MakeCase) -> None:
    case = lab_case("good", nonce_for("good"))
    (nvidia,) = nvidia_verdicts([case])
    done = gpuward_verify(case, "--nonce", case.nonce.hex(), WAIVE)
    ours = verdict_of(done)

    assert nvidia["passed"] is True and nvidia["measurements"] == "success"
    assert done.returncode == 0, ours.reasons()
    assert ours.verdict is GpuOutcome.PASS
    assert set(outcomes(ours).values()) == {GpuOutcome.PASS}
    assert [m.index for m in ours.measurements] == nvidia["compared"]
    assert {m.outcome for m in ours.measurements} == {MeasurementOutcome.MATCH}
    revocation = next(c for c in ours.checks if c.name == REVOCATION)
    assert revocation.detail == WAIVED  # the waiver is in the verdict, not silent


def test_without_the_waiver_revocation_is_unknown_and_nothing_passes(lab_case: MakeCase) -> None:
    case = lab_case("unwaived", nonce_for("unwaived"))
    done = gpuward_verify(case, "--nonce", case.nonce.hex())
    ours = verdict_of(done)

    assert done.returncode == 3
    assert ours.verdict is GpuOutcome.UNKNOWN
    assert outcomes(ours)[REVOCATION] is GpuOutcome.UNKNOWN
    assert "--no-revocation-check" in ours.reasons()[0]


def test_without_a_nonce_freshness_is_unknown(lab_case: MakeCase) -> None:
    ours = verdict_of(gpuward_verify(lab_case("no-nonce", nonce_for("no-nonce")), WAIVE))
    assert ours.verdict is GpuOutcome.UNKNOWN
    assert outcomes(ours)[NONCE] is GpuOutcome.UNKNOWN


def test_each_measurement_changed_in_turn_is_refused_naming_its_index(
    lab_case: MakeCase, lab_rims: tuple[bytes, bytes]
) -> None:
    """Every active index of both RIMs: its measurement changed in one bit and the
    report signed again by the GPU's key (as a GPU running other firmware would)."""
    indexes = sorted(active_indexes(lab_rims[0]) + active_indexes(lab_rims[1]))
    assert len(indexes) == 33
    cases = [lab_case(f"flip-{i}", nonce_for(f"flip-{i}"), flip=i) for i in indexes]
    nvidia = nvidia_verdicts(cases)

    for index, case, theirs in zip(indexes, cases, nvidia, strict=True):
        ours = in_process(case)
        assert ours.verdict is GpuOutcome.FAIL
        assert ours.mismatched() == (index,)
        measured = next(c for c in ours.checks if c.name == MEASUREMENTS)
        assert measured.outcome is GpuOutcome.FAIL and f"index {index} " in measured.detail
        assert theirs["passed"] is False
        assert [[i, SOURCE[s]] for i, s in theirs["mismatched"]] == [
            [m.index, m.source] for m in ours.measurements if m.index == index
        ]
        # Everything but the measurement still verifies, on both sides.
        assert theirs["signature"] is True
        assert outcomes(ours)[SIGNATURE] is GpuOutcome.PASS


def test_a_wrong_nonce_is_refused_by_both(lab_case: MakeCase) -> None:
    case = lab_case("stale", nonce_for("stale"))
    asked = dataclasses.replace(case, nonce=nonce_for("the nonce the server asked for"))
    (nvidia,) = nvidia_verdicts([asked])
    ours = verdict_of(gpuward_verify(asked, "--nonce", asked.nonce.hex(), WAIVE))

    assert nvidia["nonce"] is False and nvidia["passed"] is False
    assert ours.verdict is GpuOutcome.FAIL
    assert outcomes(ours)[NONCE] is GpuOutcome.FAIL


def test_another_gpus_certificate_is_refused_by_both(lab_case: MakeCase, pki: LabPki) -> None:
    """The report sent with the chain of another GPU of the same firmware: the chain
    and its FWID are in order, the signature is not the other GPU's."""
    case = lab_case("swapped", nonce_for("swapped"), chain=pki.device_chain_pem(pki.other_gpu()))
    (nvidia,) = nvidia_verdicts([case])
    ours = verdict_of(gpuward_verify(case, "--nonce", case.nonce.hex(), WAIVE))

    assert nvidia["cert_chain"] is True and nvidia["signature"] is False
    checks = outcomes(ours)
    assert checks[CERTIFICATE_CHAIN] is checks[FWID] is GpuOutcome.PASS
    assert checks[SIGNATURE] is GpuOutcome.FAIL
    assert ours.verdict is GpuOutcome.FAIL


def test_a_chain_to_another_root_is_refused_by_both(lab_case: MakeCase, sample: Sample) -> None:
    """The H100's genuine chain (to NVIDIA's root) where the test root is trusted."""
    case = lab_case("other-root", nonce_for("other-root"), chain=sample.chain.read_bytes())
    (nvidia,) = nvidia_verdicts([case])
    ours = verdict_of(gpuward_verify(case, "--nonce", case.nonce.hex(), WAIVE))

    assert nvidia["cert_chain"] is False
    assert outcomes(ours)[CERTIFICATE_CHAIN] is GpuOutcome.FAIL
    assert ours.verdict is GpuOutcome.FAIL


def test_a_missing_rim_is_unknown_never_a_pass(
    lab_case: MakeCase, lab_rims: tuple[bytes, bytes]
) -> None:
    """No VBIOS RIM: every driver measurement matches, and still nothing passes.
    (NVIDIA's verifier has no offline answer here: without a RIM file it asks
    NVIDIA's RIM service.)"""
    case = lab_case("no-vbios-rim", nonce_for("no-vbios-rim"))
    case.vbios_rim.unlink()
    done = gpuward_verify(case, "--nonce", case.nonce.hex(), WAIVE)
    ours = verdict_of(done)

    assert done.returncode == 3
    assert ours.verdict is GpuOutcome.UNKNOWN
    assert outcomes(ours)[VBIOS_RIM] is GpuOutcome.UNKNOWN
    judged = {m.index: m.outcome for m in ours.measurements}
    vbios = active_indexes(lab_rims[1])
    assert {judged[i] for i in vbios} == {MeasurementOutcome.UNKNOWN}
    assert {judged[i] for i in active_indexes(lab_rims[0])} == {MeasurementOutcome.MATCH}


def test_a_rim_for_other_firmware_is_not_chosen(
    lab_case: MakeCase, sample: Sample, pki: LabPki
) -> None:
    """A VBIOS RIM signed under the trusted root, but for another VBIOS version."""
    template = (sample.folder / SAMPLE_VBIOS_RIM).read_bytes()
    values = measurements(sample.report_bytes())
    other = make_rim(template, version="96.00.9F.00.02", values=values, pki=pki)
    case = lab_case("other-vbios", nonce_for("other-vbios"), vbios_rim=other)
    ours = in_process(case)
    assert ours.verdict is GpuOutcome.UNKNOWN
    assert (
        "no VBIOS RIM for 96.00.9f.00.01"
        in dict((c.name, c.detail) for c in ours.checks)[VBIOS_RIM]
    )


def test_a_rim_altered_after_signing_is_refused_by_both(
    lab_case: MakeCase, lab_rims: tuple[bytes, bytes]
) -> None:
    """One hex digit of a reference value rewritten in the signed VBIOS RIM (to
    match a changed measurement, as an attacker would)."""
    rim = lab_rims[1]
    at = rim.index(b'Hash0="') + len(b'Hash0="')
    forged = rim[:at] + (b"1" if rim[at : at + 1] != b"1" else b"2") + rim[at + 1 :]
    case = lab_case("forged-rim", nonce_for("forged-rim"), vbios_rim=forged)
    (nvidia,) = nvidia_verdicts([case])
    ours = in_process(case)

    assert nvidia["vbios_rim_signature"] is False and nvidia["passed"] is False
    assert outcomes(ours)[VBIOS_RIM] is GpuOutcome.FAIL
    assert "does not verify" in dict((c.name, c.detail) for c in ours.checks)[VBIOS_RIM]
    assert ours.verdict is GpuOutcome.FAIL
