"""The straggler detector against a simulated fleet whose truth is known."""

from __future__ import annotations

from bench.fleetsim import FleetSim, evaluate

# Which metric gives each injected degradation away.
GIVES_AWAY = {
    "thermal_throttling": {"throttled_fraction", "sm_clock_ratio"},
    "clock_drop": {"sm_clock_ratio", "throttled_fraction"},
    "pcie_downgrade": {"pcie_link_ratio"},
    "ecc_storm": {"ecc_corrected_per_hour"},
}


def test_1000_hosts_8_gpus_2_percent_degraded_found_within_3_intervals() -> None:
    sim = FleetSim(hosts=1000, gpus=8, degraded=0.02, seed=0)
    result = evaluate(sim, after_onset=3)
    assert (result.hosts, result.gpus_per_host, result.degraded) == (1000, 8, 20)
    assert result.precision >= 0.95, result
    assert result.recall >= 0.95, result


def test_each_degradation_is_found_by_its_own_metric() -> None:
    sim = FleetSim(hosts=200, gpus=8, degraded=0.1, seed=1)
    result = evaluate(sim, after_onset=3)
    assert {f.kind for f in sim.faults.values()} == set(GIVES_AWAY)
    found = [
        (node, sim.faults[node.node_id]) for node in result.ranked if node.node_id in sim.faults
    ]
    assert {fault.kind for _, fault in found} == set(GIVES_AWAY)
    for node, fault in found:
        assert {s.metric for s in node.stragglers} <= GIVES_AWAY[fault.kind], (fault, node)
        assert {s.gpu for s in node.stragglers} <= set(fault.gpus)


def test_a_degradation_counts_only_once_it_persists() -> None:
    # One degraded report in a window of five is an outlier, not a straggler.
    result = evaluate(FleetSim(hosts=200, gpus=8, degraded=0.1, seed=1), after_onset=1)
    assert result.true_positives == 0
