"""Stragglers: nodes that look worse than their peers, though nothing has failed.

One slow GPU slows a whole synchronous training job, and degradation rarely
crosses a fixed threshold (clocks a little low, a card a little hot, a link
replaying a little more). So each node is compared with the other nodes of its
pool, metric by metric, with a robust z-score (median and median absolute
deviation, so the stragglers themselves do not drag the reference along).
Only the bad direction counts: a cool GPU is not a straggler.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# metric -> the direction in which it is bad
METRICS: Mapping[str, str] = {
    "sm_clock_ratio": "low",  # SM clock / max SM clock while busy
    "mem_clock_ratio": "low",
    "temperature_c": "high",
    "power_ratio": "high",  # power draw / power limit
    "pcie_replays_per_hour": "high",
    "ecc_corrected_per_hour": "high",
}
THRESHOLD = 3.5  # robust z-score beyond which a node is a straggler (Iglewicz and Hoaglin)
MIN_PEERS = 5  # fewer nodes than this in a pool: no meaningful "normal"
_CONSISTENCY = 0.6745  # makes the MAD comparable to a standard deviation


@dataclass(frozen=True)
class NodeMetrics:
    node_id: str
    pool: str
    values: Mapping[str, float]  # a subset of METRICS


@dataclass(frozen=True)
class Straggler:
    node_id: str
    pool: str
    metric: str
    value: float
    pool_median: float
    score: float  # robust z-score in the bad direction; inf when the pool is uniform

    def message(self) -> str:
        return (
            f"{self.node_id}: {self.metric} {self.value:g} against a pool median of "
            f"{self.pool_median:g} (score {self.score:.1f})"
        )


def find_stragglers(
    nodes: Iterable[NodeMetrics], threshold: float = THRESHOLD, min_peers: int = MIN_PEERS
) -> list[Straggler]:
    """Every (node, metric) that deviates from its pool in the bad direction."""
    by_pool: dict[str, list[NodeMetrics]] = defaultdict(list)
    for node in nodes:
        by_pool[node.pool].append(node)
    found = []
    for pool, members in sorted(by_pool.items()):
        for metric, bad in METRICS.items():
            seen = [(n.node_id, n.values[metric]) for n in members if metric in n.values]
            if len(seen) < min_peers:
                continue
            values = [v for _, v in seen]
            median = statistics.median(values)
            mad = statistics.median(abs(v - median) for v in values)
            for node_id, value in seen:
                deviation = (median - value) if bad == "low" else (value - median)
                if deviation <= 0:
                    continue
                if mad == 0:
                    # Most of the pool is identical: flag only clear departures from it.
                    score = float("inf") if deviation > 0.05 * max(abs(median), 1e-9) else 0.0
                else:
                    score = _CONSISTENCY * deviation / mad
                if score > threshold:
                    found.append(Straggler(node_id, pool, metric, value, median, score))
    return sorted(found, key=lambda s: (s.pool, s.node_id, s.metric))
