"""Sealed offline keys: useless without the passphrase, tamper-evident."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet.errors import GpuwardError
from keys.image_repo import ImageRepository
from keys.sealed import WrongPassphrase, seal, unseal

PEM = b"-----BEGIN PRIVATE KEY-----\nnot really\n-----END PRIVATE KEY-----\n"


def test_round_trip_and_no_clear_text() -> None:
    sealed = seal(PEM, "pass phrase")
    assert b"PRIVATE KEY" not in sealed
    assert unseal(sealed, "pass phrase", where="k") == PEM


def test_wrong_passphrase_is_named() -> None:
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        unseal(seal(PEM, "right"), "wrong", where="k")


def test_flipped_ciphertext_bit_is_detected() -> None:
    doc = json.loads(seal(PEM, "right"))
    box = bytearray(bytes.fromhex(doc["secretbox"]))
    box[-1] ^= 1
    doc["secretbox"] = box.hex()
    with pytest.raises(WrongPassphrase):
        unseal(json.dumps(doc).encode(), "right", where="k")


def test_absurd_kdf_cost_in_a_tampered_file_is_refused() -> None:
    doc = json.loads(seal(PEM, "right"))
    doc["kdf"]["memlimit"] = 2**40
    with pytest.raises(GpuwardError, match="unreasonable"):
        unseal(json.dumps(doc).encode(), "right", where="k")


def test_garbage_file_is_not_a_key() -> None:
    with pytest.raises(GpuwardError, match="not a gpuward sealed key"):
        unseal(b"\x00garbage", "right", where="k")


def test_repository_keys_on_disk(_template_repo: Path) -> None:
    keys = _template_repo / "keys"
    for name in ("root-1", "root-2", "root-3", "targets-1"):
        text = (keys / f"{name}.key").read_bytes()
        assert b"PRIVATE KEY" not in text  # offline keys are sealed
    for name in ("snapshot-1", "timestamp-1"):
        assert b"PRIVATE KEY" in (keys / f"{name}.key").read_bytes()  # online, unattended
    for path in keys.glob("*.key"):
        assert path.stat().st_mode & 0o777 == 0o600


def test_wrong_passphrase_publishes_nothing(_template_repo: Path, tmp_path: Path) -> None:
    import shutil

    from keys.bundle import build_bundle

    root = tmp_path / "repo"
    shutil.copytree(_template_repo, root)
    repo = ImageRepository(root)
    before = sorted(p.name for p in repo.metadata_dir.iterdir())
    (tmp_path / "p").write_bytes(b"x")
    bundle = tmp_path / "b.bundle"
    build_bundle(
        tmp_path / "p",
        driver_version="580.95.05",
        branch="R580",
        payload_kind="files",
        output=bundle,
        dkms=True,
    )
    with pytest.raises(WrongPassphrase):
        repo.add_bundle(bundle, lambda: "not the passphrase")
    assert sorted(p.name for p in repo.metadata_dir.iterdir()) == before
    assert repo.published() == []
