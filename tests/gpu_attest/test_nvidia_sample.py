"""NVIDIA's own sample evidence, judged by gpuward and by NVIDIA's verifier, offline.

The sample (``verifier/samples/`` of ``nv-local-gpu-verifier`` 2.7.3) is a report
an H100 signed on driver 550.90.07 and VBIOS 96.00.9F.00.01, with its device
chain, and RIMs NVIDIA signed for driver 545.00 and VBIOS 96.00.5E.00.01 (the
ones NVIDIA's ``--test_no_gpu`` mode uses). Its signatures and chains are
genuine, but no RIM in it is for the report's firmware: NVIDIA's verifier
refuses it, naming 20 indexes, and gpuward must reach the same verdict on every
check and every index.

How the sample's dates and OCSP are treated, on both sides alike:

* Dates: NVIDIA's test mode checks certificates against its clock. The RIM
  signers (L4) expired in 2025 and the L3 CA on 2026-11-11, so today both
  verifiers refuse the RIMs as expired (checked below). To judge the rest, both
  run at 2024-07-01 00:00 UTC (``SAMPLE_TIME``), when every certificate was
  valid: NVIDIA's verifier under libfaketime (its code and clock untouched
  otherwise), gpuward with ``--at``.
* OCSP: NVIDIA's test mode queries NVIDIA's OCSP responder over the network for
  every certificate; offline that query cannot be made. NVIDIA's verifier runs
  with its OCSP step replaced by a stand-in answering "good"
  (``nvidia_peer.py``); gpuward runs with ``--no-revocation-check``, which its
  verdict shows as "not checked, waived".
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from importlib import resources
from pathlib import Path

from fleet.gpu_attestation import (
    CERTIFICATE_CHAIN,
    DRIVER,
    DRIVER_RIM,
    FWID,
    NONCE,
    SIGNATURE,
    VBIOS,
    VBIOS_RIM,
    GpuAttestationVerdict,
    GpuOutcome,
    MeasurementOutcome,
)
from server.gpu_attestation.certs import DEVICE_ROOT, RIM_ROOT
from tests.gpu_attest.evidence import (
    SAMPLE_DRIVER_RIM,
    SAMPLE_NONCE,
    SAMPLE_TIME,
    SAMPLE_VBIOS_RIM,
    Evidence,
    Sample,
)
from tests.gpu_attest.nvidia import gpuward_verify, nvidia_package, nvidia_verdicts, offline

SOURCE = {DRIVER: "Driver", VBIOS: "Firmware"}  # as NVIDIA's verifier names them
AT_SAMPLE_TIME = ("--at", f"{SAMPLE_TIME:%Y-%m-%dT%H:%M:%S}")
WAIVE = "--no-revocation-check"


def sample_case(sample: Sample) -> Evidence:
    return Evidence(
        sample.report,
        sample.chain,
        sample.folder / SAMPLE_DRIVER_RIM,
        sample.folder / SAMPLE_VBIOS_RIM,
        SAMPLE_NONCE,
    )


def verdict_of(done: subprocess.CompletedProcess[str]) -> GpuAttestationVerdict:
    assert "Traceback" not in done.stderr, done.stderr
    return GpuAttestationVerdict.from_dict(json.loads(done.stdout))


def outcomes(verdict: GpuAttestationVerdict) -> dict[str, GpuOutcome]:
    return {check.name: check.outcome for check in verdict.checks}


def test_the_sample_gets_nvidias_verdict_on_every_check_and_index(sample: Sample) -> None:
    case = sample_case(sample)
    (nvidia,) = nvidia_verdicts([case], when=SAMPLE_TIME)
    done = gpuward_verify(case, "--nonce", SAMPLE_NONCE.hex(), *AT_SAMPLE_TIME, WAIVE, rims="named")
    ours = verdict_of(done)

    assert done.returncode == 3
    assert ours.verdict is GpuOutcome.FAIL and nvidia["passed"] is False
    checks = outcomes(ours)
    # The genuine parts verify on both sides: the H100's chain, FWID, signature, nonce.
    for name, flag in ((CERTIFICATE_CHAIN, "cert_chain"), (FWID, "fwid"), (SIGNATURE, "signature"),
                       (NONCE, "nonce")):  # fmt: skip
        assert checks[name] is GpuOutcome.PASS and nvidia[flag] is True, name
    # NVIDIA's RIMs verify, but are for other firmware: a failed check on both sides.
    for name, component in ((DRIVER_RIM, "driver"), (VBIOS_RIM, "vbios")):
        assert nvidia[f"{component}_rim_signature"] is True
        assert nvidia[f"{component}_rim_chain"] is True
        assert nvidia[f"{component}_rim_version"] is False
        assert checks[name] is GpuOutcome.FAIL
    details = {c.name: c.detail for c in ours.checks}
    assert "is for driver 545.00, the report states 550.90.07" in details[DRIVER_RIM]
    assert "is for VBIOS 96.00.5e.00.01, the report states 96.00.9f.00.01" in details[VBIOS_RIM]

    # Per index: the same indexes compared, the same ones mismatched, from the same RIM.
    judged = {m.index: m for m in ours.measurements}
    assert sorted(judged) == nvidia["compared"]
    mismatched = [
        [m.index, SOURCE[m.source or ""]]
        for m in ours.measurements
        if m.outcome is MeasurementOutcome.MISMATCH
    ]
    assert mismatched == nvidia["mismatched"]
    assert len(mismatched) == 20  # the sample's RIMs and report disagree there
    assert all(
        judged[i].outcome is MeasurementOutcome.MATCH
        for i in set(nvidia["compared"]) - {i for i, _ in nvidia["mismatched"]}
    )


def test_today_both_refuse_the_samples_rims_as_expired(sample: Sample) -> None:
    case = sample_case(sample)
    (nvidia,) = nvidia_verdicts([case])  # NVIDIA's own clock
    ours = verdict_of(gpuward_verify(case, "--nonce", SAMPLE_NONCE.hex(), WAIVE, rims="named"))

    assert nvidia["driver_rim_chain"] is False
    rim = next(c for c in ours.checks if c.name == DRIVER_RIM)
    assert rim.outcome is GpuOutcome.FAIL
    assert "HCC RIM L4 Signer" in rim.detail and "expired on 2025-06-26" in rim.detail
    # The device chain is valid until 9999, on both sides.
    assert nvidia["cert_chain"] is True
    assert outcomes(ours)[CERTIFICATE_CHAIN] is GpuOutcome.PASS


def test_the_sample_folder_holds_no_rim_for_the_sample_report(sample: Sample) -> None:
    """Chosen by version from the folder, as a server would: no RIM for driver
    550.90.07 or VBIOS 96.00.9F.00.01 among the 26, so every measurement is unknown."""
    done = gpuward_verify(
        sample_case(sample), "--nonce", SAMPLE_NONCE.hex(), *AT_SAMPLE_TIME, WAIVE
    )
    ours = verdict_of(done)

    assert done.returncode == 3
    assert ours.verdict is GpuOutcome.UNKNOWN
    checks = outcomes(ours)
    assert checks[DRIVER_RIM] is checks[VBIOS_RIM] is GpuOutcome.UNKNOWN
    assert len(ours.measurements) == 64
    assert {m.outcome for m in ours.measurements} == {MeasurementOutcome.UNKNOWN}


def test_a_wrong_nonce_is_refused_by_both(sample: Sample) -> None:
    wrong = bytes(32)
    case = sample_case(sample)
    (nvidia,) = nvidia_verdicts([dataclasses.replace(case, nonce=wrong)], when=SAMPLE_TIME)
    ours = verdict_of(gpuward_verify(case, "--nonce", wrong.hex(), *AT_SAMPLE_TIME, WAIVE))

    assert nvidia["nonce"] is False
    assert outcomes(ours)[NONCE] is GpuOutcome.FAIL
    assert ours.verdict is GpuOutcome.FAIL


def test_the_verifiers_ran_where_nothing_can_be_reached(tmp_path: Path) -> None:
    """What ``offline`` gives: no route, and a connection attempt fails at once."""
    routes = subprocess.run(offline(["ip", "-j", "route", "show"]), capture_output=True, text=True)
    assert routes.returncode == 0, routes.stderr
    assert json.loads(routes.stdout or "[]") == []
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('192.0.2.1', 443), timeout=5)\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
    )
    done = subprocess.run(offline(["python3", str(probe)]), capture_output=True, text=True)
    assert done.stdout.strip() == "101"  # ENETUNREACH


def test_gpuward_trusts_the_roots_nvidia_ships_with_its_verifier() -> None:
    """The pinned roots are NVIDIA's, byte for byte, as in the wheel (``verifier/certs``)."""
    certs = nvidia_package() / "certs"
    for ours, theirs in (
        (DEVICE_ROOT, "verifier_device_root.pem"),
        (RIM_ROOT, "verifier_RIM_root.pem"),
    ):
        shipped = resources.files("server.gpu_attestation").joinpath("roots", ours).read_bytes()
        assert shipped == (certs / theirs).read_bytes()
