"""The health gate: does the node run the driver it should, on healthy GPUs?

A probe (NVML on a real host, a simulation elsewhere) reports what it sees as
``fleet.report.GpuHealth`` records; the gate compares that with the driver the
active slot should have loaded. Any reason returned means "roll back".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fleet.report import GpuHealth


@dataclass(frozen=True)
class ProbeResult:
    """What a probe saw. ``error`` is set when it could not look at all."""

    driver_version: str | None
    gpus: tuple[GpuHealth, ...]
    error: str | None = None


class HealthProbe(Protocol):
    def probe(self) -> ProbeResult:
        """Look at the GPUs now. Must not raise: failures go in ``error``."""
        ...


def gate(result: ProbeResult, expected_driver: str) -> list[str]:
    """Every reason the node is not healthy on ``expected_driver``; empty when it is."""
    if result.error is not None:
        return [result.error]
    reasons = []
    if result.driver_version != expected_driver:
        reasons.append(
            f"driver {result.driver_version or 'none'} is loaded, expected {expected_driver}"
        )
    if not result.gpus:
        reasons.append("no GPU visible")
    for gpu in result.gpus:
        reasons.extend(f"GPU {gpu.index} ({gpu.uuid}): {p}" for p in gpu.problems)
    return reasons
