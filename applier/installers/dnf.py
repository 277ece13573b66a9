"""The dnf backend: a bundle whose payload is a local dnf repository of the driver's .rpms.

The payload holds the .rpm files and the ``repodata/`` that ``createrepo_c .``
writes. Activating a slot points one repository file at that slot, lifts
gpuward's version locks on the driver's packages, installs them at exactly the
bundle's versions from that repository alone (the applier has no network, so
the bundle carries what the node lacks), and version-locks them again, so
``dnf upgrade`` leaves the driver where the health gate saw it. Rollback
downgrades to the previous slot's exact versions, which are still on disk.

The repository is ``gpgcheck=0``: TUF verified the bundle, in a slot only
root writes, against offline-signed metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from applier.installers.base import InstallerState, NodeRoot, PackageInstaller, UnsupportedPayload
from fleet.manifest import BundleManifest
from keys.durable_files import atomic_write

REPO_ID = "gpuward-driver"
REPO_FILE = Path(f"etc/yum.repos.d/{REPO_ID}.repo")
DNF = ("dnf", "-y", "-q", "--disablerepo=*", f"--enablerepo={REPO_ID}")
RPM_QUERY = "%{NAME} %{EPOCHNUM} %{VERSION} %{RELEASE} %{ARCH}\n"


@dataclass(frozen=True)
class DnfInstaller(PackageInstaller):
    kind: ClassVar[str] = "dnf"
    payload_kind: ClassVar[str] = "rpm"
    source: ClassVar[Path] = REPO_FILE

    node: NodeRoot

    def install(self, payload: Path, manifest: BundleManifest) -> None:
        if not (payload / "repodata/repomd.xml").is_file() or not any(payload.rglob("*.rpm")):
            raise UnsupportedPayload(
                "an rpm bundle's payload must be a dnf repository: run 'createrepo_c .' "
                "in the payload directory and rebuild"
            )

    def describe(self) -> InstallerState:
        slot = self.node.slots.active()
        if slot is None:
            return InstallerState(self.kind, None)
        packages = self._packages(slot)
        locked = self.node.run(["dnf", "-q", "versionlock", "list"]).split()
        return InstallerState(
            self.kind,
            slot,
            tuple(nevra for _, nevra in packages),
            tuple(name for name, nevra in packages if f"{nevra.rsplit('.', 1)[0]}.*" in locked),
        )

    def _packages(self, slot: str) -> list[tuple[str, str]]:
        """``(name, name-epoch:version-release.arch)`` of ``slot``'s driver packages."""
        payload = self.node.payload(slot)
        rpms = [self.node.inside(p) for p in sorted(payload.rglob("*.rpm"))]
        listing = self.node.run(["rpm", "-qp", "--qf", RPM_QUERY, *rpms])
        version = self.node.manifest(slot).driver_version
        found = sorted(
            (name, f"{name}-{epoch}:{ver}-{release}.{arch}")
            for name, epoch, ver, release, arch in (line.split() for line in listing.splitlines())
            if ver == version
        )
        if not found:
            raise UnsupportedPayload(f"slot {slot} has no rpm at driver version {version}")
        return found

    def _names(self, slot: str) -> list[str]:
        return [name for name, _ in self._packages(slot)]

    def _remove(self, names: Sequence[str]) -> None:
        self.node.run(["dnf", "-q", "versionlock", "delete", *names])
        self.node.run(["dnf", "-y", "-q", "remove", *names])

    def _move(self, slot: str, downgrade: bool) -> list[str]:
        # Rollback is the only move down (the applier never downgrades on the way in).
        verb = "downgrade" if downgrade else "install"
        packages = self._packages(slot)
        repo = self.node.inside(self.node.payload(slot))
        atomic_write(
            self.node.root / REPO_FILE,
            (
                f"# Written by gpuward: the driver bundle in slot {slot}.\n"
                f"[{REPO_ID}]\nname=gpuward driver bundle (slot {slot})\n"
                f"baseurl=file://{repo}\nenabled=1\ngpgcheck=0\nmetadata_expire=0\n"
            ).encode(),
        )
        names = [name for name, _ in packages]
        # A lock on the running version would keep dnf from moving it.
        self.node.run(["dnf", "-q", "versionlock", "delete", *names])
        self.node.run([*DNF, verb, *(nevra for _, nevra in packages)])
        self.node.run(["dnf", "-q", "versionlock", "add", *(nevra for _, nevra in packages)])
        return names
