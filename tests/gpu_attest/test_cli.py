"""``gpuward gpu-attest verify`` for people: a readable verdict, and one clear line
on input it cannot use."""

from __future__ import annotations

from pathlib import Path

from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.gpu_attest.conftest import MakeCase
from tests.gpu_attest.evidence import Sample, nonce_for


def test_the_verdict_reads_as_a_table_of_checks_and_indexes(lab_case: MakeCase) -> None:
    case = lab_case("readable", nonce_for("readable"))
    done = gpuward(
        "gpu-attest", "verify", "--report", str(case.report), "--cert-chain", str(case.chain),
        "--rims", str(case.rims), "--device-root", str(case.device_root),
        "--rim-root", str(case.rim_root), "--nonce", case.nonce.hex(), "--no-revocation-check",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("GPU attestation: PASS (driver 550.90.07, VBIOS 96.00.9f.00.01")
    assert any(line.split()[:2] == ["revocation", "pass"] and "waived" in line for line in lines)
    assert any(line.split() == ["35", "driver", "match"] for line in lines)


def test_input_it_cannot_use_is_one_line(sample: Sample, tmp_path: Path) -> None:
    files = ["--report", str(sample.report), "--cert-chain", str(sample.chain)]
    assert_one_line_error(gpuward("gpu-attest", "verify", *files), "--rims DIR")
    assert_one_line_error(
        gpuward("gpu-attest", "verify", *files, "--rims", str(sample.folder), "--nonce", "abc"),
        "64 hex digits",
    )
    assert_one_line_error(
        gpuward("gpu-attest", "verify", *files, "--rims", str(tmp_path / "none")),
        "not a directory of RIMs",
    )
    garbage = tmp_path / "report.bin"
    garbage.write_bytes(b"\x00" * 2 * 1024 * 1024)
    too_big = ["--report", str(garbage), "--cert-chain", str(sample.chain)]
    assert_one_line_error(
        gpuward("gpu-attest", "verify", *too_big, "--rims", str(sample.folder)), "larger than"
    )
