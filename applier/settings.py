"""Enforcing a slot's declared driver settings (``fleet.driver_settings``) at the switch.

The state machine calls these at fixed points, each idempotent, so a crash
anywhere resumes to the settings of exactly one slot:

* before the driver switch (and before a rollback), the module parameters of
  the slot about to run are written to one modprobe.d file, atomically, or the
  file is removed when that slot declares none; the modules the switch loads
  read it. The running slot's file is never edited in place.
* before every look of the health gate, the GPU modes the slot declares are
  set where a GPU differs (again after a reboot mid-update: the driver forgets
  persistence and compute mode when it reloads).
* the gate then reads every declared setting back (``node.driver_settings``).

The rule: the settings are part of the release. A declared value the node does
not run with after the switch (a parameter the loaded driver shows otherwise
or lacks, a mode NVML refused or reads back otherwise) fails the health gate,
and the node rolls back to the previous slot, whose own settings are restored
with its driver: that pair is known to work. A change NVML accepts but defers
to the next reboot or GPU reset (ECC, and MIG on a GPU that cannot switch at
once) is not a failure: the update commits, and the agent reports the setting
as pending drift until the reset. Once committed, every later start of the
applier sets again what a driver reload forgets (persistence and compute mode),
which is safe with jobs running; ECC and MIG changes wait for the next switch,
which drains the GPUs first.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from fleet.driver_settings import DriverSettings, drift, failing, modprobe_options
from keys.durable_files import atomic_write, fsync_dir
from node.config import AgentConfig
from node.crash_points import crash_point
from node.driver_settings import declared_settings, read_effective

log = structlog.get_logger(__name__)

# Sorts after distribution files (nvidia.conf, nvidia-graphics-drivers.conf):
# modprobe reads /etc/modprobe.d in name order and the kernel takes the last
# value of a repeated parameter, so the declared one wins.
MODPROBE_CONF = Path("etc/modprobe.d/zz-gpuward-nvidia.conf")
# What a driver reload resets, and so what every start of the applier sets again.
RESET_BY_RELOAD = frozenset({"persistence_mode", "compute_mode"})


def write_module_parameters(config: AgentConfig, slot: str | None, point: str) -> None:
    """Make the modprobe.d file say what ``slot`` declares (remove it: nothing);
    ``point`` is the crash point reached once it is durable."""
    path = config.root_dir / MODPROBE_CONF
    settings = declared_settings(config, slot)
    if slot is not None and settings is not None and settings.parameters:
        atomic_write(path, modprobe_options(settings, slot))
        log.info(
            "module_parameters_written", slot=slot, path=str(path), count=len(settings.parameters)
        )
    elif path.exists():
        path.unlink()
        fsync_dir(path.parent)
        log.info("module_parameters_removed", slot=slot, path=str(path))
    crash_point(point)


def enforce_gpu_modes(config: AgentConfig, slot: str | None, *, all_modes: bool) -> tuple[str, ...]:
    """Set the GPU modes ``slot`` declares (with ``all_modes`` false, only those a
    driver reload resets); what failed, for the applier's result and log."""
    settings = declared_settings(config, slot)
    modes = () if settings is None else settings.gpu_modes
    if not all_modes:
        modes = tuple((name, value) for name, value in modes if name in RESET_BY_RELOAD)
    if not modes or config.health_backend == "simulated":
        return ()  # simulated GPUs run with what the active slot declares
    from node.nvml import NvmlUnavailable, set_gpu_modes

    try:
        failed = set_gpu_modes(modes)
    except NvmlUnavailable as exc:
        failed = (str(exc),)
    if failed:
        log.error("gpu_modes_not_set", slot=slot, failed=failed[:8])
    return failed


def settings_problems(config: AgentConfig, settings: DriverSettings | None) -> list[str]:
    """The gate's reasons: each declared setting the node does not run with, and
    is not merely waiting for a reset to."""
    if settings is None:
        return []
    found = failing(drift(settings, read_effective(config, settings)))
    return [d.reason for d in found]
