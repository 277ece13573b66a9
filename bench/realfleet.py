"""A realistic fleet's GPU telemetry: the nuisances a detector must ignore, the subtle
faults it must find, and the truth for both, per host and per kind.

``bench.fleetsim`` degrades one model of busy GPUs by clear margins. Real fleets
are messier, and each nuisance here is written from what the hardware does, not
from what a detector checks:

- Mixed models (H100 SXM and PCIe, A100, H200), bought and racked in blocks,
  each with its nominal clocks, power limit, link generation and temperature.
- Clocks under load follow power: training asks for more than the power limit,
  so the driver holds power at the limit (setting ``sw_power_cap``) and the SM
  clock settles where dynamic power (rising with the cube of the clock, as
  voltage rises with it) plus leakage meets the limit. Leakage differs chip to
  chip and grows with temperature; jobs differ in how hard they drive the GPUs.
- Power-capped pools: racks whose enforced power limit an operator lowered (as
  NVML's enforced limit reports it); their clocks drop by the physics above.
- Warm racks: an inlet 5-8 C warmer (rack position in the aisle), so GPUs run
  warmer, leak more, and clock a little lower at the same limit.
- Idle GPUs: gaps between jobs and jobs that use only some of a host's GPUs; at
  rest clocks fall to idle, the link trains down to gen 1, ``gpu_idle`` is set.
- One-interval blips: a single report of low clocks (a brief power brake, a
  thermal spike, a hardware slowdown signal) or a burst of PCIe replays (a link
  retraining once).

From ``onset`` a share of hosts carries one true fault:

- ``clock_low``: one or two GPUs clock 6-10% low under load, with
  ``hw_slowdown`` asserted intermittently (a marginal voltage regulator).
- ``mem_clock_stuck``: one GPU's memory clock stuck in a lower P-state.
- ``pcie_replays``: one GPU's replay counter climbing steadily: a marginal link
  whose bit error rate sits between 1e-13 and 1e-11 at its line rate.
- ``node_slow``: every GPU of the node ~8% (6-10%) slower than its peers, with
  no reason beyond the usual power cap (a node-level power budget or firmware
  setting holding the whole board back).

Idle gaps are kept to hosts without a fault: a fault caught idle is one no
detector can see, and the truth is what a detector could know.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from bench.fleetsim import HW_SLOWDOWN, IDLE, SW_POWER_CAP, SW_THERMAL, poisson
from fleet.gpu import ClockEvents, GpuSample
from fleet.stragglers import WINDOW

HW_POWER_BRAKE = 0x080
FAULTS = ("clock_low", "mem_clock_stuck", "pcie_replays", "node_slow")
NUISANCES = ("idle", "power_cap", "warm_rack", "clock_blip", "replay_blip")
RACK_HOSTS = 10
JOB_HOSTS = 32  # hosts per training job: a job's hosts share its intensity
INLET_C = 24.0
LEAKAGE_SHARE = 0.12  # of the power limit, at the model's typical temperature
LEAKAGE_PER_C = 0.02  # leakage grows ~2% per degree
IDLE_POWER_SHARE = 0.1
BLIP_CHANCE = 0.004  # per host and interval, for each kind of blip


@dataclass(frozen=True)
class SimulatedModel:
    name: str  # as NVML reports it
    sm_max_mhz: int
    sm_idle_mhz: int
    mem_max_mhz: int
    power_limit_w: int  # the default
    load_temp_c: float  # typical under load at the default limit, 24 C inlet
    pcie_gen: int
    share: float  # of the fleet's racks


MODELS = (
    SimulatedModel("NVIDIA H100 80GB HBM3", 1980, 345, 2619, 700, 65.0, 5, 0.40),
    SimulatedModel("NVIDIA H100 PCIe", 1755, 345, 1593, 350, 70.0, 5, 0.15),
    SimulatedModel("NVIDIA A100-SXM4-80GB", 1410, 210, 1593, 400, 60.0, 4, 0.25),
    SimulatedModel("NVIDIA H200", 1980, 345, 3201, 700, 65.0, 5, 0.20),
)
MEMORY_PSTATES = (0.5, 0.6, 0.8)  # lower memory clocks a stuck GPU may sit at


@dataclass(frozen=True)
class HostFault:
    kind: str  # one of FAULTS
    gpus: tuple[int, ...]
    strength: float  # the fault's own parameter: clock factor, memory P-state, replays/s


@dataclass
class _Chip:
    index: int
    uuid: str
    leakage: float  # this chip's leakage relative to its model's
    in_use: bool  # False: the host's job leaves this GPU idle
    replays: int = 0
    ecc: int = 0


@dataclass
class _Host:
    name: str
    model: SimulatedModel
    power_limit_w: float
    inlet_c: float
    intensity: float  # the job's power demand at full clocks, relative to the limit
    chips: list[_Chip]
    nuisances: set[str] = field(default_factory=set)
    idle_for: int = 0


class RealisticFleetSim:
    """``hosts`` x ``gpus`` GPUs of mixed models; ``degraded`` of the hosts get a fault."""

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
        self.rng = rng = random.Random(seed)  # reproducible telemetry, not secrets
        self.interval_s, self.onset, self.gpus_per_host = interval_s, onset, gpus
        self.step_no = 0
        self.names = [f"node-{i:05d}" for i in range(hosts)]
        chosen = rng.sample(self.names, round(hosts * degraded))
        self.faults = {name: self._fault(rng.choice(FAULTS), gpus) for name in chosen}
        self.hosts: dict[str, _Host] = {}
        racks = [self.names[i : i + RACK_HOSTS] for i in range(0, hosts, RACK_HOSTS)]
        intensities = [rng.gauss(1.12, 0.03) for _ in range(0, hosts, JOB_HOSTS)]
        for rack in racks:
            model = rng.choices(MODELS, [m.share for m in MODELS])[0]
            capped = rng.random() < 0.12
            limit = model.power_limit_w * (rng.uniform(0.7, 0.85) if capped else 1.0)
            warm = rng.uniform(5, 8) if rng.random() < 0.15 else 0.0
            for name in rack:
                number = int(name.removeprefix("node-"))
                partial = name not in self.faults and rng.random() < 0.03
                used = rng.randint(1, gpus - 1) if partial else gpus
                host = _Host(
                    name,
                    model,
                    limit,
                    INLET_C + warm + rng.gauss(0, 1),
                    intensities[number // JOB_HOSTS] * rng.gauss(1, 0.01),
                    [
                        _Chip(g, f"GPU-{number:05d}-{g:02d}", rng.gauss(1, 0.15), g < used)
                        for g in range(gpus)
                    ],
                )
                host.nuisances |= {"power_cap"} if capped else set()
                host.nuisances |= {"warm_rack"} if warm else set()
                host.nuisances |= {"idle"} if partial else set()
                self.hosts[name] = host

    def _fault(self, kind: str, gpus: int) -> HostFault:
        rng = self.rng
        if kind == "node_slow":
            return HostFault(kind, tuple(range(gpus)), rng.uniform(0.90, 0.94))
        if kind == "clock_low":
            affected = tuple(sorted(rng.sample(range(gpus), rng.choice((1, 2)))))
            return HostFault(kind, affected, rng.uniform(0.90, 0.94))
        gpu = (rng.randrange(gpus),)
        if kind == "mem_clock_stuck":
            return HostFault(kind, gpu, rng.choice(MEMORY_PSTATES))
        # Replays per second from a bit error rate at the link's line rate (~512 Gb/s).
        return HostFault(kind, gpu, 512e9 * 10 ** rng.uniform(-13, -11))

    @property
    def truth(self) -> frozenset[str]:
        return frozenset(self.faults)

    @property
    def nuisances(self) -> dict[str, frozenset[str]]:
        """Each host's nuisances so far (blips accumulate as they happen)."""
        return {name: frozenset(host.nuisances) for name, host in self.hosts.items()}

    def step(self) -> list[tuple[str, float, tuple[GpuSample, ...]]]:
        """One report interval: every host's samples, at the interval's time."""
        rng = self.rng
        at = self.step_no * self.interval_s
        faulty = self.step_no >= self.onset
        self.step_no += 1
        reports = []
        for name, host in self.hosts.items():
            if name not in self.faults and host.idle_for == 0 and rng.random() < 0.005:
                host.idle_for = rng.randint(2, 6)  # a gap between jobs
                host.nuisances.add("idle")
            resting = host.idle_for > 0
            host.idle_for -= resting
            fault = self.faults.get(name) if faulty else None
            clock_blip = rng.randrange(len(host.chips)) if rng.random() < BLIP_CHANCE else None
            replay_blip = rng.randrange(len(host.chips)) if rng.random() < BLIP_CHANCE else None
            samples = []
            for chip in host.chips:
                busy = chip.in_use and not resting
                sample = self._sample(host, chip, busy, fault, chip.index == clock_blip)
                if chip.index == replay_blip:
                    chip.replays += rng.randint(3, 50)  # the link retrained once
                    host.nuisances.add("replay_blip")
                samples.append(sample)
            if clock_blip is not None and host.chips[clock_blip].in_use and not resting:
                host.nuisances.add("clock_blip")
            reports.append((name, at, tuple(samples)))
        return reports

    def _sample(
        self, host: _Host, chip: _Chip, busy: bool, fault: HostFault | None, blip: bool
    ) -> GpuSample:
        rng, model = self.rng, host.model
        mine = fault if fault is not None and chip.index in fault.gpus else None
        chip.replays += poisson(rng, 0.15)  # a healthy link: a bit error now and then
        if mine is not None and mine.kind == "pcie_replays":
            chip.replays += poisson(rng, mine.strength * self.interval_s)
        chip.ecc += rng.randint(1, 2) if rng.random() < 0.005 else 0
        mem = model.mem_max_mhz
        if mine is not None and mine.kind == "mem_clock_stuck":
            mem = round(mem * mine.strength)
        limit_w = host.power_limit_w
        # Thermal resistance from the model's typical temperature at its default limit.
        resistance = (model.load_temp_c - INLET_C) / model.power_limit_w
        if not busy:
            power = model.power_limit_w * IDLE_POWER_SHARE * rng.gauss(1, 0.05)
            temperature = host.inlet_c + resistance * power + rng.gauss(0, 1)
            return self._reading(host, chip, temperature, power, model.sm_idle_mhz, mem, IDLE, 1)
        temperature = host.inlet_c + resistance * limit_w
        leakage = (
            LEAKAGE_SHARE
            * model.power_limit_w
            * chip.leakage
            * (1 + LEAKAGE_PER_C * (temperature - model.load_temp_c))
        )
        dynamic_at_max = host.intensity * model.power_limit_w - leakage
        ratio = min(1.0, ((limit_w - leakage) / dynamic_at_max) ** (1 / 3))
        mask = SW_POWER_CAP if ratio < 1 else 0
        ratio *= rng.gauss(1, 0.012)  # the power controller hunting around its target
        if mine is not None and mine.kind in ("clock_low", "node_slow"):
            ratio *= mine.strength
            if mine.kind == "clock_low" and rng.random() < 0.4:
                mask |= HW_SLOWDOWN
        if blip:
            ratio *= rng.uniform(0.6, 0.9)
            mask |= rng.choice((0, SW_THERMAL, HW_POWER_BRAKE, HW_SLOWDOWN))
        ratio = min(1.0, ratio)
        # Power follows the clock's cube below the limit; at the limit it stays there.
        power = min(limit_w, leakage + dynamic_at_max * ratio**3) * rng.gauss(1, 0.01)
        temperature = host.inlet_c + resistance * power + rng.gauss(0, 1)
        sm = round(model.sm_max_mhz * ratio / 15) * 15  # clocks move in 15 MHz steps
        return self._reading(host, chip, temperature, power, sm, mem, mask, model.pcie_gen)

    @staticmethod
    def _reading(
        host: _Host,
        chip: _Chip,
        temperature: float,
        power_w: float,
        sm_mhz: int,
        mem_mhz: int,
        mask: int,
        pcie_gen: int,
    ) -> GpuSample:
        model = host.model
        return GpuSample(
            index=chip.index,
            uuid=chip.uuid,
            name=model.name,
            temperature_c=round(temperature),
            power_mw=round(power_w * 1000),
            power_limit_mw=round(host.power_limit_w * 1000),
            sm_clock_mhz=sm_mhz,
            sm_clock_max_mhz=model.sm_max_mhz,
            mem_clock_mhz=mem_mhz,
            mem_clock_max_mhz=model.mem_max_mhz,
            clock_events=ClockEvents(mask),
            ecc_corrected_volatile=chip.ecc,
            pcie_gen=pcie_gen,
            pcie_gen_max=model.pcie_gen,
            pcie_width=16,
            pcie_width_max=16,
            pcie_replays=chip.replays,
            gpu_util_pct=0 if mask & IDLE else 97,
        )
