"""The long-running agent: a cycle, then a jittered sleep, until SIGTERM.

Jitter spreads a fleet's requests over the interval so that 100,000 agents
restarted together do not all hit the server in the same second.
"""

from __future__ import annotations

import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import structlog

from agent.cycle import Cycle, CycleResult, InlineApplier
from fleet.errors import GpuwardError
from node.config import AgentConfig
from node.gpu_health import HealthProbe
from node.slots import Slots

log = structlog.get_logger(__name__)
JITTER = 0.2


def make_probe(config: AgentConfig) -> HealthProbe:
    if config.health_backend == "simulated":
        from node.simulated_gpus import SimulatedProbe

        return SimulatedProbe(config.node_id, Slots(config.slots_dir), config.simulated)
    from node.nvml import NvmlProbe

    return NvmlProbe()


@contextmanager
def watching_probe(config: AgentConfig) -> Iterator[HealthProbe]:
    """The probe of a running agent: on NVML it also listens for XIDs until the end."""
    if config.health_backend != "nvml":
        yield make_probe(config)
        return
    from node.nvml import NvmlProbe

    probe = NvmlProbe(watch_xids=True)
    try:
        yield probe
    finally:
        probe.close()


def run_once(config: AgentConfig, inline_applier: InlineApplier | None = None) -> CycleResult:
    with watching_probe(config) as probe:
        return Cycle(config, probe, inline_applier=inline_applier).run()


def run_forever(
    config: AgentConfig,
    stop: threading.Event | None = None,
    inline_applier: InlineApplier | None = None,
) -> None:
    stop = stop or threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        # Only set the flag: a handler that logs can deadlock on the logger's
        # lock if the signal lands while the main thread is writing a log line.
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with watching_probe(config) as probe:
            _loop(config, Cycle(config, probe, inline_applier=inline_applier), stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("agent_stopped", node=config.node_id)


def _loop(config: AgentConfig, cycle: Cycle, stop: threading.Event) -> None:
    log.info("agent_started", node=config.node_id, interval_s=config.interval_s)
    while not stop.is_set():
        try:
            result = cycle.run()
            log.info("cycle_done", update=result.outcome.update, reason=result.outcome.reason)
        except GpuwardError as exc:
            log.error("cycle_failed", reason=str(exc))
        delay = config.interval_s * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311
        stop.wait(delay)
