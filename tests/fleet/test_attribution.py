"""Attribution: degradations clustered on a rack, on a driver, on one card, or nowhere."""

from __future__ import annotations

import random
from fractions import Fraction
from math import comb

import pytest

from fleet.attribution import (
    MIN_NODES,
    Attribution,
    NodeCondition,
    attribute,
    binomial_tail,
)
from fleet.report import HealthReport
from fleet.topology import Topology
from tests.simnode import report_doc

RACKS, PER_RACK = 10, 20  # 200 nodes; rows of five racks, a PDU per half rack
OLD, NEW = "580.65.06", "580.82.07"


def _fleet(
    degraded: set[str], driver_of: dict[str, str] | None = None, cards: int = 2
) -> list[NodeCondition]:
    conditions = []
    for r in range(RACKS):
        for i in range(PER_RACK):
            node_id = f"r{r:02}-n{i:02}"
            conditions.append(
                NodeCondition(
                    node_id,
                    node_id in degraded,
                    (driver_of or {}).get(node_id, OLD),
                    Topology(rack=f"r{r:02}", row=f"row{r // 5}", pdu=f"r{r:02}-{i // 10}"),
                    tuple(range(cards)) if node_id in degraded else (),
                    ("thermal slowdown",) if node_id in degraded else (),
                )
            )
    return conditions


def test_ten_degraded_nodes_in_one_rack_are_the_rack() -> None:
    hit = {f"r03-n{i:02}" for i in range(0, 20, 2)}  # every other node: both PDUs
    found = attribute(_fleet(hit))
    assert [(c.cause, c.label) for c in found.clusters] == [("rack", "r03")]
    (rack,) = found.clusters
    assert (rack.nodes, rack.degraded, rack.share) == (20, 10, 0.5)
    assert rack.fleet_rate == 10 / 200
    assert rack.p_value < 1e-7 and set(rack.degraded_nodes) == hit
    assert "cooling or power" in rack.message and "10 of the 20" in rack.message
    assert found.cards == () and found.unexplained == 0


def test_a_rack_whose_degradation_fills_one_pdu_names_the_stronger_evidence() -> None:
    hit = {f"r03-n{i:02}" for i in range(10)}  # exactly the rack's first PDU
    found = attribute(_fleet(hit))
    # The PDU holds all ten of ten: it explains the rack's ten of twenty.
    assert [(c.cause, c.label) for c in found.clusters] == [("pdu", "r03-0")]


def test_every_node_on_a_new_driver_degraded_is_the_driver() -> None:
    rng = random.Random(7)
    moved = set(rng.sample([f"r{r:02}-n{i:02}" for r in range(RACKS) for i in range(20)], 12))
    found = attribute(_fleet(moved, {n: NEW for n in moved}))
    assert [(c.cause, c.label) for c in found.clusters] == [("driver", NEW)]
    assert found.driver_clusters()[NEW].degraded == found.driver_clusters()[NEW].nodes == 12
    assert "the driver version" in found.clusters[0].message


def test_scattered_noise_is_no_cluster() -> None:
    rng = random.Random(11)
    everyone = [f"r{r:02}-n{i:02}" for r in range(RACKS) for i in range(20)]
    noisy = set(rng.sample(everyone, 8))
    found = attribute(_fleet(noisy))
    assert found.clusters == ()
    assert found.degraded == 8 and found.unexplained == 8  # two GPUs each: no single card


def test_a_single_bad_gpu_is_the_card() -> None:
    conditions = _fleet({"r05-n07"}, cards=1)
    found = attribute(conditions)
    assert found.clusters == ()
    assert [(c.node_id, c.gpu, c.reasons) for c in found.cards] == [
        ("r05-n07", 0, ("thermal slowdown",))
    ]


def test_a_pair_is_a_coincidence_however_small_the_rack() -> None:
    hit = {"r01-n00", "r01-n01"}
    assert len(hit) < MIN_NODES
    assert attribute(_fleet(hit)).clusters == ()


def test_a_group_of_the_whole_fleet_tells_nothing_apart() -> None:
    """Every node on the driver, every node degraded: nothing is singled out."""
    everyone = {f"r{r:02}-n{i:02}" for r in range(RACKS) for i in range(20)}
    assert [c.cause for c in attribute(_fleet(everyone)).clusters] == []


def test_conditions_from_reports() -> None:
    doc = report_doc("gpu-1", driver=NEW, healthy=False)
    doc["topology"] = {"rack": "r1"}
    condition = NodeCondition.of(HealthReport.from_dict(doc))
    assert condition.degraded and condition.cards == (0,) and condition.driver == NEW
    assert condition.topology == Topology(rack="r1") and condition.reasons == ("XID 79",)
    doc = report_doc("gpu-2")
    doc["health"] = {"status": "degraded", "reasons": ["clocks low"], "gpus": [], "xids": []}
    condition = NodeCondition.of(HealthReport.from_dict(doc))
    assert condition.degraded and condition.cards == () and condition.reasons == ("clocks low",)
    assert not NodeCondition.of(HealthReport.from_dict(report_doc("gpu-3"))).degraded


def test_an_empty_fleet() -> None:
    assert attribute([]) == Attribution(0, 0, (), (), 0)


@pytest.mark.parametrize(
    ("d", "n", "p", "expected"),
    [(0, 5, 0.3, 1.0), (6, 5, 0.3, 0.0), (1, 5, 0.0, 0.0), (5, 5, 1.0, 1.0), (2, 2, 0.5, 0.25)],
)
def test_binomial_tail_edges(d: int, n: int, p: float, expected: float) -> None:
    assert binomial_tail(d, n, p) == pytest.approx(expected)


@pytest.mark.parametrize(("d", "n"), [(10, 20), (3, 10), (180, 2000)])
def test_binomial_tail_matches_the_exact_sum(d: int, n: int) -> None:
    """Against exact rational arithmetic, also where floats of the terms would underflow."""
    p = Fraction(1, 20)
    exact = sum(comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(d, n + 1))
    assert binomial_tail(d, n, float(p)) == pytest.approx(float(exact), rel=1e-9)
