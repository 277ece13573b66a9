"""Waiting for the GPUs to drain before the switch, or for a maintenance window.

Flipping the driver under a running job kills it; waiting forever leaves a
node on a driver the fleet wants gone. The applier waits a bounded time for no
compute process to run, goes ahead at once inside an operator's maintenance
window, and otherwise defers the update to its next start, naming the next
window so the report says when it will happen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import structlog

from fleet.maintenance import Window, next_opening, open_window
from node.config import AgentConfig

log = structlog.get_logger(__name__)


class GpuActivity(Protocol):
    def compute_processes(self) -> int:
        """How many compute processes run on the node's GPUs now."""
        ...


class SimulatedActivity:
    def __init__(self, count: int) -> None:
        self._count = count

    def compute_processes(self) -> int:
        return self._count


class NvmlActivity:
    def compute_processes(self) -> int:
        import pynvml

        from node.nvml import NvmlUnavailable, nvml_session

        try:
            with nvml_session():
                return sum(
                    len(
                        pynvml.nvmlDeviceGetComputeRunningProcesses(
                            pynvml.nvmlDeviceGetHandleByIndex(i)
                        )
                    )
                    for i in range(pynvml.nvmlDeviceGetCount())
                )
        except NvmlUnavailable as exc:
            # No usable driver (a first install, say): nothing can compute on the GPUs.
            # Not a problem of its own: the health gate judges the driver afterwards.
            log.info("drain_without_nvml", reason=str(exc))
            return 0


def make_activity(config: AgentConfig) -> GpuActivity:
    if config.health_backend == "simulated":
        return SimulatedActivity(config.simulated.compute_processes)
    return NvmlActivity()


@dataclass(frozen=True)
class Drained:
    """Whether the switch may go ahead now, and why (or why not)."""

    ready: bool
    reason: str


@dataclass(frozen=True)
class Drain:
    """Wait until no compute process runs, or a maintenance window is open, for at
    most ``max_wait_s``; then defer, naming the next window."""

    activity: GpuActivity
    max_wait_s: float
    poll_s: float
    windows: tuple[Window, ...] = ()
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    wall: Callable[[], float] = time.time  # maintenance windows are in UTC

    def wait(self) -> Drained:
        deadline = self.clock() + self.max_wait_s
        while True:
            busy = self.activity.compute_processes()
            if busy == 0:
                return Drained(True, "the GPUs are idle")
            now = datetime.fromtimestamp(self.wall(), UTC)
            window = open_window(self.windows, now)
            if window is not None:
                return Drained(
                    True,
                    f"inside the maintenance window {window.text!r} ({busy} compute processes)",
                )
            left = deadline - self.clock()
            if left <= 0:
                return Drained(False, self._deferred(busy, now))
            log.info("drain_waiting", compute_processes=busy, left_s=round(left, 1))
            self.sleep(min(self.poll_s, left))

    def _deferred(self, busy: int, now: datetime) -> str:
        reason = (
            f"deferred: {busy} compute processes still ran after {self.max_wait_s:g}s; "
            "the update stays staged until the next start"
        )
        upcoming = next_opening(self.windows, now)
        if upcoming is not None:
            opens, window = upcoming
            reason += (
                f"; the next maintenance window ({window.text!r}) opens {opens:%Y-%m-%d %H:%M} UTC"
            )
        return reason
