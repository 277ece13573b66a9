"""Building driver bundles, and reading the manifest out of one.

A bundle is an uncompressed tar: ``manifest.json`` first, then the payload files
under ``payload/``. Driver packages are already compressed, and an uncompressed
tar cannot hide a decompression bomb. Builds are reproducible (fixed owners,
modes and times, sorted names) so the same inputs give the same digest.

The manifest is checked against the compatibility catalog before anything is
written: a bundle that claims an architecture its branch dropped, or
proprietary modules for Blackwell, is a mistake to catch on the operator's
workstation, not on a thousand nodes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

from fleet.catalog import Catalog, default_catalog
from fleet.compat import bundle_problems, supported_architectures
from fleet.errors import GpuwardError, InvalidDocument
from fleet.manifest import MANIFEST_NAME, PAYLOAD_DIR, SCHEMA_VERSION, BundleManifest, PayloadFile
from fleet.versions import DriverVersion

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
    payload: Path,
    *,
    driver_version: str,
    branch: str,
    payload_kind: str,
    output: Path,
    kernels: Sequence[str] = (),
    dkms: bool = False,
    module_flavour: str = "open",
    architectures: Sequence[str] | None = None,
    cuda_version: str | None = None,
    fabric_manager: str | None = None,
    catalog: Catalog | None = None,
) -> BundleManifest:
    """Write a bundle of ``payload`` (a file or a directory) to ``output``.

    ``kernels`` (precompiled modules) or ``dkms`` must be given. Where left out,
    the architectures are all those the catalog says this driver and module
    flavour drive, and the CUDA version is the newest the driver runs.
    """
    catalog = catalog or default_catalog()
    driver = DriverVersion.parse(driver_version)
    if architectures is None:
        architectures = supported_architectures(catalog, branch, driver, module_flavour)
    if cuda_version is None:
        runs = catalog.cuda_for_driver(driver)
        if runs is None:
            raise GpuwardError(f"the catalog knows no CUDA release for driver {driver}; give one")
        cuda_version = str(runs)
    files = _payload_files(payload)
    manifest = BundleManifest.from_dict(
        {
            "schema": SCHEMA_VERSION,
            "driver_version": driver_version,
            "branch": branch,
            "payload_kind": payload_kind,
            "files": [],
            "module_flavour": module_flavour,
            "architectures": list(architectures),
            "kernels": list(kernels),
            "dkms": dkms,
            "cuda_version": cuda_version,
            "fabric_manager": fabric_manager,
        }
    )
    problems = bundle_problems(manifest, catalog)
    if problems:
        raise GpuwardError(f"bundle contradicts the catalog: {'; '.join(problems)}")
    # Hash the payload only once the manifest is known to be right: it can be gigabytes.
    manifest = dataclasses.replace(
        manifest,
        files=tuple(
            PayloadFile(name, path.stat().st_size, sha256_file(path)) for name, path in files
        ),
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
