"""The health gate: does the node run the driver it should, on healthy GPUs?

A probe (NVML on a real host, a simulation elsewhere) reports what it sees as
``fleet.report.GpuHealth`` records, plus NVML's health samples and the XIDs its
listener received; the gate compares that with the driver the active slot
should have loaded. Any reason returned means "roll back".

``assess`` classifies what a probe saw as healthy, degraded or failed, with
reasons, for reports; ``post_switch_check`` is the verdict after a slot switch,
where a GPU lost or a node-fault XID since the switch also fails the node.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from fleet.gpu import GpuSample, XidEvent
from fleet.gpu_rules import (
    FAILED,
    HEALTHY,
    Verdict,
    classify_xid,
    degradations,
    node_verdict,
    xid_status,
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


def gate(result: ProbeResult, expected_driver: str) -> list[str]:
    """Every reason the node is not healthy on ``expected_driver``; empty when it is."""
    if result.error is not None:
        return [result.error]
    reasons = []
    if result.driver_version != expected_driver:
        reasons.append(
            f"driver {result.driver_version or 'none'} is loaded, expected {expected_driver}"
        )
    if not result.gpus:
        reasons.append("no GPU visible")
    for gpu in result.gpus:
        reasons.extend(f"GPU {gpu.index} ({gpu.uuid}): {p}" for p in gpu.problems)
    return reasons


def _bounded(reasons: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(r[:_MAX_REASON] for r in reasons[:MAX_PROBLEMS])


def assess(
    result: ProbeResult,
    *,
    xids_since: float | None = None,
    previous: Mapping[str, GpuSample] | None = None,
) -> NodeHealth:
    """The node's status with reasons, each GPU's sample and findings, and the XIDs
    received after ``xids_since``; ``previous`` (by GPU UUID) turns counters into trends."""
    xids = tuple(x for x in result.xids if xids_since is None or x.at > xids_since)
    if result.error is not None:
        # Nothing could be read: what a node looks like whose kernel moved under its driver.
        return NodeHealth(FAILED, _bounded([result.error]), (), xids[:MAX_XIDS])
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
    return NodeHealth(status, _bounded(unread + list(verdict.reasons)), gpus, xids[:MAX_XIDS])


def post_switch_check(
    before: ProbeResult | None,
    after: ProbeResult,
    expected_driver: str,
    *,
    since: float | None = None,
) -> Verdict:
    """May the node commit ``expected_driver``, which it switched to at ``since``?

    ``before`` is what the probe saw before the switch (None when unknown, as
    after a crash): a GPU seen then and missing now fails the check. So does
    anything ``gate`` objects to, and any XID after the switch that is a fault of
    the node rather than of an application. Otherwise the verdict is the GPUs'
    status (healthy or degraded): a degraded node commits, and is reported.
    """
    reasons = gate(after, expected_driver)
    if before is not None:
        now = {g.uuid for g in after.gpus}
        reasons.extend(
            f"GPU {g.index} ({g.uuid}) was visible before the switch and is gone"
            for g in before.gpus
            if g.uuid != "unknown" and g.uuid not in now
        )
    for event in after.xids:
        if (since is None or event.at > since) and xid_status(event.xid) != HEALTHY:
            gpu = "?" if event.gpu_index is None else event.gpu_index
            reasons.append(
                f"GPU {gpu}: XID {event.xid} ({classify_xid(event.xid).description}) "
                "after the switch"
            )
    if reasons:
        return Verdict(FAILED, tuple(reasons))
    health = assess(after, xids_since=since)
    return Verdict(health.status, health.reasons)
