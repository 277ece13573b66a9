"""Building driver bundles, and reading the manifest out of one.

A bundle is an uncompressed tar: ``manifest.json`` first, then the payload files
under ``payload/``. Driver packages are already compressed, and an uncompressed
tar cannot hide a decompression bomb. Builds are reproducible (fixed owners,
modes and times, sorted names) so the same inputs give the same digest, wherever
and whenever they are built: every time is 0, so ``SOURCE_DATE_EPOCH`` has nothing
to set, and ``keys.provenance`` lets anyone rebuild and compare.

The manifest is checked against the compatibility catalog before anything is
written: a bundle that claims an architecture its branch dropped, or
proprietary modules for Blackwell, is a mistake to catch on the operator's
workstation, not on a thousand nodes.

``check_bundle`` is how a node reads a bundle (``applier.unpack``) and how
building and publishing read it before anything is signed: one function, so
what the workstation signs is exactly what the nodes accept, and a bundle they
would refuse is refused here first, for the same reason.
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
from fleet.driver_settings import DriverSettings
from fleet.errors import GpuwardError, InvalidDocument
from fleet.manifest import (
    MANIFEST_NAME,
    MAX_PAYLOAD_FILES,
    PAYLOAD_DIR,
    SCHEMA_VERSION,
    SETTINGS_SCHEMA_VERSION,
    BundleManifest,
    PayloadFile,
)
from fleet.versions import DriverVersion
from keys.durable_files import read_document
from keys.progress import SILENT, ByteProgress, TrackedReader
from keys.tar_extract import UnsafeMember, extract_files

MAX_MANIFEST = 4 * 1024 * 1024
MAX_BUNDLE_BYTES = 16 * 1024**3
_CHUNK = 1024 * 1024


class BadBundle(GpuwardError):
    """A bundle that nodes refuse: its content is not what its manifest says."""


def sha256_file(path: Path, progress: ByteProgress = SILENT) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            progress.advance(len(chunk))
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
    settings: DriverSettings | None = None,
    catalog: Catalog | None = None,
    progress: ByteProgress = SILENT,
) -> BundleManifest:
    """Write a bundle of ``payload`` (a file or a directory) to ``output``.

    ``kernels`` (precompiled modules) or ``dkms`` must be given. Where left out,
    the architectures are all those the catalog says this driver and module
    flavour drive, and the CUDA version is the newest the driver runs.
    ``settings``: the driver settings nodes enforce with it (``fleet.driver_settings``).
    ``progress`` follows the three passes over the payload's bytes: hashing it,
    writing the bundle, and reading the bundle back as a node will.
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
    declared = {} if settings is None else {"settings": settings.to_dict()}
    manifest = BundleManifest.from_dict(
        {
            "schema": SCHEMA_VERSION if settings is None else SETTINGS_SCHEMA_VERSION,
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
            **declared,
        }
    )
    problems = bundle_problems(manifest, catalog)
    if problems:
        raise GpuwardError(f"bundle contradicts the catalog: {'; '.join(problems)}")
    # Hash the payload only once the manifest is known to be right: it can be gigabytes.
    sizes = [path.stat().st_size for _, path in files]
    progress.begin("hashing the payload", sum(sizes))
    manifest = dataclasses.replace(
        manifest,
        files=tuple(
            PayloadFile(name, size, sha256_file(path, progress))
            for (name, path), size in zip(files, sizes, strict=True)
        ),
    )
    manifest_bytes = json.dumps(manifest.to_dict(), indent=2, sort_keys=True).encode()
    tmp = output.with_name(f".{output.name}.partial")
    try:
        progress.begin(f"writing {output.name}", sum(sizes))
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, MANIFEST_NAME, io.BytesIO(manifest_bytes), len(manifest_bytes))
            for (name, path), size in zip(files, sizes, strict=True):
                with path.open("rb") as f:
                    _add(tar, f"{PAYLOAD_DIR}/{name}", TrackedReader(f, progress), size)
        # Read back as a node will: a payload that changed while it was read, or
        # names a node cannot unpack, must not become a bundle.
        progress.begin(f"checking {output.name}", tmp.stat().st_size)
        check_bundle(tmp, manifest, progress=progress)
    except BadBundle as exc:
        tmp.unlink(missing_ok=True)
        raise BadBundle(f"{output} not written: nodes would refuse it: {exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(output)
    return manifest


def _add(tar: tarfile.TarFile, name: str, data: io.BytesIO | TrackedReader, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uname = info.gname = "root"
    tar.addfile(info, data)


MAX_SETTINGS_FILE = 64 * 1024


def read_settings(path: Path) -> DriverSettings:
    """The operator's driver settings file (JSON), strictly read before anything is signed."""
    return read_document(path, DriverSettings, MAX_SETTINGS_FILE, "driver settings file")


def read_manifest(bundle: Path) -> BundleManifest:
    """The manifest inside ``bundle`` (its first member), the rest unread."""
    try:
        with tarfile.open(bundle, "r:") as tar:
            return _leading_manifest(tar)[1]
    except FileNotFoundError:
        raise GpuwardError(f"bundle {bundle} not found") from None
    except BadBundle as exc:
        raise BadBundle(f"{bundle}: {exc}") from None
    except (tarfile.TarError, EOFError) as exc:
        raise BadBundle(f"{bundle}: bundle is not a readable tar ({exc})") from None


def check_bundle(
    bundle: Path,
    signed: BundleManifest | None = None,
    into: Path | None = None,
    progress: ByteProgress = SILENT,
) -> BundleManifest:
    """Read ``bundle`` as a node does; its manifest, or ``BadBundle`` with the reason
    a node gives.

    A node passes ``signed`` (the manifest its verified metadata carries: the one
    inside must equal it) and ``into``, the empty folder to unpack into. Without
    ``into`` every check runs and nothing is written: building and publishing
    read a bundle so before it is signed. ``progress`` advances as it is read.
    """
    try:
        with (
            bundle.open("rb") as raw,
            tarfile.open(fileobj=TrackedReader(raw, progress), mode="r:") as tar,
        ):
            first, manifest = _leading_manifest(tar)
            if signed is not None and manifest != signed:
                raise BadBundle("the manifest inside the bundle differs from the signed one")
            wanted = {f"{PAYLOAD_DIR}/{f.name}": f for f in manifest.files}
            total = sum(f.length for f in manifest.files)
            if total > MAX_BUNDLE_BYTES:
                raise BadBundle(
                    f"bundle declares {total} bytes, above the {MAX_BUNDLE_BYTES} limit"
                )
            digests = extract_files(tar, _checked_members(tar, first, wanted), into)
    except (tarfile.TarError, EOFError) as exc:
        raise BadBundle(f"bundle is not a readable tar ({exc})") from None
    except UnsafeMember as exc:
        raise BadBundle(str(exc)) from None
    except OSError as exc:
        done = f"read from {bundle}" if into is None else f"unpacked into {into}"
        raise BadBundle(f"bundle cannot be {done}: {exc.strerror}") from None
    for name, file in wanted.items():
        if digests.get(name) != file.sha256:
            raise BadBundle(f"{name}: digest differs from the manifest")
    return manifest


def bundle_to_publish(bundle: Path, progress: ByteProgress = SILENT) -> BundleManifest:
    """The manifest to sign for ``bundle``, once the bundle reads as nodes will read it."""
    progress.begin(f"checking {bundle.name}", bundle.stat().st_size)
    try:
        return check_bundle(bundle, progress=progress)
    except BadBundle as exc:
        raise BadBundle(
            f"{bundle}: nodes would refuse this bundle: {exc}; nothing was signed "
            "(build it with 'gpuward bundle build')"
        ) from None


def _leading_manifest(tar: tarfile.TarFile) -> tuple[tarfile.TarInfo, BundleManifest]:
    """The bundle's first member, which must be its manifest, and what it says."""
    first = tar.next()
    if first is None or first.name != MANIFEST_NAME or not first.isfile():
        raise BadBundle(f"bundle does not start with {MANIFEST_NAME}")
    if first.size > MAX_MANIFEST:
        raise BadBundle(f"bundle manifest is larger than {MAX_MANIFEST} bytes")
    inner = tar.extractfile(first)
    assert inner is not None  # a regular file always has content
    try:
        return first, BundleManifest.from_dict(json.loads(inner.read()), "bundle manifest")
    except ValueError as exc:
        raise BadBundle(f"bundle manifest is not JSON ({exc})") from None
    except InvalidDocument as exc:
        raise BadBundle(str(exc)) from None


def _checked_members(
    tar: tarfile.TarFile, first: tarfile.TarInfo, wanted: dict[str, PayloadFile]
) -> list[tarfile.TarInfo]:
    """The manifest and every file the manifest lists, each once, as it lists them."""
    members = [first]
    seen: set[str] = set()
    for count, member in enumerate(tar, start=1):
        if count > MAX_PAYLOAD_FILES + 1:
            raise BadBundle(f"bundle has more than {MAX_PAYLOAD_FILES} members")
        if member is first:
            continue  # iteration starts again from the members already read
        if not member.isfile():
            raise BadBundle(f"{member.name}: only regular files are allowed in a bundle")
        if member.name not in wanted or member.name in seen:
            raise BadBundle(f"{member.name}: not listed once in the manifest")
        if member.size != wanted[member.name].length:
            raise BadBundle(f"{member.name}: size differs from the manifest")
        seen.add(member.name)
        members.append(member)
    missing = sorted(set(wanted) - seen)
    if missing:
        raise BadBundle(f"bundle lacks {', '.join(missing[:5])}")
    return members
