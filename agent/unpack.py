"""Unpacking a verified bundle into a slot, trusting nothing inside it.

TUF has already checked the bundle's length and hash against offline-signed
metadata, so a hostile tar here means the targets key itself was compromised.
Even then a bundle must not write outside its slot, create links or devices,
or exhaust the disk: it admits only the regular files the signed manifest
lists, enforces count and size limits before writing a byte, and writes those
files with ``keys.tar_extract`` (the ``data`` filter's guarantees, which
Debian 12's Python 3.11.2 lacks).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from fleet.errors import GpuwardError
from fleet.manifest import (
    MANIFEST_NAME,
    MAX_PAYLOAD_FILES,
    PAYLOAD_DIR,
    BundleManifest,
    PayloadFile,
)
from keys.bundle import MAX_MANIFEST
from keys.tar_extract import UnsafeMember, extract_files

MAX_BUNDLE_BYTES = 16 * 1024**3


class BadBundle(GpuwardError):
    """The bundle's content does not match its signed manifest."""


def unpack_bundle(bundle: Path, expected: BundleManifest, dest: Path) -> None:
    """Extract ``bundle`` into the empty directory ``dest`` and verify every file."""
    wanted = {f"{PAYLOAD_DIR}/{f.name}": f for f in expected.files}
    total = sum(f.length for f in expected.files)
    if total > MAX_BUNDLE_BYTES:
        raise BadBundle(f"bundle declares {total} bytes, above the {MAX_BUNDLE_BYTES} limit")
    try:
        with tarfile.open(bundle, "r:") as tar:
            members = _checked_members(tar, expected, wanted)
            digests = extract_files(tar, members, dest)
    except (tarfile.TarError, EOFError) as exc:
        raise BadBundle(f"bundle is not a readable tar ({exc})") from None
    except UnsafeMember as exc:
        raise BadBundle(str(exc)) from None
    except OSError as exc:
        raise BadBundle(f"bundle cannot be unpacked into {dest}: {exc.strerror}") from None
    for name, file in wanted.items():
        if digests.get(name) != file.sha256:
            raise BadBundle(f"{name}: digest differs from the signed manifest")


def _checked_members(
    tar: tarfile.TarFile, expected: BundleManifest, wanted: dict[str, PayloadFile]
) -> list[tarfile.TarInfo]:
    first = tar.next()
    if first is None or first.name != MANIFEST_NAME or not first.isfile():
        raise BadBundle(f"bundle does not start with {MANIFEST_NAME}")
    if first.size > MAX_MANIFEST:
        raise BadBundle("bundle manifest is too large")
    inner = tar.extractfile(first)
    assert inner is not None  # regular file
    try:
        inner_manifest = BundleManifest.from_dict(json.loads(inner.read()), "bundle manifest")
    except ValueError as exc:
        raise BadBundle(f"bundle manifest is not JSON ({exc})") from None
    if inner_manifest != expected:
        raise BadBundle("the manifest inside the bundle differs from the signed one")

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
            raise BadBundle(f"{member.name}: not listed once in the signed manifest")
        if member.size != wanted[member.name].length:
            raise BadBundle(f"{member.name}: size differs from the signed manifest")
        seen.add(member.name)
        members.append(member)
    missing = sorted(set(wanted) - seen)
    if missing:
        raise BadBundle(f"bundle lacks {', '.join(missing[:5])}")
    return members
