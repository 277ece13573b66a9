"""Installer backends: how a staged slot becomes the running driver.

The bundle manifest's payload kind picks the backend: ``files`` (precompiled
slots), ``deb`` (apt), ``rpm`` (dnf), ``runfile`` (nvidia-installer). Package
managers run through ``chroot`` when the agent's root is not ``/`` (tests);
the slots backend passes the root to ldconfig and depmod instead.
"""

from __future__ import annotations

import os
from dataclasses import asdict

import structlog

from applier.command_runner import CommandRunner, runner_for_root
from applier.installers.apt import AptInstaller
from applier.installers.base import (
    Installer,
    InstallerState,
    NodeRoot,
    UnsupportedPayload,
    slot_manifest,
)
from applier.installers.dnf import DnfInstaller
from applier.installers.runfile import RunfileInstaller
from applier.installers.slots import SlotsInstaller
from fleet.errors import GpuwardError
from node.config import AgentConfig
from node.slots import Slots

log = structlog.get_logger(__name__)

__all__ = [
    "Installer",
    "InstallerState",
    "UnsupportedPayload",
    "activate",
    "installer_for",
    "installer_for_slot",
    "rollback",
]

# Long enough for a DKMS build or a runfile's own module build.
INSTALL_TIMEOUT_S = 1800.0


def installer_for(config: AgentConfig, payload_kind: str) -> Installer:
    slots = Slots(config.slots_dir)
    if payload_kind == "files":
        node = NodeRoot(config.root_dir, slots, CommandRunner(timeout_s=INSTALL_TIMEOUT_S))
        return SlotsInstaller(
            node,
            kernel=config.kernel or os.uname().release,
            load_modules=config.health_backend == "nvml",
        )
    node = NodeRoot(config.root_dir, slots, runner_for_root(config.root_dir, INSTALL_TIMEOUT_S))
    if payload_kind == "deb":
        return AptInstaller(node)
    if payload_kind == "rpm":
        return DnfInstaller(node)
    if payload_kind == "runfile":
        return RunfileInstaller(node)
    raise UnsupportedPayload(f"no installer for payload kind {payload_kind!r}; upgrade gpuward")


def installer_for_slot(config: AgentConfig, slot: str) -> Installer:
    """The backend that installs what ``slot`` holds."""
    return installer_for(config, slot_manifest(Slots(config.slots_dir), slot).payload_kind)


def activate(config: AgentConfig, slot: str | None) -> None:
    """Make the journal's ``slot`` the running driver, through its backend."""
    if slot is None:
        raise GpuwardError("the applier journal names no slot to switch to; reset the journal")
    installer = installer_for_slot(config, slot)
    installer.activate(slot)
    _log_state("driver_activated", installer, slot=slot)


def rollback(config: AgentConfig, failed: str | None, previous: str | None) -> None:
    """Undo ``failed`` through its backend and run ``previous`` again."""
    if failed is None:
        raise GpuwardError("the applier journal names no slot to roll back; reset the journal")
    installer = installer_for_slot(config, failed)
    installer.rollback(failed, previous)
    _log_state("driver_rolled_back", installer, failed=failed, slot=previous)


def _log_state(event: str, installer: Installer, **fields: str | None) -> None:
    """Log what the backend says is installed; a failure to look is no reason to stop."""
    try:
        state = asdict(installer.describe())
    except GpuwardError as exc:
        state = {"describe_failed": str(exc)}
    log.info(event, **fields, **state)
