"""What every installer backend is: the interface the applier drives, and its context.

The applier decides *when* (after the drain, before the health gate) and keeps
the journal; a backend decides *how* a slot becomes the running driver: a link
flip for precompiled slots, apt or dnf transactions for packaged drivers,
NVIDIA's installer for runfiles. Every step of a backend is idempotent, because
a crash mid-way makes the applier run it again from the journal.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

from applier.command_runner import Run
from applier.unpack import BadBundle
from fleet.errors import GpuwardError
from fleet.manifest import PAYLOAD_DIR, BundleManifest
from node.slots import Slots


class UnsupportedPayload(BadBundle):
    """The bundle's payload is not something its payload kind's installer can install."""


@dataclass(frozen=True)
class InstallerState:
    """What a backend says is installed: for logs, reports and tests."""

    kind: str
    active_slot: str | None
    packages: tuple[str, ...] = ()  # "name=version" of the driver packages installed
    held: tuple[str, ...] = ()  # of those, the ones held or version-locked


class Installer(Protocol):
    @property
    def kind(self) -> str: ...

    def install(self, payload: Path, manifest: BundleManifest) -> None:
        """Check a freshly unpacked payload can be installed; touch nothing that runs."""
        ...

    def activate(self, slot: str) -> None:
        """Make ``slot`` the running driver and point ``active`` at it."""
        ...

    def rollback(self, failed: str, previous: str | None) -> None:
        """Undo ``failed`` and run ``previous`` again (``None``: no driver ran before)."""
        ...

    def describe(self) -> InstallerState: ...


@dataclass(frozen=True)
class NodeRoot:
    """The system a backend changes: its root, its driver slots, and how to run commands."""

    root: Path
    slots: Slots
    run: Run

    def payload(self, slot: str) -> Path:
        return self.slots.path(slot) / PAYLOAD_DIR

    def inside(self, path: Path) -> str:
        """``path`` as commands on this system see it (under chroot in tests)."""
        try:
            return "/" + str(path.relative_to(self.root))
        except ValueError:
            raise GpuwardError(f"{path} is outside the node root {self.root}") from None

    def manifest(self, slot: str) -> BundleManifest:
        return slot_manifest(self.slots, slot)


def slot_manifest(slots: Slots, slot: str) -> BundleManifest:
    content = slots.content(slot)
    if content is None:
        raise GpuwardError(
            f"slot {slot} holds no bundle.json; check which slot "
            f"{slots.root / 'active'} points at, then reset the applier journal"
        )
    return content.manifest


class PackageInstaller(ABC):
    """apt and dnf alike: a source file naming the slot's repository, exact versions, locks.

    Rollback is an install of the previous slot's exact versions, which are
    still on disk; whatever the failed slot installed that the previous one
    does not carry is removed.
    """

    node: NodeRoot
    payload_kind: ClassVar[str]  # the manifest payload kind whose repository this reads
    source: ClassVar[Path]  # the package manager's source file, relative to the root

    def activate(self, slot: str) -> None:
        self._move(slot, downgrade=False)
        self.node.slots.switch(slot)

    def rollback(self, failed: str, previous: str | None) -> None:
        gone = set(self._names(failed))
        if previous is not None and self.node.manifest(previous).payload_kind == self.payload_kind:
            gone -= set(self._move(previous, downgrade=True))
        else:
            (self.node.root / self.source).unlink(missing_ok=True)
        if gone:
            self._remove(sorted(gone))
        self.node.slots.switch(previous)

    @abstractmethod
    def _names(self, slot: str) -> Sequence[str]:
        """The names of ``slot``'s driver packages."""

    @abstractmethod
    def _move(self, slot: str, downgrade: bool) -> Sequence[str]:
        """Install ``slot``'s exact versions and lock them; return the names."""

    @abstractmethod
    def _remove(self, names: Sequence[str]) -> None:
        """Unlock and remove ``names``."""
