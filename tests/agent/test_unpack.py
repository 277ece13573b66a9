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

from applier.unpack import BadBundle, unpack_bundle
from fleet.manifest import BundleManifest, PayloadFile
from keys.bundle import build_bundle, check_bundle, read_manifest

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


Write = Callable[[Path], None]


def _bundle(manifest: BundleManifest, add: Callable[[tarfile.TarFile], None]) -> Write:
    def write(path: Path) -> None:
        _tar(path, manifest, add)

    return write


def _files(*members: tuple[str, bytes]) -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        for name, data in members:
            _file(name, data)(tar)

    return add


def _truncated(keep: int) -> Write:
    def write(path: Path) -> None:
        _tar(path, _manifest(), _file("payload/libnvidia-ml.so.1"))
        path.write_bytes(path.read_bytes()[:keep])

    return write


def _manifest_not_first(path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        _file("payload/libnvidia-ml.so.1")(tar)


def _inner_manifest(raw: bytes) -> Write:
    def write(path: Path) -> None:
        with tarfile.open(path, "w") as tar:
            _file("manifest.json", raw)(tar)
            _file("payload/libnvidia-ml.so.1")(tar)

    return write


def _nested(*names: str) -> tuple[BundleManifest, Write]:
    """A manifest listing ``lib`` and ``lib/x``: one must be a file and a folder."""
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    manifest = dataclasses.replace(
        _manifest(), files=tuple(PayloadFile(n, len(PAYLOAD), digest) for n in names)
    )
    return manifest, _bundle(manifest, _files(*((f"payload/{n}", PAYLOAD) for n in names)))


# Every bundle a node refuses, with the manifest it is published under (the one
# inside it, as ``repo add`` signs it), each with the reason given. The applier's
# tests (tests/applier/test_hostile_bundles.py) sign each and spool it to a node;
# tests/keys/test_publish_hostile.py hands each to ``repo add`` and ``repo stage``.
HOSTILE: dict[str, tuple[BundleManifest, Write, str]] = {
    "path traversal": (
        _manifest(),
        _bundle(_manifest(), _file("payload/../../escaped")),
        "payload/../../escaped: not listed once in the manifest",
    ),
    "absolute path": (
        _manifest(),
        _bundle(_manifest(), _file("/tmp/escaped")),
        "/tmp/escaped: not listed once in the manifest",
    ),
    "symlink": (
        _manifest(),
        _bundle(_manifest(), _special("payload/libnvidia-ml.so.1", tarfile.SYMTYPE, "/etc/shadow")),
        "payload/libnvidia-ml.so.1: only regular files are allowed in a bundle",
    ),
    "hard link": (
        _manifest(),
        _bundle(_manifest(), _special("payload/libnvidia-ml.so.1", tarfile.LNKTYPE, "/etc/shadow")),
        "payload/libnvidia-ml.so.1: only regular files are allowed in a bundle",
    ),
    "device": (
        _manifest(),
        _bundle(_manifest(), _special("payload/libnvidia-ml.so.1", tarfile.CHRTYPE)),
        "payload/libnvidia-ml.so.1: only regular files are allowed in a bundle",
    ),
    "fifo": (
        _manifest(),
        _bundle(_manifest(), _special("payload/libnvidia-ml.so.1", tarfile.FIFOTYPE)),
        "payload/libnvidia-ml.so.1: only regular files are allowed in a bundle",
    ),
    "directory": (
        _manifest(),
        _bundle(_manifest(), _special("payload/dir", tarfile.DIRTYPE)),
        "payload/dir: only regular files are allowed in a bundle",
    ),
    "unlisted file": (
        _manifest(),
        _bundle(_manifest(), _file("payload/extra.so")),
        "payload/extra.so: not listed once in the manifest",
    ),
    "content differs": (
        _manifest(),
        _bundle(_manifest(), _file("payload/libnvidia-ml.so.1", b"driver bytez\n")),
        "payload/libnvidia-ml.so.1: digest differs from the manifest",
    ),
    "size differs": (
        _manifest(),
        _bundle(_manifest(), _file("payload/libnvidia-ml.so.1", PAYLOAD + b"!")),
        "payload/libnvidia-ml.so.1: size differs from the manifest",
    ),
    "file missing": (
        _manifest(),
        _bundle(_manifest(), lambda tar: None),
        "bundle lacks payload/libnvidia-ml.so.1",
    ),
    "duplicate member": (
        _manifest(),
        _bundle(
            _manifest(),
            _files(
                ("payload/libnvidia-ml.so.1", PAYLOAD),
                ("payload/libnvidia-ml.so.1", b"other bytes!\n"),
            ),
        ),
        "payload/libnvidia-ml.so.1: not listed once in the manifest",
    ),
    "manifest not first": (
        _manifest(),
        _manifest_not_first,
        "bundle does not start with manifest.json",
    ),
    "manifest not JSON": (
        _manifest(),
        _inner_manifest(b"{not json"),
        "bundle manifest is not JSON",
    ),
    "manifest of a newer schema": (
        _manifest(),
        _inner_manifest(json.dumps({**_manifest().to_dict(), "schema": 4}).encode()),
        "unsupported schema 4",
    ),
    "lib, then lib/x": (
        *_nested("lib", "lib/x"),
        "payload/lib: a file in the archive where a folder must be",
    ),
    "lib/x, then lib": (
        *_nested("lib/x", "lib"),
        "payload/lib: a folder in the archive where a file must be",
    ),
    **{
        f"truncated to {keep} bytes": (_manifest(), _truncated(keep), reason)
        for keep, reason in [
            (0, "bundle is not a readable tar (empty file)"),
            (100, "bundle is not a readable tar"),
            (512, "bundle is not a readable tar (unexpected end of data)"),
            (1000, "bundle is not a readable tar"),
            (1536, "bundle is not a readable tar (unexpected end of data)"),
            (1600, "bundle is not a readable tar (unexpected end of data)"),
            (2047, "bundle is not a readable tar (unexpected end of data)"),
        ]
    },
}


def hostile_bundle(case: str, path: Path) -> tuple[Path, BundleManifest, str]:
    """The bundle of ``case`` written to ``path``; its manifest and the node's reason."""
    manifest, write, reason = HOSTILE[case]
    write(path)
    return path, manifest, reason


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_bundle_is_refused_alike_by_nodes_and_publishers(
    tmp_path: Path, case: str
) -> None:
    bundle, manifest, reason = hostile_bundle(case, tmp_path / "hostile.bundle")
    dest = tmp_path / "slot" / "dest"
    dest.mkdir(parents=True)
    with pytest.raises(BadBundle) as node:
        unpack_bundle(bundle, manifest, dest)
    with pytest.raises(BadBundle) as publisher:
        check_bundle(bundle)  # what building and publishing run before signing

    assert reason in str(node.value)
    assert str(publisher.value) == str(node.value)
    assert not (tmp_path / "escaped").exists()
    assert not Path("/tmp/escaped").exists()


def test_inner_manifest_must_equal_the_signed_one(tmp_path: Path) -> None:
    inner = _manifest()
    bundle = _tar(tmp_path / "b.bundle", inner, _file("payload/libnvidia-ml.so.1"))
    signed = dataclasses.replace(inner, driver_version="580.82.07")
    (tmp_path / "d").mkdir()
    with pytest.raises(BadBundle, match="differs from the signed one"):
        unpack_bundle(bundle, signed, tmp_path / "d")
