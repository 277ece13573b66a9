"""Hostile bundles: whatever the tar holds, nothing lands outside the slot."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.unpack import BadBundle, unpack_bundle
from fleet.manifest import BundleManifest, PayloadFile
from keys.bundle import build_bundle, read_manifest

PAYLOAD = b"driver bytes\n"


def _manifest(name: str = "libnvidia-ml.so.1", data: bytes = PAYLOAD) -> BundleManifest:
    return BundleManifest(
        driver_version="580.95.05",
        branch="R580",
        payload_kind="files",
        files=(PayloadFile(name, len(data), hashlib.sha256(data).hexdigest()),),
        module_flavour="open",
        architectures=("Hopper",),
        kernels=(),
        dkms=True,
        cuda_version="13.0",
        fabric_manager=None,
    )


def _tar(path: Path, manifest: BundleManifest, add: Callable[[tarfile.TarFile], None]) -> Path:
    with tarfile.open(path, "w") as tar:
        raw = json.dumps(manifest.to_dict()).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
        add(tar)
    return path


def _file(name: str, data: bytes = PAYLOAD) -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    return add


def _special(name: str, kind: bytes, linkname: str = "") -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        tar.addfile(info)

    return add


def test_built_bundle_unpacks(tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    (payload / "lib").mkdir(parents=True)
    (payload / "lib" / "libnvidia-ml.so.1").write_bytes(PAYLOAD)
    bundle = tmp_path / "b.bundle"
    build_bundle(
        payload,
        driver_version="580.95.05",
        branch="R580",
        payload_kind="files",
        output=bundle,
        dkms=True,
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    unpack_bundle(bundle, read_manifest(bundle), dest)
    assert (dest / "payload/lib/libnvidia-ml.so.1").read_bytes() == PAYLOAD


HOSTILE = {
    "path traversal": (_manifest(), _file("payload/../../escaped")),
    "absolute path": (_manifest(), _file("/tmp/escaped")),
    "symlink": (_manifest(), _special("payload/libnvidia-ml.so.1", tarfile.SYMTYPE, "/etc/shadow")),
    "hard link": (
        _manifest(),
        _special("payload/libnvidia-ml.so.1", tarfile.LNKTYPE, "/etc/shadow"),
    ),
    "device": (_manifest(), _special("payload/libnvidia-ml.so.1", tarfile.CHRTYPE)),
    "fifo": (_manifest(), _special("payload/libnvidia-ml.so.1", tarfile.FIFOTYPE)),
    "directory": (_manifest(), _special("payload/dir", tarfile.DIRTYPE)),
    "unlisted file": (_manifest(), _file("payload/extra.so")),
    "content differs": (_manifest(), _file("payload/libnvidia-ml.so.1", b"driver bytez\n")),
    "size differs": (_manifest(), _file("payload/libnvidia-ml.so.1", PAYLOAD + b"!")),
    "file missing": (_manifest(), lambda tar: None),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_member_is_refused(tmp_path: Path, case: str) -> None:
    manifest, add = HOSTILE[case]
    bundle = _tar(tmp_path / "hostile.bundle", manifest, add)
    dest = tmp_path / "slot" / "dest"
    dest.mkdir(parents=True)
    with pytest.raises(BadBundle):
        unpack_bundle(bundle, manifest, dest)
    assert not (tmp_path / "escaped").exists()
    assert not Path("/tmp/escaped").exists()


def test_duplicate_member_is_refused(tmp_path: Path) -> None:
    manifest = _manifest()

    def twice(tar: tarfile.TarFile) -> None:
        _file("payload/libnvidia-ml.so.1")(tar)
        _file("payload/libnvidia-ml.so.1", b"other bytes!\n")(tar)

    bundle = _tar(tmp_path / "dup.bundle", manifest, twice)
    (tmp_path / "d").mkdir()
    with pytest.raises(BadBundle, match="listed once"):
        unpack_bundle(bundle, manifest, tmp_path / "d")


def test_inner_manifest_must_equal_the_signed_one(tmp_path: Path) -> None:
    inner = _manifest()
    bundle = _tar(tmp_path / "b.bundle", inner, _file("payload/libnvidia-ml.so.1"))
    signed = dataclasses.replace(inner, driver_version="580.82.07")
    (tmp_path / "d").mkdir()
    with pytest.raises(BadBundle, match="differs from the signed one"):
        unpack_bundle(bundle, signed, tmp_path / "d")


@pytest.mark.parametrize("keep", [0, 100, 512, 1000, 1536, 1600, 2047])
def test_truncated_bundle_is_refused(tmp_path: Path, keep: int) -> None:
    manifest = _manifest()
    bundle = _tar(tmp_path / "b.bundle", manifest, _file("payload/libnvidia-ml.so.1"))
    bundle.write_bytes(bundle.read_bytes()[:keep])
    (tmp_path / "d").mkdir()
    with pytest.raises(BadBundle):
        unpack_bundle(bundle, manifest, tmp_path / "d")


def test_manifest_not_first_is_refused(tmp_path: Path) -> None:
    manifest = _manifest()
    bundle = tmp_path / "b.bundle"
    with tarfile.open(bundle, "w") as tar:
        _file("payload/libnvidia-ml.so.1")(tar)
    (tmp_path / "d").mkdir()
    with pytest.raises(BadBundle, match="does not start with"):
        unpack_bundle(bundle, manifest, tmp_path / "d")
