"""What a look at the GPUs says about the node's health, for reports and operators.

A probe (NVML on a real host, a simulation elsewhere) reports what it sees as
``fleet.report.GpuHealth`` records, plus NVML's health samples and the XIDs its
listener received. ``assess`` classifies that as healthy, degraded or failed,
with reasons, for the agent's reports; ``gate`` says whether the node runs the
driver the active slot should have loaded, by the rules of the applier's
health gate (``fleet.gpu_rules.switch_problems``), for ``gpuward agent health``.
The gate that decides commit or roll back is the applier's own
(``applier.health_gate``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from fleet.driver_settings import Drift
from fleet.gpu import GpuSample, XidEvent
from fleet.gpu_rules import (
    DEGRADED,
    FAILED,
    GpuState,
    Snapshot,
    degradations,
    node_verdict,
    switch_problems,
)
from fleet.report import MAX_FINDINGS, MAX_PROBLEMS, MAX_XIDS, GpuHealth, GpuReport, NodeHealth

_MAX_REASON = 512


@dataclass(frozen=True)
class ProbeResult:
    """What a probe saw. ``error`` is set when it could not look at all."""

    driver_version: str | None
    gpus: tuple[GpuHealth, ...]
    error: str | None = None
    samples: tuple[GpuSample, ...] = ()  # NVML's health sample of each GPU it could read
    xids: tuple[XidEvent, ...] = ()  # what the probe's XID listener holds, oldest first


class HealthProbe(Protocol):
    def probe(self) -> ProbeResult:
        """Look at the GPUs now. Must not raise: failures go in ``error``."""
        ...


def snapshot(result: ProbeResult) -> Snapshot:
    """What the post-switch judgement needs of a probe's look."""
    aggregate = {s.index: s.ecc_uncorrected_aggregate for s in result.samples}
    gpus = tuple(GpuState(g.index, g.uuid, aggregate.get(g.index), g.problems) for g in result.gpus)
    return Snapshot(result.driver_version, gpus, result.xids, result.error)


def gate(result: ProbeResult, expected_driver: str) -> list[str]:
    """Every reason the node is not healthy on ``expected_driver``; empty when it is."""
    return list(switch_problems(None, snapshot(result), expected_driver))


def _bounded(reasons: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(r[:_MAX_REASON] for r in reasons[:MAX_PROBLEMS])


def assess(
    result: ProbeResult,
    *,
    xids_since: float | None = None,
    previous: Mapping[str, GpuSample] | None = None,
    drift: tuple[Drift, ...] = (),
) -> NodeHealth:
    """The node's status with reasons, each GPU's sample and findings, and the XIDs
    received after ``xids_since``; ``previous`` (by GPU UUID) turns counters into trends.
    A driver setting that drifted from the active bundle's declaration (``drift``)
    degrades the node: it runs, but not as the operator released it."""
    xids = tuple(x for x in result.xids if xids_since is None or x.at > xids_since)
    drifted = [d.reason for d in drift]
    if result.error is not None:
        # Nothing could be read: what a node looks like whose kernel moved under its driver.
        return NodeHealth(FAILED, _bounded([result.error, *drifted]), (), xids[:MAX_XIDS])
    before = previous or {}
    gpus = tuple(
        GpuReport(
            sample,
            degradations(sample, before.get(sample.uuid) if sample.uuid else None)[:MAX_FINDINGS],
        )
        for sample in result.samples
    )
    verdict = node_verdict(((g.sample.index, f) for g in gpus for f in g.findings), xids)
    # A GPU NVML could not even open has no sample; the probe says why it is unhealthy.
    sampled = {s.index for s in result.samples}
    unread = [
        f"GPU {g.index}: {p}" for g in result.gpus if g.index not in sampled for p in g.problems
    ]
    if not result.gpus:
        unread.append("no GPU visible")
    status = FAILED if unread else verdict.status
    if drifted and status != FAILED:
        status = DEGRADED
    reasons = unread + list(verdict.reasons) + drifted
    return NodeHealth(status, _bounded(reasons), gpus, xids[:MAX_XIDS])
