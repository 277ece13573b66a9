"""What the node runs with, against what its active bundle declares.

The declaration is the active slot's signed manifest (``fleet.driver_settings``
says why it lives there). Both node processes compare with it: the root
applier's health gate after a switch, and the agent for every report, so both
read the node the same way, here: module parameters from the driver's
``/proc/driver/nvidia/params`` (``AgentConfig.driver_params_file``), GPU modes
from NVML (``node.nvml``), or from the simulation on hosts without GPUs.
"""

from __future__ import annotations

from fleet.driver_settings import (
    DriverSettings,
    EffectiveSettings,
    SettingsReport,
    drift,
    parse_params,
)
from fleet.errors import GpuwardError
from keys.durable_files import read_bounded
from node.config import AgentConfig
from node.slots import Slots

MAX_PARAMS_BYTES = 64 * 1024  # the driver prints about forty short lines


def declared_settings(config: AgentConfig, slot: str | None) -> DriverSettings | None:
    """What ``slot``'s bundle declares; None: nothing (or no bundle)."""
    content = Slots(config.slots_dir).content(slot)
    return None if content is None else content.manifest.settings


def read_effective(config: AgentConfig, declared: DriverSettings) -> EffectiveSettings:
    """The node's side of every setting ``declared`` names; only those are read."""
    if config.health_backend == "simulated":
        from node.simulated_gpus import simulated_settings

        return simulated_settings(config.node_id, config.simulated, declared)
    params: dict[str, str] | None = None
    params_error = ""
    if declared.parameters:
        path = config.driver_params_file
        try:
            params = parse_params(read_bounded(path, MAX_PARAMS_BYTES, "driver params").decode())
        except (GpuwardError, OSError, UnicodeDecodeError) as exc:
            params_error = f"cannot read {path} ({exc}): is the nvidia module loaded?"
    if not declared.gpu_modes:
        return EffectiveSettings(params, (), params_error)
    from node.nvml import NvmlUnavailable, read_gpu_modes  # pynvml: only where GPUs are read

    try:
        return EffectiveSettings(params, read_gpu_modes(), params_error)
    except NvmlUnavailable as exc:
        return EffectiveSettings(params, (), params_error, gpus_error=str(exc))


def settings_report(config: AgentConfig) -> SettingsReport | None:
    """For the agent's report: the active bundle's settings and the node's drift."""
    declared = declared_settings(config, Slots(config.slots_dir).active())
    if declared is None:
        return None
    return SettingsReport(declared, drift(declared, read_effective(config, declared)))
