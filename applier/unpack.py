"""Unpacking a verified bundle into a slot, trusting nothing inside it.

TUF has already checked the bundle's length and hash against offline-signed
metadata, so a hostile tar here means the targets key itself was compromised.
Even then a bundle must not write outside its slot, create links or devices,
or exhaust the disk: it admits only the regular files the signed manifest
lists, enforces count and size limits before writing a byte, and writes those
files with ``keys.tar_extract`` (the ``data`` filter's guarantees, which
Debian 12's Python 3.11.2 lacks). The checks are ``keys.bundle.check_bundle``,
which publishing runs too, so the operator's workstation refuses to sign any
bundle a node would refuse here, with the same reason.
"""

from __future__ import annotations

from pathlib import Path

from fleet.manifest import BundleManifest
from keys.bundle import MAX_BUNDLE_BYTES, BadBundle, check_bundle

__all__ = ["MAX_BUNDLE_BYTES", "BadBundle", "unpack_bundle"]


def unpack_bundle(bundle: Path, expected: BundleManifest, dest: Path) -> None:
    """Extract ``bundle`` into the empty directory ``dest`` and verify every file
    against ``expected``, the manifest verified metadata signed; raise ``BadBundle``."""
    check_bundle(bundle, expected, dest)
