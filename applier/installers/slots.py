"""The slots backend: precompiled kernel modules and user-space libraries per slot.

A bundle of payload kind ``files`` is laid out as ``lib/`` (the user-space
libraries, each under its soname: libnvidia-ml.so.1, ...) and ``modules/<kernel>/``
(the .ko files built for that kernel). Nothing is copied into the system:

- one ``ld.so.conf.d`` entry and one link under ``lib/modules/<kernel>/updates``
  name paths through ``slots/active``, so they never change once written;
- switching is the atomic flip of ``active``, then ``ldconfig`` and ``depmod``
  refresh their caches, and the NVIDIA modules are unloaded before the flip
  and loaded after it (the drain has emptied the GPUs).

``ldconfig`` and ``depmod`` take the root as an option (``-r``, ``-b``), so the
backend runs on a temporary root in tests; loading modules only makes sense on
the host's kernel, so a node with simulated GPUs leaves that step out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from applier.installers.base import InstallerState, NodeRoot, UnsupportedPayload
from fleet.manifest import BundleManifest
from keys.durable_files import atomic_write

LD_CONF = Path("etc/ld.so.conf.d/gpuward-nvidia.conf")
MODULES_LINK = "updates/gpuward"
# The NVIDIA modules, each after every module that uses it: unload in this
# order, load in the reverse.
NVIDIA_MODULES = (
    "nvidia_peermem",
    "nvidia_fs",
    "nvidia_uvm",
    "nvidia_drm",
    "nvidia_modeset",
    "nvidia",
)


@dataclass(frozen=True)
class SlotsInstaller:
    kind: ClassVar[str] = "slots"

    node: NodeRoot
    kernel: str  # the running kernel's release
    load_modules: bool  # False with simulated GPUs: no kernel to load them into

    def install(self, payload: Path, manifest: BundleManifest) -> None:
        if (payload / "modules").is_dir() and not (payload / "modules" / self.kernel).is_dir():
            raise UnsupportedPayload(
                f"the bundle carries modules, but none for the running kernel {self.kernel}"
            )

    def activate(self, slot: str) -> None:
        payload = self.node.payload(slot)
        has_libs = (payload / "lib").is_dir()
        has_modules = (payload / "modules" / self.kernel).is_dir()
        active = self.node.inside(self.node.slots.root / "active" / payload.name)
        if has_libs:
            atomic_write(self.node.root / LD_CONF, f"{active}/lib\n".encode())
        if has_modules:
            self._link_modules()
        self._unload()
        self.node.slots.switch(slot)
        self._refresh(has_libs, has_modules)
        if has_modules and self.load_modules:
            ours = {ko.name.removesuffix(".ko").replace("-", "_") for ko in self._ko_files(payload)}
            order = [m for m in reversed(NVIDIA_MODULES) if m in ours]
            self.node.run(["modprobe", "-a", *order, *sorted(ours - set(order))])

    def rollback(self, failed: str, previous: str | None) -> None:
        if previous is not None:
            self.activate(previous)
            return
        ld_conf, link = self.node.root / LD_CONF, self._modules_dir() / MODULES_LINK
        had_libs, had_modules = ld_conf.exists(), link.is_symlink()
        self._unload()
        ld_conf.unlink(missing_ok=True)
        link.unlink(missing_ok=True)
        self.node.slots.switch(None)
        self._refresh(had_libs, had_modules)

    def describe(self) -> InstallerState:
        return InstallerState(self.kind, self.node.slots.active())

    def _modules_dir(self) -> Path:
        return self.node.root / "lib/modules" / self.kernel

    def _link_modules(self) -> None:
        link = self._modules_dir() / MODULES_LINK
        # Relative, so that it resolves inside the root it is in (depmod -b, chroot).
        target = os.path.relpath(
            self.node.slots.root / "active" / "payload" / "modules" / self.kernel, link.parent
        )
        if link.is_symlink() and str(link.readlink()) == target:
            return
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(link)

    def _ko_files(self, payload: Path) -> list[Path]:
        return sorted((payload / "modules" / self.kernel).rglob("*.ko"))

    def _unload(self) -> None:
        if not self.load_modules:
            return
        try:
            loaded = {
                line.split()[0]
                for line in (self.node.root / "proc/modules").read_text().splitlines()
            }
        except FileNotFoundError:
            loaded = set()
        going = [m for m in NVIDIA_MODULES if m in loaded]
        if going:
            self.node.run(["modprobe", "-r", "-a", *going])

    def _refresh(self, libs: bool, modules: bool) -> None:
        root = str(self.node.root)
        if libs:
            # -X: the slot stays exactly as verified; its libraries carry their soname names.
            self.node.run(["ldconfig", "-X", "-r", root])
        if modules:
            self.node.run(["depmod", "-b", root, self.kernel])
