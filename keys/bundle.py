"""Building driver bundles, and reading the manifest out of one.

A bundle is an uncompressed tar: ``manifest.json`` first, then the payload files
under ``payload/``. Driver packages are already compressed, and an uncompressed
tar cannot hide a decompression bomb. Builds are reproducible (fixed owners,
modes and times, sorted names) so the same inputs give the same digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from fleet.errors import GpuwardError, InvalidDocument
from fleet.manifest import MANIFEST_NAME, PAYLOAD_DIR, BundleManifest, PayloadFile

MAX_MANIFEST = 4 * 1024 * 1024
_CHUNK = 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _payload_files(payload: Path) -> list[tuple[str, Path]]:
    if payload.is_file():
        return [(payload.name, payload)]
    if payload.is_dir():
        files = sorted(
            (p.relative_to(payload).as_posix(), p)
            for p in payload.rglob("*")
            if p.is_file() and not p.is_symlink()
        )
        if not files:
            raise GpuwardError(f"payload directory {payload} holds no files")
        return files
    raise GpuwardError(f"payload {payload} not found: give a file or a directory")


def build_bundle(
    payload: Path, *, driver_version: str, branch: str, payload_kind: str, output: Path
) -> BundleManifest:
    """Write a bundle of ``payload`` (a file or a directory) to ``output``."""
    files = _payload_files(payload)
    manifest = BundleManifest.from_dict(
        {
            "schema": 1,
            "driver_version": driver_version,
            "branch": branch,
            "payload_kind": payload_kind,
            "files": [
                PayloadFile(name, path.stat().st_size, sha256_file(path)).to_dict()
                for name, path in files
            ],
        }
    )
    manifest_bytes = json.dumps(manifest.to_dict(), indent=2, sort_keys=True).encode()
    tmp = output.with_name(f".{output.name}.partial")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, MANIFEST_NAME, io.BytesIO(manifest_bytes), len(manifest_bytes))
        for name, path in files:
            with path.open("rb") as f:
                _add(tar, f"{PAYLOAD_DIR}/{name}", f, path.stat().st_size)
    tmp.replace(output)
    return manifest


def _add(tar: tarfile.TarFile, name: str, data: io.BufferedIOBase | io.BytesIO, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uname = info.gname = "root"
    tar.addfile(info, data)


def read_manifest(bundle: Path) -> BundleManifest:
    """The manifest inside ``bundle``; it must be the tar's first member."""
    try:
        with tarfile.open(bundle, "r:") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST_NAME or not first.isfile():
                raise GpuwardError(f"{bundle}: not a gpuward bundle (no leading {MANIFEST_NAME})")
            if first.size > MAX_MANIFEST:
                raise GpuwardError(f"{bundle}: manifest larger than {MAX_MANIFEST} bytes")
            extracted = tar.extractfile(first)
            assert extracted is not None  # a regular file always has content
            raw = extracted.read()
    except FileNotFoundError:
        raise GpuwardError(f"bundle {bundle} not found") from None
    except tarfile.TarError as exc:
        raise GpuwardError(f"{bundle}: not a readable bundle ({exc})") from None
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise InvalidDocument(f"{bundle}: manifest is not JSON ({exc})") from None
    return BundleManifest.from_dict(doc, where=f"{bundle}: manifest")
