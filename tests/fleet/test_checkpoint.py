"""Checkpoint advice: interruptions counted from report histories, and the job
MTBF and Young/Daly intervals checked against the closed forms written here."""

from __future__ import annotations

import math

import pytest

from fleet.checkpoint import (
    CheckpointAdvice,
    Interruption,
    advise,
    combined,
    daly_interval,
    exposure,
    interruptions,
)
from fleet.gpu import XidEvent
from fleet.report import GpuHealth, HealthReport, NodeHealth

DAY_S = 86_400
GPUS_PER_NODE = 8


def report(
    node_id: str,
    status: str = "healthy",
    xids: tuple[tuple[int, int | None], ...] = (),
    update: str = "committed",
    at: float = 0.0,
) -> HealthReport:
    gpus = tuple(
        GpuHealth(g, "NVIDIA H100 80GB HBM3", f"GPU-{node_id}-{g}", "580.95.05", True, ())
        for g in range(GPUS_PER_NODE)
    )
    events = tuple(XidEvent(at, gpu, None, xid) for xid, gpu in xids)
    return HealthReport(
        node_id=node_id,
        sent_at=int(at),
        active_slot="a",
        driver_version="580.95.05",
        bundle=None,
        update=update,
        reason="ok",
        gpus=gpus,
        health=NodeHealth(status, (), (), events),
    )


def test_only_unplanned_node_faults_are_interruptions() -> None:
    history = [
        (0.0, report("n")),
        (60.0, report("n", xids=((13, 0), (43, 1)))),  # the application's own faults
        # A driver failing the health gate is rolled back: the rollout's business.
        (120.0, report("n", status="failed", xids=((79, 1),), update="rolled-back")),
        (150.0, report("n")),
        (180.0, report("n", status="degraded")),
        (240.0, report("n", status="failed", xids=((79, 2), (79, 2), (48, 5)))),
        (300.0, report("n", status="failed")),  # still failed: the same interruption
        (360.0, report("n")),
        (420.0, report("n", status="failed")),  # failed again, no XID: the node
    ]
    assert interruptions(history) == (
        Interruption("n", 240.0, 2),
        Interruption("n", 240.0, 5),
        Interruption("n", 420.0, None),
    )


def test_a_burst_of_xids_across_reports_is_one_interruption() -> None:
    history = [
        (0.0, report("n", status="failed", xids=((79, 1),), at=0.0)),
        # The same fault's tail, other codes included, in the next report.
        (30.0, report("n", status="failed", xids=((79, 1), (45, 1)), at=30.0)),
        (80.0, report("n", status="failed", xids=((48, 1),), at=80.0)),  # chained: 50 s on
        (200.0, report("n", status="failed", xids=((79, 1), (79, 2)), at=200.0)),  # a new one
    ]
    assert interruptions(history) == (
        Interruption("n", 0.0, 1),
        Interruption("n", 200.0, 1),
        Interruption("n", 200.0, 2),
    )


def test_exposure_counts_gpu_hours_between_first_and_last_report() -> None:
    seen = exposure([[(0.0, report("a")), (7200.0, report("a"))], [(0.0, report("b"))], []])
    assert (seen.interruptions, seen.gpu_hours, seen.nodes) == (0, 2 * GPUS_PER_NODE, 2)


def test_pools_combined_are_the_fleet_counted_at_once() -> None:
    pools = [
        [[(0.0, report("a")), (3600.0, report("a", status="failed"))]],
        [[(0.0, report("b")), (7200.0, report("b", xids=((79, 0), (48, 3))))], []],
    ]
    whole = exposure([history for pool in pools for history in pool])
    assert combined(exposure(pool) for pool in pools) == whole
    assert (whole.interruptions, whole.gpu_hours, whole.nodes) == (3, 3 * GPUS_PER_NODE, 2)
    assert combined([]) == exposure([])


def test_llama3_shaped_history_gives_the_closed_form_mtbf_and_intervals() -> None:
    """466 interruptions in 54 days on 16,384 GPUs (2,048 nodes of 8), counted from
    report histories by the function the server uses, among decoys that must not
    count; the advice must match the formulas within 1%."""
    nodes = 16_384 // GPUS_PER_NODE
    span = 54 * DAY_S
    histories: list[list[tuple[float, HealthReport]]] = [
        [(0.0, report(f"n{i}"))] for i in range(nodes)
    ]
    faults = (79, 48, 74, 95, 119, 64)
    for k in range(466):
        node = (k * 97) % nodes
        at = (k + 1) * span / 468
        name = f"n{node}"
        if k % 5 == 0:  # a node failing on a finding (uncorrected ECC), no XID
            histories[node].append((at, report(name, status="failed", at=at)))
        else:
            fault = ((faults[k % len(faults)], k % GPUS_PER_NODE),)
            histories[node].append((at, report(name, status="failed", xids=fault, at=at)))
        histories[node].append((at + 60, report(name, xids=((13, 0),), at=at + 60)))
        histories[node].append((at + 120, report(name, update="rolled-back", at=at + 120)))
    for i in range(nodes):
        histories[i].append((float(span), report(f"n{i}", at=span)))

    seen = exposure(histories)
    cost = 300.0  # five minutes to write a checkpoint
    advice = advise(seen.interruptions, seen.gpu_hours, 16_384, cost)

    gpu_hours = 16_384 * 54 * 24
    mtbf = gpu_hours / 466 / 16_384 * 3600  # seconds: 54 days / 466, about 2.78 h
    young = math.sqrt(2 * cost * mtbf)
    daly = (
        math.sqrt(2 * cost * mtbf) * (1 + math.sqrt(cost / (2 * mtbf)) / 3 + cost / (2 * mtbf) / 9)
        - cost
    )
    assert seen.interruptions == 466
    assert advice.job_mtbf_s == pytest.approx(mtbf, rel=0.01)
    assert advice.young_interval_s == pytest.approx(young, rel=0.01)
    assert advice.daly_interval_s == pytest.approx(daly, rel=0.01)
    assert advice.job_mtbf_s == pytest.approx(54 * DAY_S / 466, rel=0.01)
    assert CheckpointAdvice.from_dict(advice.to_dict()) == advice


def test_no_interruption_says_so_instead_of_dividing_by_zero() -> None:
    advice = advise(0, 5000.0, 64, 30.0, pool="prod")
    assert (advice.job_mtbf_s, advice.young_interval_s, advice.daly_interval_s) == (
        None,
        None,
        None,
    )
    assert advice.note.startswith("no interruption observed in 5000 GPU-hours")
    assert CheckpointAdvice.from_dict(advice.to_dict()) == advice


def test_daly_is_the_mtbf_once_a_checkpoint_costs_twice_as_much() -> None:
    assert daly_interval(200.0, 100.0) == 100.0
    assert daly_interval(199.0, 100.0) < 100.0
    advice = advise(10, 10.0, 1, 7200.0)  # MTBF 3600 s, C = 2 M
    assert advice.daly_interval_s == advice.job_mtbf_s == 3600.0
    assert "at least twice the job's MTBF" in advice.note


@pytest.mark.parametrize(
    ("interruptions", "gpu_hours", "gpus", "cost"),
    [(-1, 1.0, 1, 1.0), (1, -1.0, 1, 1.0), (1, 1.0, 0, 1.0), (1, 1.0, 1, 0.0)],
)
def test_impossible_inputs_are_refused(
    interruptions: int, gpu_hours: float, gpus: int, cost: float
) -> None:
    with pytest.raises(ValueError):
        advise(interruptions, gpu_hours, gpus, cost)
