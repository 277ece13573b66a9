"""The two driver slots and the ``active`` link between them.

``slots/a`` and ``slots/b`` each hold one unpacked bundle plus ``bundle.json``
(what it is, from verified metadata); ``slots/active`` is a symlink to one of
them. The running slot is never written: a new bundle is unpacked into a scratch
directory, renamed over the inactive slot, and only then does the switch
replace the link with a single ``rename`` so every reader sees the old slot or
the new one, never neither.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.errors import GpuwardError
from fleet.manifest import BundleManifest
from keys.durable_files import atomic_write, fsync_dir
from node.crash_points import crash_point

SLOTS = ("a", "b")
_CONTENT = "bundle.json"


@dataclass(frozen=True)
class SlotContent:
    """What a slot holds, as verified when it was staged."""

    target_path: str
    sha256: str
    manifest: BundleManifest

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_path": self.target_path,
            "sha256": self.sha256,
            "manifest": self.manifest.to_dict(),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> SlotContent:
        return cls(
            target_path=str(doc["target_path"]),
            sha256=str(doc["sha256"]),
            manifest=BundleManifest.from_dict(doc["manifest"]),
        )


class Slots:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._link = root / "active"

    def active(self) -> str | None:
        try:
            target = str(self._link.readlink())
        except FileNotFoundError:
            return None
        if target not in SLOTS:
            raise GpuwardError(f"{self._link} points at {target!r}; expected 'a' or 'b'")
        return target

    def inactive(self) -> str:
        return "b" if self.active() == "a" else "a"

    def path(self, slot: str) -> Path:
        return self.root / slot

    def content(self, slot: str | None) -> SlotContent | None:
        if slot is None:
            return None
        try:
            doc = json.loads((self.path(slot) / _CONTENT).read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise GpuwardError(f"slot {slot}: unreadable {_CONTENT} ({exc})") from None
        return SlotContent.from_dict(doc)

    def scratch(self, slot: str) -> Path:
        """An empty directory to unpack into; ``commit_stage`` turns it into ``slot``."""
        if slot == self.active():
            raise GpuwardError(f"refusing to stage into the running slot {slot}")
        scratch = self.root / f".{slot}.staging"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        return scratch

    def commit_stage(self, slot: str, content: SlotContent) -> None:
        if slot == self.active():
            raise GpuwardError(f"refusing to replace the running slot {slot}")
        scratch = self.root / f".{slot}.staging"
        atomic_write(scratch / _CONTENT, json.dumps(content.to_dict(), indent=2).encode())
        old = self.root / f".{slot}.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.path(slot).exists():
            self.path(slot).rename(old)
        scratch.rename(self.path(slot))
        crash_point("slots:stage-before-fsync")
        fsync_dir(self.root)
        crash_point("slots:stage-after-fsync")
        shutil.rmtree(old, ignore_errors=True)

    def switch(self, slot: str | None) -> None:
        """Point ``active`` at ``slot`` (or at nothing) with one atomic rename."""
        if slot is None:
            self._link.unlink(missing_ok=True)
        else:
            if slot not in SLOTS or not self.path(slot).is_dir():
                raise GpuwardError(f"cannot switch to slot {slot!r}: it holds nothing")
            tmp = self.root / ".active.new"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(slot)
            tmp.replace(self._link)
        crash_point("slots:switch-before-fsync")
        fsync_dir(self.root)
        crash_point("slots:switch-after-fsync")
