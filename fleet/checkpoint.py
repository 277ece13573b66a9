"""Checkpoint advice: how often a job of N GPUs should checkpoint, from the
interruptions a pool has actually seen.

At tens of thousands of GPUs failures are routine (Llama 3's pre-training saw
466 interruptions in 54 days on 16,384 GPUs), so a training job's checkpoint
interval should follow the fleet's observed failure rate, not a guess. Two
pure steps:

* ``exposure`` counts interruptions and GPU-hours in nodes' report histories.
  An interruption is an unplanned failure a node reported: each GPU named by
  an XID of a node-fault class (``fleet.gpu_rules.xid_status`` says failed:
  fallen off the bus, double-bit ECC, NVLink, GSP ...; an application's own
  XID 13/31/43 is not) counts once per burst, and a report whose health
  status turns failed without such an XID (uncorrected ECC, a GPU NVML lost)
  counts once for the node. A rolled-back update is planned maintenance
  working as designed (its report's failures are the driver's, and the rollout
  halts on them), not an interruption, and neither is a degraded status.
  GPU-hours are each node's GPUs times the span between its first and last
  retained report.
* ``advise`` turns the counts into the job's mean time between failures,
  assuming GPUs fail independently (a job stops when any of its GPUs fails,
  so MTBF_job = GPU-hours per interruption / N), and the checkpoint interval
  for a checkpoint that costs C seconds: Young's first-order sqrt(2 C M) and
  Daly's higher-order one, which is the one recommended.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fleet.gpu_rules import FAILED, xid_status
from fleet.report import HealthReport
from fleet.wire import Document, Field, Integer, Number, Text, Wire, optional
from fleet.xid_catalog import BURST_WINDOW_S

SECONDS_PER_HOUR = 3600.0
ROLLED_BACK = "rolled-back"  # fleet.report.UPDATE_OUTCOMES
MAX_JOB_GPUS = 10_000_000


@dataclass(frozen=True)
class Interruption:
    """One unplanned failure on a node: ``gpu`` is None when the node failed as a whole."""

    node_id: str
    at: float
    gpu: int | None


def interruptions(history: Sequence[tuple[float, HealthReport]]) -> tuple[Interruption, ...]:
    """The interruptions in one node's reports ``(received_at, report)``, oldest first.

    A fault makes the driver raise XIDs in bursts (each channel or engine it
    touches, often several codes, across report boundaries), so node-fault XIDs
    of one GPU each within ``BURST_WINDOW_S`` of the last are one interruption,
    as ``fleet.xid_catalog.group_bursts`` groups repeats of one code."""
    found: list[Interruption] = []
    last_fault: dict[int | None, float] = {}  # GPU -> its latest node-fault XID
    was_failed = False
    for at, report in history:
        health = report.health
        if health is None:
            was_failed = False
            continue
        failed = health.status == FAILED
        faults = sorted((x for x in health.xids if _node_fault(x.xid)), key=lambda x: x.at)
        started: set[int | None] = set()
        for event in faults:
            previous = last_fault.get(event.gpu_index)
            if previous is None or event.at - previous > BURST_WINDOW_S:
                started.add(event.gpu_index)
            last_fault[event.gpu_index] = event.at
        if report.update != ROLLED_BACK:
            found.extend(
                Interruption(report.node_id, at, g)
                for g in sorted(started, key=lambda g: -1 if g is None else g)
            )
            if failed and not was_failed and not faults:
                found.append(Interruption(report.node_id, at, None))
        was_failed = failed
    return tuple(found)


def _node_fault(xid: int) -> bool:
    return xid_status(xid) == FAILED


@dataclass(frozen=True)
class Exposure:
    """What a set of nodes was observed to suffer, and for how long."""

    interruptions: int
    gpu_hours: float
    nodes: int


def exposure(histories: Iterable[Sequence[tuple[float, HealthReport]]]) -> Exposure:
    """Interruptions and GPU-hours over nodes' report histories, each oldest first."""
    count = 0
    gpu_hours = 0.0
    nodes = 0
    for history in histories:
        if not history:
            continue
        nodes += 1
        count += len(interruptions(history))
        gpus = max(len(report.gpus) for _, report in history)
        gpu_hours += gpus * (history[-1][0] - history[0][0]) / SECONDS_PER_HOUR
    return Exposure(count, gpu_hours, nodes)


def combined(parts: Iterable[Exposure]) -> Exposure:
    """The exposure of disjoint sets of nodes (pools) taken together."""
    found = list(parts)
    return Exposure(
        sum(e.interruptions for e in found),
        math.fsum(e.gpu_hours for e in found),
        sum(e.nodes for e in found),
    )


def young_interval(checkpoint_cost_s: float, mtbf_s: float) -> float:
    """Young's first-order optimum: sqrt(2 C M)."""
    return math.sqrt(2 * checkpoint_cost_s * mtbf_s)


def daly_interval(checkpoint_cost_s: float, mtbf_s: float) -> float:
    """Daly's higher-order optimum; M itself once C reaches 2 M (checkpointing then
    costs as much as the failures it guards against)."""
    c, m = checkpoint_cost_s, mtbf_s
    if c >= 2 * m:
        return m
    ratio = c / (2 * m)
    return math.sqrt(2 * c * m) * (1 + math.sqrt(ratio) / 3 + ratio / 9) - c


@dataclass(frozen=True)
class CheckpointAdvice(Wire):
    """How often a job of ``gpus`` GPUs should checkpoint, from observed interruptions.

    The intervals and MTBFs are null when no interruption was observed: the
    failure rate is then unknown (only bounded by the GPU-hours watched), and
    ``note`` says so."""

    pool: str | None  # None: the whole fleet
    gpus: int
    checkpoint_cost_s: float
    interruptions: int
    gpu_hours: float
    gpu_hours_per_interruption: float | None
    job_mtbf_s: float | None
    young_interval_s: float | None
    daly_interval_s: float | None
    note: str

    WIRE = Document(
        optional("pool", Text(max_len=128), "the pool observed; null: the whole fleet"),
        Field("gpus", Integer(minimum=1, maximum=MAX_JOB_GPUS), description="GPUs in the job"),
        Field("checkpoint_cost_s", Number(), description="seconds one checkpoint takes"),
        Field("interruptions", Integer(), description="unplanned failures observed"),
        Field("gpu_hours", Number(), description="GPU-hours observed"),
        optional("gpu_hours_per_interruption", Number(), "one GPU's mean time between failures"),
        optional("job_mtbf_s", Number(), "the job's mean time between failures, seconds"),
        optional("young_interval_s", Number(), "Young's interval sqrt(2 C M), seconds"),
        optional(
            "daly_interval_s",
            Number(),
            "Daly's higher-order interval, seconds: the recommended one",
        ),
        Field("note", Text(max_len=512), description="what the numbers mean, or why missing"),
        where="checkpoint advice",
    )


def advise(
    interruptions: int,
    gpu_hours: float,
    gpus: int,
    checkpoint_cost_s: float,
    pool: str | None = None,
) -> CheckpointAdvice:
    """The advice for a job of ``gpus`` GPUs checkpointing in ``checkpoint_cost_s``,
    from ``interruptions`` observed in ``gpu_hours``."""
    if gpus < 1:
        raise ValueError("a job needs at least one GPU")
    if checkpoint_cost_s <= 0 or gpu_hours < 0 or interruptions < 0:
        raise ValueError("the checkpoint cost must be positive, the counts not negative")
    if interruptions == 0:
        return CheckpointAdvice(
            pool,
            gpus,
            checkpoint_cost_s,
            0,
            gpu_hours,
            None,
            None,
            None,
            None,
            f"no interruption observed in {gpu_hours:.0f} GPU-hours: the failure rate is "
            "unknown; watch the pool longer or give --interruptions and --gpu-hours",
        )
    per_interruption = gpu_hours / interruptions
    mtbf_s = per_interruption * SECONDS_PER_HOUR / gpus
    daly = daly_interval(checkpoint_cost_s, mtbf_s)
    note = "Daly's interval is recommended; Young's is its first-order approximation"
    if checkpoint_cost_s >= 2 * mtbf_s:
        note = (
            "a checkpoint costs at least twice the job's MTBF: checkpointing every MTBF is "
            "the best there is, and the job will barely progress; make checkpoints "
            "cheaper or the job smaller"
        )
    return CheckpointAdvice(
        pool,
        gpus,
        checkpoint_cost_s,
        interruptions,
        gpu_hours,
        per_interruption,
        mtbf_s,
        young_interval(checkpoint_cost_s, mtbf_s),
        daly,
        note,
    )
