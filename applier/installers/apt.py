"""The apt backend: a bundle whose payload is a local apt repository of the driver's .debs.

The payload is a flat repository (the .debs and the ``Packages`` index that
``apt-ftparchive packages .`` writes). Activating a slot points one apt source
file at that slot's repository, refreshes only that source (the applier has no
network), installs the driver's packages at exactly the bundle's versions and
holds them, so neither ``apt-get upgrade`` nor unattended-upgrades moves the
driver under the kernel modules. The driver's packages are those whose upstream
version is the manifest's driver version; the other packages in the repository
(glx-alternative-*, pciutils, ...) are there for apt's resolver to draw on.

A version move through apt drops a package's hold, so every activation and
every rollback holds again. Rollback is an activation of the previous slot's
repository with downgrades allowed: the previous bundle is still on disk.

The source is ``trusted=yes``: the repository is the content of a bundle that
TUF verified against offline-signed metadata, in a slot only root writes;
apt's own archive signature would add a second key to manage, not a check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import structlog

from applier.installers.base import InstallerState, NodeRoot, PackageInstaller, UnsupportedPayload
from fleet.errors import GpuwardError
from fleet.manifest import BundleManifest
from keys.durable_files import atomic_write

log = structlog.get_logger(__name__)

SOURCE = Path("etc/apt/sources.list.d/gpuward-driver.list")
INDEX = "Packages"
APT_GET = (
    "env",
    "DEBIAN_FRONTEND=noninteractive",
    "apt-get",
    "-y",
    "-q",
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
)


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str

    @property
    def pin(self) -> str:
        return f"{self.name}={self.version}"


def read_index(text: str) -> list[DebPackage]:
    """The packages of a ``Packages`` index (deb822 stanzas; only two fields matter here)."""
    packages = []
    for stanza in text.split("\n\n"):
        fields = dict(
            (key, value.strip())
            for key, _, value in (
                line.partition(":") for line in stanza.splitlines() if line[:1] not in " \t#"
            )
        )
        if "Package" in fields and "Version" in fields:
            packages.append(DebPackage(fields["Package"], fields["Version"]))
    return packages


def upstream(version: str) -> str:
    """The upstream part of a Debian version: ``1:535.216.03-2~bpo12+1`` -> ``535.216.03``."""
    without_epoch = version.split(":", 1)[-1]
    return without_epoch.rsplit("-", 1)[0] if "-" in without_epoch else without_epoch


def driver_packages(payload: Path, manifest: BundleManifest) -> tuple[DebPackage, ...]:
    """The packages of ``payload`` that are the driver at the manifest's version."""
    index = payload / INDEX
    if not index.is_file():
        raise UnsupportedPayload(
            f"a deb bundle's payload must be an apt repository: run "
            f"'apt-ftparchive packages . > {INDEX}' in the payload directory and rebuild"
        )
    found = tuple(
        sorted(
            (
                p
                for p in read_index(index.read_text())
                if upstream(p.version) == manifest.driver_version
            ),
            key=lambda p: p.name,
        )
    )
    if not found:
        raise UnsupportedPayload(
            f"the bundle's apt repository has no package at driver version "
            f"{manifest.driver_version}; add the driver's .debs and rebuild"
        )
    return found


@dataclass(frozen=True)
class AptInstaller(PackageInstaller):
    kind: ClassVar[str] = "apt"
    payload_kind: ClassVar[str] = "deb"
    source: ClassVar[Path] = SOURCE

    node: NodeRoot

    def install(self, payload: Path, manifest: BundleManifest) -> None:
        driver_packages(payload, manifest)

    def describe(self) -> InstallerState:
        slot = self.node.slots.active()
        if slot is None:
            return InstallerState(self.kind, None)
        names = self._names(slot)
        listing = self.node.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n", *names])
        held = set(self.node.run(["apt-mark", "showhold"]).split())
        return InstallerState(
            self.kind,
            slot,
            tuple(f"{n}={v}" for n, v in (line.split() for line in listing.splitlines())),
            tuple(n for n in names if n in held),
        )

    def _packages(self, slot: str) -> tuple[DebPackage, ...]:
        return driver_packages(self.node.payload(slot), self.node.manifest(slot))

    def _names(self, slot: str) -> list[str]:
        return [p.name for p in self._packages(slot)]

    def _remove(self, names: Sequence[str]) -> None:
        self.node.run([*APT_GET, "remove", "--allow-change-held-packages", *names])

    def _move(self, slot: str, downgrade: bool) -> list[str]:
        # --allow-downgrades either way: apt picks the direction from the versions.
        packages = self._packages(slot)
        repo = self.node.inside(self.node.payload(slot))
        atomic_write(
            self.node.root / SOURCE,
            f"# Written by gpuward: the driver bundle in slot {slot}.\n"
            f"deb [trusted=yes] file:{repo} ./\n".encode(),
        )
        # Only this source: the others may need a network the applier does not have.
        self.node.run(
            [
                *APT_GET,
                "-o",
                f"Dir::Etc::sourcelist={SOURCE.relative_to('etc/apt')}",
                "-o",
                "Dir::Etc::sourceparts=-",
                "-o",
                "APT::Get::List-Cleanup=0",
                "update",
            ]
        )
        self.node.run(
            [
                *APT_GET,
                "install",
                "--no-install-recommends",
                "--allow-downgrades",
                "--allow-change-held-packages",
                *(p.pin for p in packages),
            ]
        )
        names = [p.name for p in packages]
        self.node.run(["apt-mark", "hold", *names])
        held = set(self.node.run(["apt-mark", "showhold"]).split())
        if not held.issuperset(names):
            raise GpuwardError(
                f"apt-mark did not hold {sorted(set(names) - held)}; hold them by hand"
            )
        log.info("driver_packages_installed", slot=slot, packages=[p.pin for p in packages])
        return names
