"""Stand-in kernel packages in a debootstrap Debian 12 chroot (the packaging tests' fixture).

Real kernel packages are large and their maintainer scripts build initramfs
images; what the hold is about is apt's behaviour with package names and
versions, so the tests build empty packages with the names Debian's kernel
packages have, in two versions, and serve them from a local apt repository.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.packaging.conftest import Chroot, chroot, chroot_tarball  # noqa: F401 (fixtures)


def fake_deb(out: Path, name: str, version: str, depends: str = "") -> Path:
    tree = out / f"{name}_{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        f"Maintainer: gpuward tests <tests@gpuward.invalid>\nDescription: stand-in for {name}\n"
        + (f"Depends: {depends}\n" if depends else "")
    )
    deb = out / f"{name}_{version}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return deb


def publish(inside: Chroot, repo: Path, packages: list[tuple[str, str, str]]) -> None:
    """Add ``(name, version, depends)`` packages to ``repo`` and serve it in the chroot."""
    repo.mkdir(exist_ok=True)
    for name, version, depends in packages:
        fake_deb(repo, name, version, depends)
    index = subprocess.run(
        ["apt-ftparchive", "packages", "."], cwd=repo, check=True, capture_output=True, text=True
    )
    (repo / "Packages").write_text(index.stdout)
    inside.trust_repository(repo, None)
    inside.run("apt-get", "update")
