"""A simulated fleet's GPU telemetry with injected degradations, and ground truth.

Straggler detection is only as good as its precision and recall on a fleet
where the truth is known. This makes one: hosts of busy GPUs of one model,
each reporting a health sample per GPU every interval, with the noise healthy
GPUs show (clocks moving under power caps, hosts running warmer or cooler by
rack position, a few PCIe replays and corrected ECC errors, bursts of them,
brief software throttling) and idle gaps between jobs: rare, as training jobs
run for hours, but a degraded host caught idle is one no detector can see.
From ``onset`` a chosen share of hosts degrades on one or two GPUs, in one of
four ways of varying severity: thermal throttling,
a clock drop (with or without a reason in the clock-event mask), a PCIe link
trained down, an ECC storm.

``bench.realfleet`` is the messier fleet: mixed models, power-capped pools and
subtle faults. ``evaluate`` takes either: it feeds the reports to
``fleet.stragglers.detect`` as the server does and scores the flagged hosts
against the truth.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, replace
from typing import Protocol

from fleet.gpu import ClockEvents, GpuSample
from fleet.stragglers import WINDOW, NodeWindow, RankedNode, detect

MODEL = "NVIDIA H100 80GB HBM3"
SM_MAX, MEM_MAX = 1980, 2619
POWER_LIMIT_MW = 700_000
DEGRADATIONS = ("thermal_throttling", "clock_drop", "pcie_downgrade", "ecc_storm")

SW_POWER_CAP, HW_SLOWDOWN = 0x004, 0x008
SW_THERMAL, HW_THERMAL, IDLE = 0x020, 0x040, 0x001


@dataclass(frozen=True)
class Fault:
    kind: str  # one of DEGRADATIONS
    gpus: tuple[int, ...]
    severity: float  # 0 mild .. 1 severe


@dataclass
class _Gpu:
    index: int
    uuid: str
    replays: int = 0
    ecc: int = 0


class FleetSim:
    """``hosts`` x ``gpus`` busy GPUs; ``degraded`` of the hosts degrade from ``onset``."""

    def __init__(
        self,
        hosts: int = 1000,
        gpus: int = 8,
        degraded: float = 0.02,
        *,
        onset: int = WINDOW,
        interval_s: float = 300.0,
        seed: int = 0,
    ) -> None:
        self.rng = random.Random(seed)  # reproducible telemetry, not secrets
        self.interval_s = interval_s
        self.onset = onset
        self.gpus_per_host = gpus
        self.step_no = 0
        self.names = [f"node-{i:05d}" for i in range(hosts)]
        self.gpus = {
            name: [_Gpu(g, f"GPU-{h:05d}-{g:02d}") for g in range(gpus)]
            for h, name in enumerate(self.names)
        }
        # Rack position: some hosts run warmer than others.
        self.warmth = {name: self.rng.gauss(0, 2.5) for name in self.names}
        self.idle_for = dict.fromkeys(self.names, 0)  # intervals left in a gap between jobs
        chosen = self.rng.sample(self.names, round(hosts * degraded))
        self.faults = {
            name: Fault(
                self.rng.choice(DEGRADATIONS),
                tuple(sorted(self.rng.sample(range(gpus), self.rng.choice((1, 1, 2))))),
                self.rng.random(),
            )
            for name in chosen
        }

    @property
    def truth(self) -> frozenset[str]:
        return frozenset(self.faults)

    def step(self) -> list[tuple[str, float, tuple[GpuSample, ...]]]:
        """One report interval: every host's samples, at the interval's time."""
        at = self.step_no * self.interval_s
        degrading = self.step_no >= self.onset
        self.step_no += 1
        reports = []
        for name in self.names:
            if self.idle_for[name] == 0 and self.rng.random() < 0.0025:
                self.idle_for[name] = self.rng.randint(2, 6)
            idle = self.idle_for[name] > 0
            self.idle_for[name] -= idle
            fault = self.faults.get(name) if degrading else None
            samples = tuple(
                self._sample(name, gpu, idle, fault if fault and gpu.index in fault.gpus else None)
                for gpu in self.gpus[name]
            )
            reports.append((name, at, samples))
        return reports

    def _sample(self, host: str, gpu: _Gpu, idle: bool, fault: Fault | None) -> GpuSample:
        rng = self.rng
        gpu.replays += poisson(rng, 0.3) + (rng.randint(5, 40) if rng.random() < 0.005 else 0)
        gpu.ecc += rng.randint(1, 3) if rng.random() < 0.01 else 0
        mask = SW_POWER_CAP if rng.random() < 0.4 else 0
        if rng.random() < 0.01:
            mask |= SW_THERMAL  # a brief warm spell
        sample = GpuSample(
            index=gpu.index,
            uuid=gpu.uuid,
            name=MODEL,
            temperature_c=round(63 + self.warmth[host] + rng.gauss(0, 1.5)),
            power_mw=round(min(POWER_LIMIT_MW, rng.gauss(610_000, 30_000))),
            power_limit_mw=POWER_LIMIT_MW,
            sm_clock_mhz=round(min(SM_MAX, rng.gauss(1830, 35))),
            sm_clock_max_mhz=SM_MAX,
            mem_clock_mhz=MEM_MAX,
            mem_clock_max_mhz=MEM_MAX,
            clock_events=ClockEvents(mask),
            ecc_corrected_volatile=gpu.ecc,
            pcie_gen=5,
            pcie_gen_max=5,
            pcie_width=16,
            pcie_width_max=16,
            pcie_replays=gpu.replays,
            gpu_util_pct=round(min(100, rng.gauss(96, 3))),
        )
        if idle:
            # At rest: clocks and the link generation drop, and so does the heat.
            return replace(
                sample,
                temperature_c=round(34 + self.warmth[host] + rng.gauss(0, 1.5)),
                power_mw=round(rng.gauss(75_000, 5_000)),
                sm_clock_mhz=345,
                clock_events=ClockEvents(IDLE),
                pcie_gen=1,
                gpu_util_pct=0,
            )
        return sample if fault is None else self._degrade(sample, gpu, fault)

    def _degrade(self, sample: GpuSample, gpu: _Gpu, fault: Fault) -> GpuSample:
        rng, s = self.rng, fault.severity
        clock, temperature = sample.sm_clock_mhz or 0, sample.temperature_c or 0
        mask = sample.clock_events.mask if sample.clock_events else 0
        if fault.kind == "thermal_throttling":
            hot = HW_THERMAL if s > 0.6 else SW_THERMAL
            return replace(
                sample,
                temperature_c=temperature + round(12 + 13 * s),
                sm_clock_mhz=round(clock * (0.92 - 0.2 * s)),
                clock_events=ClockEvents(mask | hot),
            )
        if fault.kind == "clock_drop":
            # Half the time the mask names no reason: only the clock itself gives it away.
            reason = HW_SLOWDOWN if rng.random() < 0.5 else 0
            return replace(
                sample,
                sm_clock_mhz=round(clock * (0.86 - 0.3 * s)),
                clock_events=ClockEvents(mask | reason),
            )
        if fault.kind == "pcie_downgrade":
            return replace(sample, pcie_width=8) if s > 0.5 else replace(sample, pcie_gen=4)
        gpu.ecc += round(rng.gauss(300 + 2000 * s, 50))  # ecc_storm
        return replace(sample, ecc_corrected_volatile=gpu.ecc)


def poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method: fine for the small means used here.
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


class SimulatedFleet(Protocol):
    """What ``evaluate`` needs of a simulator."""

    names: list[str]
    onset: int
    gpus_per_host: int

    @property
    def truth(self) -> frozenset[str]: ...

    def step(self) -> list[tuple[str, float, tuple[GpuSample, ...]]]: ...


@dataclass(frozen=True)
class Evaluation:
    hosts: int
    gpus_per_host: int
    degraded: int
    intervals_after_onset: int
    flagged: int
    true_positives: int
    precision: float
    recall: float
    ranked: tuple[RankedNode, ...]


def evaluate(sim: SimulatedFleet, after_onset: int = 3) -> Evaluation:
    """Run warm-up intervals, then ``after_onset`` degraded ones; score the detector."""
    history: dict[str, deque[tuple[float, tuple[GpuSample, ...]]]] = {
        name: deque(maxlen=WINDOW) for name in sim.names
    }
    for _ in range(sim.onset + after_onset):
        for name, at, samples in sim.step():
            history[name].append((at, samples))
    ranked = detect(NodeWindow(name, tuple(reports)) for name, reports in history.items())
    flagged = {r.node_id for r in ranked}
    hits = len(flagged & sim.truth)
    return Evaluation(
        hosts=len(sim.names),
        gpus_per_host=sim.gpus_per_host,
        degraded=len(sim.truth),
        intervals_after_onset=after_onset,
        flagged=len(flagged),
        true_positives=hits,
        precision=hits / len(flagged) if flagged else 1.0,
        recall=hits / len(sim.truth) if sim.truth else 1.0,
        ranked=tuple(ranked),
    )
