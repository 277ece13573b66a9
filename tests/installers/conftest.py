"""The packaging tests' debootstrap Debian 12 chroot, shared with the installer tests."""

from __future__ import annotations

from tests.packaging.conftest import chroot, chroot_tarball  # noqa: F401 (fixtures)
