"""Stragglers: nodes that look worse than their peers, though nothing has failed.

One slow GPU slows a whole synchronous training job, and degradation rarely
crosses a fixed threshold (clocks a little low, a link replaying a little
more). So each GPU is compared with the other GPUs of its pool (the same GPU
model), metric by metric, with a robust z-score (median and median absolute
deviation, so the stragglers themselves do not drag the reference along). Only
the bad direction counts: a fast GPU is not a straggler.

The metrics are those of speed: clocks, throttle time, the PCIe link, error
rates. Temperature and power are not compared: a warm GPU that keeps its
clocks slows nothing, and one that does not shows in its clocks and throttle
time (hosts differ in temperature by rack position alone).

Each metric is a GPU's value over a window of its latest samples (a median,
or a rate), so one odd sample does not flag a GPU while a degradation that
persists for half the window does. A deviation must also exceed the metric's
floor: across thousands of healthy GPUs some always sit far out in robust
units, yet a clock 1% below its peers slows no job.

Peers are GPUs of the same model under the same enforced power limit: a pool
capped to 500 W runs its clocks lower by physics, and compared with uncapped
GPUs of its model every one of them would look slow. A clock deviation is
judged at 70% of the floor and threshold when the GPU's own window shows a
hardware slowdown reason: the hardware saying it pulled the clock down is
evidence independent of the peers.

Besides each GPU, each node is compared as a whole (the median of its GPUs'
metrics, taking the better middle value of an even count, so that one bad GPU
of two does not drag its node's reference along): a node whose every GPU runs
a few percent slow (a power brake, a firmware setting) stands out more clearly
as a node than GPU by GPU, where each sits nearer the noise. What a node's GPUs
share (the job driving them, the rack's air) is thus judged at node level, and
a GPU's ratio metrics are compared as if its node were typical: scaled by the
pool's median over its node's, which leaves how far it sits below its own
node's other GPUs.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from fleet.gpu import HARDWARE_CLOCK_EVENTS, THERMAL_CLOCK_EVENTS, GpuSample

# metric -> the direction in which it is bad
METRICS: Mapping[str, str] = {
    "sm_clock_ratio": "low",  # SM clock / max SM clock while busy
    "mem_clock_ratio": "low",
    "pcie_link_ratio": "low",  # link generation x width / their maxima while busy
    "throttled_fraction": "high",  # share of busy samples with thermal or hardware slowdown
    "pcie_replays_per_hour": "high",
    "ecc_corrected_per_hour": "high",
}
# metric -> (relative to the pool median, absolute): the least deviation that counts.
FLOORS: Mapping[str, tuple[float, float]] = {
    "sm_clock_ratio": (0.05, 0.0),
    "mem_clock_ratio": (0.05, 0.0),
    "pcie_link_ratio": (0.1, 0.0),
    "throttled_fraction": (0.0, 0.5),
    "pcie_replays_per_hour": (0.0, 50.0),
    "ecc_corrected_per_hour": (0.0, 50.0),
}
# metric -> the window value that corroborates a deviation in it (see the module's docstring).
EVIDENCE: Mapping[str, str] = {"sm_clock_ratio": "hardware_slowed_fraction"}
CORROBORATED = 0.7  # the share of floor and threshold a corroborated deviation must pass
THRESHOLD = 3.5  # robust z-score beyond which a GPU is a straggler (Iglewicz and Hoaglin)
MIN_PEERS = 5  # fewer GPUs than this in a pool: no meaningful "normal"
WINDOW = 5  # samples per GPU: a degradation shows once it fills 3 of them
MIN_BUSY = WINDOW // 2 + 1  # busy samples needed to judge clocks, link and throttling
_CONSISTENCY = 0.6745  # makes the MAD comparable to a standard deviation


@dataclass(frozen=True)
class NodeMetrics:
    node_id: str
    pool: str
    values: Mapping[str, float]  # a subset of METRICS, and of EVIDENCE's values
    gpu: int | None = None  # the GPU measured; None: the node as a whole
    node_values: Mapping[str, float] | None = None  # for a GPU: its node's medians


@dataclass(frozen=True)
class Straggler:
    node_id: str
    pool: str
    metric: str
    value: float
    pool_median: float
    score: float  # robust z-score in the bad direction
    gpu: int | None = None

    def message(self) -> str:
        where = self.node_id if self.gpu is None else f"{self.node_id} GPU {self.gpu}"
        return (
            f"{where}: {self.metric} {self.value:.4g} against a pool median of "
            f"{self.pool_median:.4g} (score {self.score:.1f})"
        )


def find_stragglers(
    nodes: Iterable[NodeMetrics], threshold: float = THRESHOLD, min_peers: int = MIN_PEERS
) -> list[Straggler]:
    """Every (node or GPU, metric) that deviates from its pool in the bad direction."""
    # GPUs are compared with GPUs, whole nodes with whole nodes.
    by_pool: dict[tuple[str, bool], list[NodeMetrics]] = defaultdict(list)
    for node in nodes:
        by_pool[node.pool, node.gpu is None].append(node)
    found = []
    for (pool, _), members in sorted(by_pool.items()):
        for metric, bad in METRICS.items():
            seen = [(n, n.values[metric]) for n in members if metric in n.values]
            if len(seen) < min_peers:
                continue
            pool_median = statistics.median(v for _, v in seen)
            compared = [(n, v, _as_if_typical(n, metric, v, pool_median)) for n, v in seen]
            values = [c for _, _, c in compared]
            median = statistics.median(values)
            mad = statistics.median(abs(v - median) for v in values)
            relative, absolute = FLOORS[metric]
            floor = max(relative * abs(median), absolute)
            # A deviation at the floor scores exactly the threshold, so a pool that
            # is nearly uniform (MAD near zero) flags only departures past the floor.
            scale = max(mad, _CONSISTENCY * floor / threshold)
            if scale == 0:
                continue  # all at zero, and no floor: nothing to compare against
            for node, value, as_compared in compared:
                deviation = (median - as_compared) if bad == "low" else (as_compared - median)
                score = _CONSISTENCY * deviation / scale
                share = CORROBORATED if node.values.get(EVIDENCE.get(metric, ""), 0) > 0 else 1
                if deviation > share * floor and score > share * threshold:
                    found.append(
                        Straggler(node.node_id, pool, metric, value, pool_median, score, node.gpu)
                    )
    return sorted(found, key=lambda s: (s.pool, s.node_id, s.gpu or 0, s.metric))


def _as_if_typical(gpu: NodeMetrics, metric: str, value: float, pool_median: float) -> float:
    """A GPU's ratio metric with its node's shared offset taken out (see the docstring);
    counters, which a node's GPUs do not share, as they are."""
    own = None if gpu.node_values is None else gpu.node_values.get(metric)
    if METRICS[metric] != "low" or not own:
        return value
    return value * pool_median / own


def _busy(sample: GpuSample) -> bool:
    # Idle GPUs legitimately drop clocks and link speed; without reasons, no verdict.
    return sample.clock_events is not None and "gpu_idle" not in sample.clock_events


def _ratio(value: int | None, maximum: int | None) -> float | None:
    return None if value is None or not maximum else value / maximum


def _median(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _per_hour(window: Sequence[tuple[float, GpuSample]], counter: str) -> float | None:
    """The median rate at which a counter rose between consecutive samples.

    The median, not the total over the window: one burst of replays is noise,
    a rate that holds for most of the window is a trend. A counter that went
    down was reset (the driver reloaded) and counts from zero.
    """
    rates = []
    for (t0, s0), (t1, s1) in itertools.pairwise(window):
        before, after = getattr(s0, counter), getattr(s1, counter)
        if before is not None and after is not None and t1 > t0:
            risen = after - before if after >= before else after
            rates.append(risen * 3600 / (t1 - t0))
    # The lower median: a rate must hold for most steps, not just half of them.
    return statistics.median_low(rates) if rates else None


def _share(events: Sequence[set[str]], reasons: frozenset[str]) -> float | None:
    return sum(1 for e in events if reasons & e) / len(events) if events else None


def window_metrics(window: Sequence[tuple[float, GpuSample]]) -> dict[str, float]:
    """One GPU's METRICS (and EVIDENCE) over its timed samples, oldest first; unknown ones
    left out."""
    samples = [s for _, s in window]
    busy = [s for s in samples if _busy(s)]
    if len(busy) < MIN_BUSY:
        # Mostly idle: one busy sample would stand for the whole window.
        busy = []
    events = [set(s.clock_events.reasons) for s in busy if s.clock_events is not None]
    slowed = THERMAL_CLOCK_EVENTS | HARDWARE_CLOCK_EVENTS
    values = {
        "sm_clock_ratio": _median(_ratio(s.sm_clock_mhz, s.sm_clock_max_mhz) for s in busy),
        "mem_clock_ratio": _median(_ratio(s.mem_clock_mhz, s.mem_clock_max_mhz) for s in busy),
        "pcie_link_ratio": _median(
            None
            if (gen := _ratio(s.pcie_gen, s.pcie_gen_max)) is None
            or (width := _ratio(s.pcie_width, s.pcie_width_max)) is None
            else gen * width
            for s in busy
        ),
        "throttled_fraction": _share(events, slowed),
        "hardware_slowed_fraction": _share(events, HARDWARE_CLOCK_EVENTS),
        "pcie_replays_per_hour": _per_hour(window, "pcie_replays"),
        "ecc_corrected_per_hour": _per_hour(window, "ecc_corrected_volatile"),
    }
    return {k: float(v) for k, v in values.items() if v is not None}


@dataclass(frozen=True)
class NodeWindow:
    """A node's latest reported samples: (received at, every GPU's sample), oldest first."""

    node_id: str
    reports: Sequence[tuple[float, Sequence[GpuSample]]]


def gpu_metrics(node: NodeWindow, window: int = WINDOW) -> list[NodeMetrics]:
    """Each GPU's metrics over the node's last ``window`` reports, pooled by GPU model."""
    by_gpu: dict[int, list[tuple[float, GpuSample]]] = defaultdict(list)
    for at, samples in node.reports[-window:]:
        for sample in samples:
            timed = by_gpu[sample.index]
            if timed and timed[-1][1].uuid != sample.uuid:
                timed.clear()  # another GPU at this index (swapped): a new series
            timed.append((at, sample))
    return [
        NodeMetrics(node.node_id, _pool(timed[-1][1]), window_metrics(timed), index)
        for index, timed in sorted(by_gpu.items())
    ]


def _pool(sample: GpuSample) -> str:
    """The GPU's peers: its model, under its enforced power limit (to 10 W) where known."""
    model = sample.name or "unknown"
    if sample.power_limit_mw is None:
        return model
    return f"{model}, {round(sample.power_limit_mw / 10_000) * 10} W"


def node_metrics(gpus: Sequence[NodeMetrics]) -> list[NodeMetrics]:
    """The node as a whole: each metric's median over its GPUs (the better middle value),
    where they share one pool and most of them measured it."""
    pools = {g.pool for g in gpus}
    if len(pools) != 1:
        return []
    better = {"low": statistics.median_high, "high": statistics.median_low}
    values = {
        metric: better[bad](known)
        for metric, bad in METRICS.items()
        if len(known := [g.values[metric] for g in gpus if metric in g.values]) > len(gpus) // 2
    }
    return [NodeMetrics(gpus[0].node_id, pools.pop(), values)] if values else []


@dataclass(frozen=True)
class RankedNode:
    node_id: str
    score: float  # its worst straggler's score
    stragglers: tuple[Straggler, ...]  # worst first


def rank(stragglers: Iterable[Straggler]) -> list[RankedNode]:
    """Stragglers grouped by node, the most deviant node first."""
    by_node: dict[str, list[Straggler]] = defaultdict(list)
    for straggler in stragglers:
        by_node[straggler.node_id].append(straggler)
    ranked = [
        RankedNode(node, max(s.score for s in found), tuple(sorted(found, key=lambda s: -s.score)))
        for node, found in by_node.items()
    ]
    return sorted(ranked, key=lambda r: (-r.score, r.node_id))


def detect(nodes: Iterable[NodeWindow], window: int = WINDOW) -> list[RankedNode]:
    """The fleet's stragglers, ranked, from each node's latest reports."""
    measured = []
    for node in nodes:
        gpus = gpu_metrics(node, window)
        whole = node_metrics(gpus)
        if whole:
            gpus = [replace(g, node_values=whole[0].values) for g in gpus]
        measured += gpus + whole
    return rank(find_stragglers(measured))
