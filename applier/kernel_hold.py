"""Kernel hold: keep the package manager from moving the kernel under the driver.

NVIDIA recommends holding the kernel on GPU nodes: an unattended kernel upgrade
boots a kernel the installed driver has no module for, and the node comes back
without GPUs. The hold covers the running kernel's packages and the
metapackages that would pull in a newer one.

- Debian and Ubuntu: ``apt-mark hold`` of the running kernel's image, headers
  and modules packages and of the installed kernel metapackages, plus an apt
  configuration file adding ``linux-image-``, ``linux-headers-`` and
  ``linux-modules-`` to unattended-upgrades' ``Package-Blacklist``. The file
  also records which packages gpuward held, so ``release`` unholds exactly
  those and leaves the administrator's own holds alone.
- RHEL family: ``dnf versionlock add`` of the running kernel's packages; dnf's
  versionlock plugin keeps the list (``/etc/dnf/plugins/versionlock.list``).

Commands go through a runner (``applier.command_runner``) so tests can run them
in a chroot, and files are written below ``root``. Holding needs root: the applier applies the hold
after every commit; reading its state does not.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from applier.command_runner import Run, runner_for_root
from fleet.errors import GpuwardError
from fleet.report import KernelHoldReport
from keys.durable_files import atomic_write
from node.config import AgentConfig
from node.kernel_hold_record import save_hold_record

APT_CONF = Path("etc/apt/apt.conf.d/51gpuward-kernel-hold")
BLACKLIST = ("linux-image-", "linux-headers-", "linux-modules-")
# Debian's and Ubuntu's versioned kernel packages; the metapackages carry no version.
APT_KERNEL_PACKAGE = re.compile(r"linux-(?:image|headers|modules-extra|modules)-(.+)")
APT_METAPACKAGE = re.compile(r"linux-(?:image|headers|generic|virtual|signed)[a-z0-9.+-]*")
_VERSIONED = re.compile(r"-\d+\.\d+\.\d+")  # 6.1.0-27-amd64, not hwe-22.04
_HELD_LINE = re.compile(r"^// held: (.*)$", re.M)
DNF_KERNEL_PACKAGES = re.compile(r"kernel(?:-[a-z]+)*")

log = structlog.get_logger(__name__)


class KernelNotPackaged(GpuwardError):
    """The running kernel came from outside the package manager, which cannot hold it.

    A state of the host (a custom kernel, a container sharing its host's kernel),
    not a failure of the update: reported, and logged as a warning."""


@dataclass(frozen=True)
class HoldState:
    """What the hold covers and whether it is in force."""

    family: str  # "apt" or "dnf"
    kernel: str  # the running kernel's release
    packages: tuple[str, ...]  # what the hold must cover
    held: tuple[str, ...]  # of those, what is held (apt) or version-locked (dnf) now
    blacklisted: bool  # apt: unattended-upgrades is kept off the kernel; dnf: always True

    @property
    def applied(self) -> bool:
        return bool(self.packages) and set(self.held) == set(self.packages) and self.blacklisted

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "kernel": self.kernel,
            "applied": self.applied,
            "packages": list(self.packages),
            "held": list(self.held),
            "unattended_upgrades_blacklist": self.blacklisted,
        }


@dataclass(frozen=True)
class KernelHold:
    family: str
    kernel: str
    runner: Run
    root: Path = Path("/")

    @classmethod
    def detect(cls, runner: Run, root: Path = Path("/"), kernel: str | None = None) -> KernelHold:
        """The hold for the host at ``root``, its family read from os-release."""
        return cls(package_family(root), kernel or os.uname().release, runner, root)

    def status(self) -> HoldState:
        if self.family == "apt":
            packages = self._apt_packages()
            held = set(self.runner(["apt-mark", "showhold"]).split())
            return HoldState(
                "apt",
                self.kernel,
                packages,
                tuple(p for p in packages if p in held),
                # In force only as gpuward wrote it: an edited file may not be.
                self._apt_conf_path().is_file()
                and self._apt_conf_path().read_text() == apt_conf(self._recorded()),
            )
        packages = self._dnf_packages()
        locked = self.runner(["dnf", "-q", "versionlock", "list"])
        return HoldState(
            "dnf",
            self.kernel,
            packages,
            tuple(p for p in packages if _dnf_locked(p, locked)),
            True,
        )

    def apply(self) -> HoldState:
        if self.family == "apt":
            packages = self._apt_packages()
            if not packages:
                raise self._nothing_to_hold()
            recorded = self._recorded()
            # Record first: a crash between the steps leaves holds that release
            # can still find.
            atomic_write(self._apt_conf_path(), apt_conf(sorted({*recorded, *packages})).encode())
            self.runner(["apt-mark", "hold", *packages])
            # A kernel booted since the last hold: the previous one needs none.
            stale = sorted(set(recorded) - set(packages))
            if stale:
                self.runner(["apt-mark", "unhold", *stale])
                atomic_write(self._apt_conf_path(), apt_conf(packages).encode())
        else:
            packages = self._dnf_packages()
            if not packages:
                raise self._nothing_to_hold()
            self.runner(["dnf", "-q", "versionlock", "add", *packages])
        return self.status()

    def release(self) -> HoldState:
        if self.family == "apt":
            recorded = self._recorded()
            if recorded:
                self.runner(["apt-mark", "unhold", *recorded])
            self._apt_conf_path().unlink(missing_ok=True)
        else:
            packages = self._dnf_packages()
            if packages:
                self.runner(["dnf", "-q", "versionlock", "delete", *packages])
        return self.status()

    def _apt_conf_path(self) -> Path:
        return self.root / APT_CONF

    def _recorded(self) -> tuple[str, ...]:
        """The packages the apt configuration file says gpuward held."""
        path = self._apt_conf_path()
        if not path.is_file():
            return ()
        found = _HELD_LINE.search(path.read_text())
        return tuple(found.group(1).split()) if found else ()

    def _apt_packages(self) -> tuple[str, ...]:
        """The installed packages of the running kernel, and the kernel metapackages."""
        listing = self.runner(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n"])
        # Status-Abbrev: wanted state ("i" install, "h" hold), then current ("i" installed).
        installed = [
            words[0]
            for words in (line.split() for line in listing.splitlines())
            if len(words) > 1 and words[1][1:2] == "i"
        ]
        own = [
            p
            for p in installed
            if (m := APT_KERNEL_PACKAGE.fullmatch(p)) and m.group(1) == self.kernel
        ]
        if not own:
            return ()
        metas = [
            p
            for p in installed
            if APT_METAPACKAGE.fullmatch(p) and not _VERSIONED.search(p) and p not in own
        ]
        return tuple(sorted(own + metas))

    def _dnf_packages(self) -> tuple[str, ...]:
        """The installed kernel packages whose version-release.arch is the running kernel."""
        listing = self.runner(["rpm", "-qa", "--qf", "%{NAME} %{VERSION}-%{RELEASE}.%{ARCH}\n"])
        return tuple(
            sorted(
                f"{name}-{evr}"
                for name, evr in (line.split() for line in listing.splitlines() if line.strip())
                if DNF_KERNEL_PACKAGES.fullmatch(name) and evr == self.kernel
            )
        )

    def _nothing_to_hold(self) -> KernelNotPackaged:
        return KernelNotPackaged(
            f"no installed {self.family} package carries the running kernel {self.kernel}: "
            "a kernel built outside the package manager cannot be held this way"
        )


def apt_conf(packages: Sequence[str]) -> str:
    """The apt configuration file of an applied hold (valid apt.conf syntax)."""
    entries = "".join(f'    "{prefix}";\n' for prefix in BLACKLIST)
    return (
        "// Written by gpuward (kernel hold): keep unattended-upgrades off the kernel\n"
        "// under the NVIDIA driver. `gpuward agent kernel-hold release` removes it.\n"
        f"// held: {' '.join(packages)}\n"
        f"Unattended-Upgrade::Package-Blacklist {{\n{entries}}};\n"
    )


def package_family(root: Path = Path("/")) -> str:
    """ "apt" or "dnf", from os-release's ID and ID_LIKE."""
    path = root / "etc/os-release"
    try:
        fields = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    except FileNotFoundError:
        raise GpuwardError(f"{path} not found: cannot tell which package manager to use") from None
    ids = set(f"{fields.get('ID', '')} {fields.get('ID_LIKE', '')}".replace('"', "").split())
    if ids & {"debian", "ubuntu"}:
        return "apt"
    if ids & {"rhel", "fedora", "centos", "rocky", "almalinux"}:
        return "dnf"
    raise GpuwardError(
        f"kernel hold supports Debian, Ubuntu and the RHEL family; {path} says {sorted(ids)}"
    )


def _dnf_locked(package: str, listing: str) -> bool:
    """Whether ``dnf versionlock list`` (``name-[epoch:]version-release.*``) locks ``package``."""
    for line in listing.split():
        name_evr = re.sub(r"-\d+:", "-", line.removesuffix(".*"))
        if name_evr == package or name_evr == package.rsplit(".", 1)[0]:
            return True
    return False


def hold_after_commit(config: AgentConfig) -> KernelHoldReport:
    """Hold the running kernel under the driver just committed, and record how that went.

    Never raises: the driver is committed and healthy whatever happens here, so a
    hold that cannot be applied is logged and reported rather than undoing it.
    The record is world-readable: the unprivileged agent puts it in its report.
    """
    kernel = config.kernel or os.uname().release
    try:
        hold = KernelHold.detect(runner_for_root(config.root_dir), config.root_dir, kernel)
        state = hold.apply()
        report = KernelHoldReport(kernel, state.family, state.applied, state.held, "")
        log.info("kernel_held", kernel=kernel, family=state.family, held=list(state.held))
    except GpuwardError as exc:
        report = KernelHoldReport(kernel, None, False, (), str(exc)[:1024])
        level = log.warning if isinstance(exc, KernelNotPackaged) else log.error
        level("kernel_hold_failed", kernel=kernel, reason=str(exc))
    save_hold_record(config, report)
    return report
