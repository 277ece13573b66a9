"""RIMs and OCSP responses through the signed channel: ``gpuward repo add-rims``
publishes them as targets, the server judges GPUs with them (no ``gpu_rims``
folder needed) once the targets signature and each file's hashes check, a
tampered one is refused and the configured folder used instead, and a mirror
export carries them, verified, into an air gap."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from tuf.api.metadata import Metadata, Targets

from fleet.gpu_attestation import (
    DRIVER_RIM,
    REVOCATION,
    GpuAttestationVerdict,
    GpuEvidence,
    GpuOutcome,
)
from gpuward.cli.mirror_cmd import verified_targets
from keys.image_repo import ImageRepository
from server.gpu_attestation.spdm import read_report
from server.gpu_attestation.verifier import GpuEvidenceVerifier
from server.gpu_rims import published_gpu_rims
from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.gpu_attest.conftest import MakeCase
from tests.gpu_attest.evidence import Evidence, LabPki, good_responses, nonce_for

NOW = datetime.now(UTC)


@pytest.fixture
def case(lab_case: MakeCase, request: pytest.FixtureRequest) -> Evidence:
    return lab_case(request.node.name[:40], nonce_for(request.node.name))


@pytest.fixture
def repo(_template_repo: Path, tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(_template_repo, root)
    return root


def publish(repo: Path, case: Evidence, pki: LabPki, tmp_path: Path) -> list[dict[str, object]]:
    ocsp = tmp_path / "ocsp"
    ocsp.mkdir()
    for name, data in good_responses(pki, NOW - timedelta(hours=1)).items():
        (ocsp / name).write_bytes(data)
    done = gpuward(
        "repo", "add-rims", str(case.rims), "--ocsp", str(ocsp), "--repo", str(repo), "--json"
    )
    assert done.returncode == 0, done.stderr
    published: list[dict[str, object]] = json.loads(done.stdout)
    return published


def judge(
    case: Evidence, repo: Path, *, rims: Path | None = None, waive: bool = False
) -> GpuAttestationVerdict:
    verifier = GpuEvidenceVerifier.load(
        rims, case.device_root, case.rim_root, waive_revocation=waive, repo=repo
    )
    evidence = GpuEvidence(
        0, "GPU-0", read_report(case.report.read_bytes()), case.chain.read_bytes()
    )
    return verifier.verify(evidence, case.nonce, NOW)


def check(verdict: GpuAttestationVerdict, name: str) -> tuple[GpuOutcome, str]:
    found = next(c for c in verdict.checks if c.name == name)
    return found.outcome, found.detail


def test_published_rims_and_ocsp_judge_gpus_without_a_rim_folder(
    case: Evidence, pki: LabPki, repo: Path, tmp_path: Path
) -> None:
    published = publish(repo, case, pki, tmp_path)
    assert {p["target"] for p in published} >= {
        "gpu-rims/driver.swidtag",
        "gpu-rims/vbios.swidtag",
        "gpu-rims/ocsp-0.der",
    }
    verdict = judge(case, repo)
    assert verdict.verdict is GpuOutcome.PASS, verdict.reasons()
    assert check(verdict, REVOCATION)[1].startswith("checked: 7 certificates good per OCSP")
    # Publishing the same RIMs again signs nothing new.
    again = gpuward("repo", "add-rims", str(case.rims), "--repo", str(repo), "--json")
    assert again.returncode == 0, again.stderr
    assert [p["changed"] for p in json.loads(again.stdout)] == [False, False]


def test_a_tampered_rim_target_is_refused_and_the_configured_rims_used(
    case: Evidence, pki: LabPki, repo: Path, tmp_path: Path
) -> None:
    publish(repo, case, pki, tmp_path)
    [served] = (repo / "targets/gpu-rims").glob("*.driver.swidtag")
    served.write_bytes(served.read_bytes().replace(b"</SoftwareIdentity>", b"<!-- -->\n</Soft"
                                                    b"wareIdentity>"))  # fmt: skip
    with capture_logs() as logs:
        verdict = judge(case, repo)
    [refused] = [e for e in logs if e["event"] == "gpu_rim_target_refused"]
    assert refused["target"] == "gpu-rims/driver.swidtag"
    assert "LengthOrHashMismatchError" in refused["reason"]
    assert verdict.verdict is GpuOutcome.UNKNOWN
    assert check(verdict, DRIVER_RIM)[0] is GpuOutcome.UNKNOWN
    # The folder configured as gpu_rims is what the server falls back to.
    assert judge(case, repo, rims=case.rims).verdict is GpuOutcome.PASS


def test_targets_whose_signature_fails_publish_nothing(
    case: Evidence, pki: LabPki, repo: Path, tmp_path: Path
) -> None:
    publish(repo, case, pki, tmp_path)
    image = ImageRepository(repo)
    version = image.targets().signed.version
    signed = repo / "metadata" / f"{version}.targets.json"
    targets = Metadata[Targets].from_bytes(signed.read_bytes())
    targets.signed.targets["gpu-rims/driver.swidtag"].length += 1  # its signature no longer fits
    signed.write_bytes(targets.to_bytes())
    with capture_logs() as logs:
        found = published_gpu_rims(repo)
    assert found.rims == () and found.responses == ()
    assert [e["event"] for e in logs] == ["gpu_rims_refused"]
    assert "UnsignedMetadataError" in logs[0]["reason"]


def test_a_mirror_export_carries_them_verified(
    case: Evidence, pki: LabPki, repo: Path, tmp_path: Path
) -> None:
    publish(repo, case, pki, tmp_path)
    out = tmp_path / "mirror"
    done = gpuward("mirror", "export", "--repo", str(repo), "--to", str(out), "--json")
    assert done.returncode == 0, done.stderr
    verified = verified_targets(out, repo / "metadata" / "1.root.json")
    assert "gpu-rims/driver.swidtag" in verified and "gpu-rims/ocsp-6.der" in verified
    # The export is laid out as a repository: the server inside reads it as it is.
    carried = published_gpu_rims(out / "v1/repo")
    assert len(carried.rims) == 2 and len(carried.responses) == len(pki.links())


def test_files_the_server_could_not_use_are_refused_before_signing(
    case: Evidence, repo: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "rims"
    folder.mkdir()
    (folder / "not-a-rim.swidtag").write_text("<html/>")
    assert_one_line_error(
        gpuward("repo", "add-rims", str(folder), "--repo", str(repo)), "is not a SWID tag"
    )
    (folder / "not-a-rim.swidtag").unlink()
    assert_one_line_error(
        gpuward("repo", "add-rims", str(folder), "--repo", str(repo)), "holds no *.swidtag"
    )
    ocsp = tmp_path / "ocsp"
    ocsp.mkdir()
    (ocsp / "junk.der").write_bytes(b"junk")
    assert_one_line_error(
        gpuward("repo", "add-rims", str(case.rims), "--ocsp", str(ocsp), "--repo", str(repo)),
        "is not a DER OCSP response",
    )
    assert ImageRepository(repo).gpu_rim_targets() == {}  # nothing was signed
