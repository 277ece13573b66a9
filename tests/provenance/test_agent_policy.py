"""An agent whose policy requires provenance installs only bundles whose attestation,
published beside them as a TUF target, is signed by the pinned build key and names
the bundle's digest: the real agent cycle against the real server."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import TargetFile

from agent.cycle import Cycle
from agent.daemon import make_probe
from fleet.errors import GpuwardError
from keys.bundle import read_manifest
from keys.provenance import PublishedFile, attest, attestation_path, build_signer
from node.config import AgentConfig, ApplierSettings
from tests.conftest import PASSPHRASE, Site

OLD, NEW = "580.65.06", "580.82.07"
RUNFILE_URL = "https://download.nvidia.com/XFree86/Linux-x86_64/{v}/NVIDIA-Linux-x86_64-{v}.run"


def _attested(site: Site, version: str, signer: Signer) -> Path:
    """A bundle and its provenance, tracing the payload to the digest NVIDIA publishes."""
    bundle = site.bundle(version)
    payload = site.base / "payloads" / version / "libnvidia-ml.so.1"
    published = PublishedFile(
        RUNFILE_URL.format(v=version), hashlib.sha256(payload.read_bytes()).hexdigest()
    )
    attest(bundle, read_manifest(bundle), signer, published=[published])
    return bundle


def _cycle(site: Site, build_key: Path, *, require: bool = True) -> tuple[str, str]:
    """One agent cycle, the bundle left to the applier: its outcome and reason."""
    config: AgentConfig = dataclasses.replace(
        site.agent(),
        applier=ApplierSettings(mode="applier"),
        require_provenance=require,
        build_key=build_key,
    )
    outcome = Cycle(config, make_probe(config)).run().outcome
    return outcome.update, outcome.reason


@pytest.fixture
def build_signer_and_key(tmp_path: Path) -> tuple[Signer, Path]:
    keys = tmp_path / "build-keys"
    return build_signer(keys, lambda: PASSPHRASE), keys / "build.pub.json"


def test_a_bundle_without_provenance_is_refused_and_one_with_it_staged(
    site: Site, build_signer_and_key: tuple[Signer, Path]
) -> None:
    _, build_key = build_signer_and_key
    published = site.publish(OLD)
    assert not attestation_path(site.base / f"nvidia-{OLD}.bundle").exists()

    update, reason = _cycle(site, build_key)
    assert update == "refused"
    assert f"{published.target_path} has no provenance" in reason
    assert "require_provenance" in reason
    # The refusal is the policy's: without it the same bundle is taken.
    assert _cycle(site, build_key, require=False)[0] == "staged"


def test_an_attested_bundle_is_staged(
    site: Site, build_signer_and_key: tuple[Signer, Path]
) -> None:
    signer, build_key = build_signer_and_key
    published = site.repo.add_bundle(_attested(site, NEW, signer), lambda: PASSPHRASE)
    targets = site.repo.targets("R580").signed.targets
    assert published.provenance == f"{published.target_path}.provenance.json"
    assert published.provenance in targets
    assert [p.target_path for p in site.repo.published()] == [published.target_path]

    update, reason = _cycle(site, build_key)
    assert update == "staged", reason
    assert published.target_path in reason

    site.repo.remove_bundle(published.target_path, lambda: PASSPHRASE)
    assert published.provenance not in site.repo.targets("R580").signed.targets


def test_provenance_signed_by_another_key_is_refused(
    site: Site, build_signer_and_key: tuple[Signer, Path]
) -> None:
    _, build_key = build_signer_and_key
    site.repo.add_bundle(_attested(site, NEW, CryptoSigner.generate_ed25519()), lambda: PASSPHRASE)

    update, reason = _cycle(site, build_key)
    assert update == "refused"
    assert "not signed by the build key" in reason


def test_provenance_of_another_bundle_is_refused_at_publishing_and_by_the_agent(
    site: Site, build_signer_and_key: tuple[Signer, Path]
) -> None:
    signer, build_key = build_signer_and_key
    old = site.repo.add_bundle(_attested(site, OLD, signer), lambda: PASSPHRASE)
    new_bundle = site.bundle(NEW)
    old_attestation = attestation_path(site.base / f"nvidia-{OLD}.bundle")
    shutil.copyfile(old_attestation, attestation_path(new_bundle))
    with pytest.raises(GpuwardError, match="provenance of another bundle"):
        site.repo.add_bundle(new_bundle, lambda: PASSPHRASE)

    # A holder of the branch key can still publish it so; the agent refuses it.
    attestation_path(new_bundle).unlink()
    new = site.repo.add_bundle(new_bundle, lambda: PASSPHRASE)
    data = old_attestation.read_bytes()
    info = TargetFile.from_data(f"{new.target_path}.provenance.json", data, ["sha256"])
    site.repo.store_target(old_attestation, info.path, info.hashes["sha256"])
    branch = site.repo.targets("R580")
    branch.signed.targets[info.path] = info
    site.repo.bump(branch, "R580")
    site.repo.sign_and_write(branch, lambda: PASSPHRASE, role="R580")
    site.repo.publish_snapshot({"R580": branch.signed.version})

    update, reason = _cycle(site, build_key)
    assert update == "refused"
    assert f"{new.target_path}: provenance is for another bundle" in reason
    assert old.sha256 in reason


def test_a_published_digest_the_payload_lacks_gets_no_provenance(
    site: Site, build_signer_and_key: tuple[Signer, Path]
) -> None:
    signer, _ = build_signer_and_key
    bundle = site.bundle(NEW)
    wrong = PublishedFile(RUNFILE_URL.format(v=NEW), hashlib.sha256(b"another").hexdigest())
    with pytest.raises(GpuwardError, match="no payload file has its published sha256"):
        attest(bundle, read_manifest(bundle), signer, published=[wrong])
    assert not attestation_path(bundle).exists()


def test_requiring_provenance_without_a_build_key_is_a_config_error(tmp_path: Path) -> None:
    doc = {
        "node_id": "n1",
        "server_url": "https://updates.example",
        "trusted_root": "root.json",
        "branch": "R580",
        "require_provenance": True,
    }
    with pytest.raises(GpuwardError, match="require_provenance needs build_key"):
        AgentConfig.from_dict(doc, tmp_path)


def test_a_new_build_key_is_not_sealed_with_a_weak_passphrase(tmp_path: Path) -> None:
    with pytest.raises(GpuwardError, match="too weak"):
        build_signer(tmp_path / "keys", lambda: "build")
    assert not (tmp_path / "keys" / "build.pub.json").exists()
