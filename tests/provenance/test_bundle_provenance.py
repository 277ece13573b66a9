"""Bundles of NVIDIA's Debian 535 packages are reproducible and carry verifiable provenance.

The provenance is checked with in-toto's own verification (``in_toto.models.metadata``),
not gpuward's, and the digests it names are compared with what apt itself reads from
Debian's signed index.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from in_toto.exceptions import SignatureVerificationError
from in_toto.models.metadata import Envelope, Metadata

from tests.conftest import PASSPHRASE
from tests.debian_nonfree import NEW_535, apt_lists, index_sha256
from tests.installers.debs import DRIVER, SUPPORT, deb_payload


def _lists_copy(dest: Path) -> Path:
    """A private copy of the apt lists the packages were fetched with, read by the build."""
    dest.mkdir()
    for path in apt_lists().iterdir():
        if path.name.endswith("_InRelease") or "_Packages" in path.name:
            shutil.copyfile(path, dest / path.name)
    return dest


def _env() -> dict[str, str]:
    return {**os.environ, "GPUWARD_KEY_PASSPHRASE": PASSPHRASE}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def lists(tmp_path: Path) -> Path:
    deb_payload(NEW_535, tmp_path / "warm")  # fetches the packages, so apt's lists exist
    return _lists_copy(tmp_path / "lists")


def test_two_builds_are_byte_identical_and_their_provenance_verifies_with_in_toto(
    tmp_path: Path, lists: Path
) -> None:
    keys = tmp_path / "build-keys"
    options = ("--build-keys", str(keys), "--apt-lists", str(lists))
    first = tmp_path / "one" / "nvidia-535.261.03.bundle"
    _built(deb_payload(NEW_535, tmp_path / "one" / "payload"), first, *options)
    # The second build's payload files have other times and modes, and it runs later.
    payload = deb_payload(NEW_535, tmp_path / "two" / "payload")
    for i, path in enumerate(sorted(payload.iterdir())):
        os.utime(path, (1_000_000 + i, 2_000_000_000 - i))
        path.chmod(0o600 if i % 2 else 0o755)
    second = tmp_path / "two" / first.name
    _built(payload, second, *options)

    assert _sha256(first) == _sha256(second)
    first_att = first.with_name(first.name + ".provenance.json")
    second_att = second.with_name(second.name + ".provenance.json")
    assert first_att.read_bytes() == second_att.read_bytes()

    # in-toto's own reading and verification of the DSSE envelope, with the build key.
    envelope = Metadata.from_dict(json.loads(first_att.read_bytes()))
    assert isinstance(envelope, Envelope)
    build_key = json.loads((keys / "build.pub.json").read_bytes())["key"]
    envelope.verify_signature(build_key)
    statement = json.loads(envelope.payload)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"] == [{"name": first.name, "digest": {"sha256": _sha256(first)}}]

    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    debs = {d["uri"]: d["digest"]["sha256"] for d in deps if d.get("uri", "").startswith("pkg:")}
    expected = {
        f"pkg:deb/debian/{name}@{version}?arch=": index_sha256(name, version)
        for name, version in [*((n, NEW_535) for n in DRIVER), *SUPPORT]
    }
    assert {uri.rsplit("=", 1)[0] + "=": sha for uri, sha in debs.items()} == expected
    # Each .deb's index and the InRelease signing it are named by digest.
    indexes = {d["name"]: d for d in deps if d["name"].endswith("/Packages")}
    releases = {d["name"]: d["digest"]["sha256"] for d in deps if d["name"].endswith("InRelease")}
    assert "deb.debian.org/debian/dists/bookworm/non-free/binary-amd64/Packages" in indexes
    for index in indexes.values():
        signed_by = index["annotations"]["signedBy"]
        assert releases[signed_by] == _sha256(lists / signed_by.replace("/", "_"))


def test_in_toto_rejects_an_envelope_signed_by_another_key(tmp_path: Path, lists: Path) -> None:
    bundle = _built(deb_payload(NEW_535, tmp_path / "payload"), tmp_path / "b.bundle",
                    "--build-keys", str(tmp_path / "keys"), "--apt-lists", str(lists))  # fmt: skip
    attestation = json.loads(bundle.with_name(bundle.name + ".provenance.json").read_bytes())
    other = _other_key(tmp_path)
    with pytest.raises(SignatureVerificationError):
        Metadata.from_dict(attestation).verify_signature(other)


def _other_key(tmp_path: Path) -> dict[str, str]:
    from securesystemslib.signer import CryptoSigner

    key = CryptoSigner.generate_ed25519().public_key
    return {**key.to_dict(), "keyid": key.keyid}


def _build(payload: Path, output: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """``gpuward bundle build`` of a 535 .deb payload, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "gpuward", "bundle", "build", str(payload),
         "--driver-version", "535.261.03", "--branch", "R535", "--payload-kind", "deb",
         "--dkms", "--module-flavour", "proprietary", "-o", str(output), *options],
        capture_output=True, text=True, env=_env(), timeout=120,
    )  # fmt: skip


def _built(payload: Path, output: Path, *options: str) -> Path:
    done = _build(payload, output, *options)
    assert done.returncode == 0, done.stderr
    return output


def test_a_deb_the_signed_index_does_not_list_gets_no_provenance(
    tmp_path: Path, lists: Path
) -> None:
    payload = deb_payload(NEW_535, tmp_path / "payload")
    smi = payload / "nvidia-smi_amd64.deb"
    smi.write_bytes(smi.read_bytes() + b"\0")  # one byte more than Debian published
    done = _build(payload, tmp_path / "b.bundle", "--build-keys", str(tmp_path / "k"),
                  "--apt-lists", str(lists))  # fmt: skip
    assert done.returncode != 0
    assert "nvidia-smi_amd64.deb" in done.stderr
    assert "in no Packages index" in done.stderr
    assert not (tmp_path / "b.bundle.provenance.json").exists()
    assert not (tmp_path / "b.bundle").exists()


def test_an_index_whose_inrelease_signature_fails_vouches_for_nothing(
    tmp_path: Path, lists: Path
) -> None:
    release = lists / "deb.debian.org_debian_dists_bookworm_InRelease"
    release.write_text(release.read_text().replace("Suite: oldstable", "Suite: stable", 1))
    payload = deb_payload(NEW_535, tmp_path / "payload")
    done = _build(payload, tmp_path / "b.bundle", "--build-keys", str(tmp_path / "k"),
                  "--apt-lists", str(lists))  # fmt: skip
    assert done.returncode != 0
    assert "signature does not verify" in done.stderr
    assert not (tmp_path / "b.bundle.provenance.json").exists()
    assert not (tmp_path / "b.bundle").exists()


def test_provenance_inputs_without_a_build_key_are_refused(tmp_path: Path, lists: Path) -> None:
    payload = deb_payload(NEW_535, tmp_path / "payload")
    done = _build(payload, tmp_path / "b.bundle", "--apt-lists", str(lists))
    assert done.returncode != 0
    assert "give --build-keys DIR too" in done.stderr
    assert not (tmp_path / "b.bundle").exists()
