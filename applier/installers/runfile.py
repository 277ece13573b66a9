"""The runfile backend: NVIDIA's ``.run`` installer, for hosts without a packaged driver.

``nvidia-installer`` has no notion of slots: it writes the driver into the
system and keeps its own manifest of what it wrote, which ``nvidia-installer
--uninstall`` replays. So before it runs, the backend records which slot's
runfile is being installed and the command that undoes it; rollback runs that
uninstall and then the previous slot's runfile, which is still on disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from applier.installers.base import InstallerState, NodeRoot, UnsupportedPayload
from fleet.manifest import BundleManifest
from keys.durable_files import atomic_write

RECORD = "runfile-installed.json"
UNINSTALL = ("nvidia-installer", "--uninstall", "--silent")
# From R560 the installer takes --kernel-module-type; before, the open modules
# were chosen by building from the kernel-open directory.
KERNEL_MODULE_TYPE_SINCE = 560


def module_options(manifest: BundleManifest) -> tuple[str, ...]:
    if manifest.version.parts[0] >= KERNEL_MODULE_TYPE_SINCE:
        return (f"--kernel-module-type={manifest.module_flavour}",)
    return (
        ("--kernel-module-build-directory=kernel-open",)
        if manifest.module_flavour == "open"
        else ()
    )


@dataclass(frozen=True)
class RunfileInstaller:
    kind: ClassVar[str] = "runfile"

    node: NodeRoot

    def install(self, payload: Path, manifest: BundleManifest) -> None:
        self._runfile(payload)

    def activate(self, slot: str) -> None:
        runfile = self._runfile(self.node.payload(slot))
        # Recorded before the installer writes anything: a crash mid-install
        # still leaves rollback the command that undoes it.
        atomic_write(
            self._record_path(),
            json.dumps({"slot": slot, "uninstall": list(UNINSTALL)}).encode(),
            mode=0o600,
        )
        manifest = self.node.manifest(slot)
        self.node.run(["sh", self.node.inside(runfile), "--silent", *module_options(manifest)])
        self.node.slots.switch(slot)

    def rollback(self, failed: str, previous: str | None) -> None:
        record = self._record()
        if record is not None:
            self.node.run(record["uninstall"])
            self._record_path().unlink()
        if previous is not None and self.node.manifest(previous).payload_kind == "runfile":
            self.activate(previous)
        else:
            self.node.slots.switch(previous)

    def describe(self) -> InstallerState:
        record = self._record()
        return InstallerState(self.kind, None if record is None else str(record["slot"]))

    def _runfile(self, payload: Path) -> Path:
        found = sorted(payload.glob("*.run"))
        if len(found) != 1:
            raise UnsupportedPayload(
                "a runfile bundle carries exactly one NVIDIA .run installer; "
                f"this one has {len(found)}"
            )
        return found[0]

    def _record_path(self) -> Path:
        return self.node.slots.root / RECORD

    def _record(self) -> dict[str, list[str] | str] | None:
        try:
            doc: dict[str, list[str] | str] = json.loads(self._record_path().read_bytes())
        except FileNotFoundError:
            return None
        return doc
