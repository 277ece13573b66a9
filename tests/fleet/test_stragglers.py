"""Straggler detection: peers define normal, only the bad direction counts."""

from __future__ import annotations

import statistics

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.stragglers import NodeMetrics, find_stragglers


def _pool(
    values: list[float], metric: str = "sm_clock_ratio", pool: str = "p"
) -> list[NodeMetrics]:
    return [NodeMetrics(f"n{i}", pool, {metric: v}) for i, v in enumerate(values)]


def test_a_slow_gpu_among_healthy_peers_is_found() -> None:
    nodes = _pool([0.98, 0.97, 0.99, 0.98, 0.97, 0.98, 0.62, 0.99])
    [found] = find_stragglers(nodes)
    assert (found.node_id, found.metric) == ("n6", "sm_clock_ratio")
    assert "0.62" in found.message()


def test_the_good_direction_is_never_a_straggler() -> None:
    assert find_stragglers(_pool([0.90, 0.91, 0.90, 0.92, 0.91, 1.0], "sm_clock_ratio")) == []
    noisy = find_stragglers(_pool([10, 12, 9, 11, 10, 900], "pcie_replays_per_hour"))
    quiet = find_stragglers(_pool([500, 510, 490, 505, 495, 0], "pcie_replays_per_hour"))
    assert [s.node_id for s in noisy] == ["n5"] and quiet == []


def test_a_uniform_pool_flags_only_departures_past_the_floor() -> None:
    assert find_stragglers(_pool([0, 0, 0, 0, 0, 0], "pcie_replays_per_hour")) == []
    # A few replays an hour more than peers that have none slow nothing.
    assert find_stragglers(_pool([0, 0, 0, 0, 0, 40], "pcie_replays_per_hour")) == []
    [found] = find_stragglers(_pool([0, 0, 0, 0, 0, 400], "pcie_replays_per_hour"))
    assert found.node_id == "n5" and found.score > 3.5


def test_a_tiny_deviation_is_no_straggler_however_uniform_the_pool() -> None:
    # 2% below peers that agree to the last digit: far out in robust units, yet harmless.
    assert find_stragglers(_pool([0.95] * 20 + [0.93])) == []
    [found] = find_stragglers(_pool([0.95] * 20 + [0.85]))
    assert found.node_id == "n20"


def test_pools_are_compared_separately_and_small_pools_not_at_all() -> None:
    h100 = _pool([0.70, 0.71, 0.70, 0.72, 0.71], "sm_clock_ratio", "h100")
    a100 = _pool([0.90, 0.91, 0.90, 0.92, 0.91], "sm_clock_ratio", "a100")
    assert find_stragglers(h100 + a100) == []  # H100s are not slow A100s
    assert find_stragglers(_pool([0.90, 0.91, 0.40], "sm_clock_ratio")) == []  # too few peers


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.floats(0.5, 1.0), min_size=5, max_size=40), st.floats(0.1, 10))
def test_scaling_the_metric_changes_nothing(values: list[float], factor: float) -> None:
    plain = {s.node_id for s in find_stragglers(_pool(values))}
    scaled = {s.node_id for s in find_stragglers(_pool([v * factor for v in values]))}
    assert plain == scaled


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.floats(0.5, 1.0), min_size=5, max_size=40))
def test_no_node_at_or_better_than_the_median_is_flagged(values: list[float]) -> None:
    median = statistics.median(values)
    for straggler in find_stragglers(_pool(values)):
        assert straggler.value < median
