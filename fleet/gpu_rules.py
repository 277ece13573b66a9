"""Rules that turn GPU samples and XIDs into verdicts, as pure functions.

Two kinds of verdict:

* ``gate_problems`` decides whether a GPU may carry a freshly installed driver:
  any problem it returns rolls the update back. It is deliberately narrow
  (errors the GPU cannot recover from on its own), so a busy, warm, healthy
  fleet is not rolled back.
* ``degradations`` lists everything an operator should know about, with a
  severity, for reports and the dashboard.
* ``node_verdict`` turns findings and XIDs into the node's status (healthy,
  degraded or failed) with its reasons, through one table (``STATUS_OF_RULE``
  and the XID catalog, ``fleet/data/xid-catalog.json``): what is broken fails
  the node, what slows it degrades it, and an application's own fault (XID
  13, 31, 43) is not the node's.
* ``switch_problems`` is the one judgement after a driver switch, for the root
  applier and the agent's inline mode alike: each reason it returns rolls the
  switch back.

Only evidence counts: a value the GPU cannot report (``None``) is never a
problem, because a fleet of GPUs that lack a counter must still be updatable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fleet.gpu import (
    HARDWARE_CLOCK_EVENTS,
    NO_RECOVERY_ACTION,
    THERMAL_CLOCK_EVENTS,
    GpuSample,
    XidEvent,
)
from fleet.wire import Document, Field, Text, Wire
from fleet.xid_catalog import CRITICAL, SEVERITIES, WARNING, XidClass, default_xid_catalog

# Listing every failed query of a lost GPU would drown the report (and exceed
# its limit on problems); the first few say enough.
MAX_LISTED_ERRORS = 3

# Under full load a GPU legitimately runs below its maximum boost clock (power
# and software caps); far below it while not idle, something holds it down.
CLOCK_BELOW_SPEC_FRACTION = 0.7

# A node's status, worst last.
HEALTHY = "healthy"
DEGRADED = "degraded"
FAILED = "failed"
STATUSES = (HEALTHY, DEGRADED, FAILED)


@dataclass(frozen=True)
class Finding(Wire):
    """What one rule found in a GPU's sample."""

    rule: str
    severity: str  # WARNING or CRITICAL
    message: str

    WIRE = Document(
        Field("rule", Text(max_len=64)),
        Field("severity", Text(choices=SEVERITIES)),
        Field("message", Text(max_len=512)),
        where="finding",
    )


@dataclass(frozen=True)
class RecoveryAdvice:
    """What a recovery action the driver asks for means for the node, and what to do."""

    status: str  # DEGRADED or FAILED
    asks: str  # what the driver asks for, in words
    todo: str  # what the operator does; "{gpu}" is the GPU's index


# The driver's recovery actions (``fleet.gpu.RECOVERY_ACTIONS``) other than
# none, after NVIDIA's "Error Recovery and Response Flags" (GPU memory error
# management guide). A GPU that needs a reset or a reboot is out of service, so
# the node fails; draining peer-to-peer traffic comes first, after which the
# driver names the next step, so the node is only degraded until then.
RECOVERY_ADVICE: dict[str, RecoveryAdvice] = {
    "gpu_reset": RecoveryAdvice(
        FAILED,
        "a GPU reset",
        "stop the GPU's processes, then reset it (`nvidia-smi -r -i {gpu}`)",
    ),
    "drain_and_reset": RecoveryAdvice(
        FAILED,
        "a drain and a GPU reset: it runs at reduced capacity",
        "schedule no new work on it, let running jobs reach a checkpoint, then reset it "
        "(`nvidia-smi -r -i {gpu}`)",
    ),
    "node_reboot": RecoveryAdvice(
        FAILED,
        "a node reboot: the fault may have left the operating system inconsistent",
        "drain the node and reboot it; a GPU reset is not enough",
    ),
    "bus_reset": RecoveryAdvice(
        FAILED,
        "a reset of the GPU's PCIe bus",
        "drain the node, then reset the GPU's PCIe bus or reboot the node",
    ),
    "system_reboot": RecoveryAdvice(
        FAILED, "a system reboot", "drain the node and reboot it; a GPU reset is not enough"
    ),
    "recover_imex_domain": RecoveryAdvice(
        FAILED,
        "the recovery of its IMEX (multi-node NVLink) domain",
        "drain the jobs that span the domain and recover it as NVIDIA's IMEX guide describes",
    ),
    "drain_p2p": RecoveryAdvice(
        DEGRADED,
        "peer-to-peer traffic to be drained",
        "stop the processes that use peer-to-peer or NVLink traffic with it and turn UVM "
        "persistence off; the driver then names the next step",
    ),
}
# A recovery action this table predates (a newer driver): like an unknown XID,
# a warning to look up.
UNKNOWN_RECOVERY_RULE = "recovery_unknown"


def recovery_rule(action: str) -> str:
    """The finding's rule for a recovery action the driver asks for."""
    return f"recovery_{action}" if action in RECOVERY_ADVICE else UNKNOWN_RECOVERY_RULE


def _recovery_finding(sample: GpuSample) -> Finding | None:
    action = sample.recovery_action
    if action is None or action == NO_RECOVERY_ACTION:
        return None
    advice = RECOVERY_ADVICE.get(action)
    if advice is None:
        return Finding(
            UNKNOWN_RECOVERY_RULE,
            WARNING,
            f"the driver asks for recovery action {action!r}, which gpuward does not know: "
            "look it up under nvmlDeviceGpuRecoveryAction_t in NVIDIA's NVML documentation",
        )
    return Finding(
        recovery_rule(action),
        CRITICAL if advice.status == FAILED else WARNING,
        f"the driver asks for {advice.asks}: {advice.todo.format(gpu=sample.index)}",
    )


def _error_summary(errors: tuple[str, ...]) -> list[str]:
    listed = [f"NVML query failed: {error}" for error in errors[:MAX_LISTED_ERRORS]]
    if len(errors) > MAX_LISTED_ERRORS:
        listed.append(f"{len(errors) - MAX_LISTED_ERRORS} more NVML queries failed")
    return listed


def gate_problems(sample: GpuSample) -> tuple[str, ...]:
    """Why this GPU is not healthy enough to commit an update on; empty when it is."""
    problems = _error_summary(sample.errors)
    if sample.ecc_uncorrected_volatile:
        problems.append(
            f"{sample.ecc_uncorrected_volatile} uncorrected ECC error(s) since the driver loaded"
        )
    rows = sample.remapped_rows
    if rows is not None and rows.failure:
        problems.append("row remapping failed (no spare rows left): the GPU needs service")
    if rows is not None and rows.pending:
        problems.append("a row remap is pending: reset the GPU to apply it")
    if sample.clock_events is not None:
        held = [r for r in sample.clock_events.reasons if r in HARDWARE_CLOCK_EVENTS]
        if held:
            problems.append(f"clocks held down by hardware: {', '.join(held)}")
    return tuple(problems)


def _rose(now: int | None, before: int | None) -> int:
    """How much a counter rose between two samples; 0 if unknown or reset (driver reload)."""
    if now is None or before is None or now < before:
        return 0
    return now - before


def degradations(sample: GpuSample, previous: GpuSample | None = None) -> tuple[Finding, ...]:
    """Everything wrong or degrading on this GPU; ``previous`` is its last sample, if any.

    Trends (rising counters) need ``previous``; a sample of another GPU (the
    UUID differs) is ignored rather than compared.
    """
    if previous is not None and previous.uuid != sample.uuid:
        previous = None
    findings = [Finding("nvml_query_failed", CRITICAL, e) for e in _error_summary(sample.errors)]
    reasons = sample.clock_events.reasons if sample.clock_events is not None else None

    thermal = [r for r in reasons or () if r in THERMAL_CLOCK_EVENTS]
    if thermal:
        severity = CRITICAL if "hw_thermal_slowdown" in thermal else WARNING
        temperature = "" if sample.temperature_c is None else f" at {sample.temperature_c} C"
        findings.append(
            Finding(
                "thermal_throttling",
                severity,
                f"thermal throttling{temperature}: " + ", ".join(thermal),
            )
        )
    for reason in ("hw_slowdown", "hw_power_brake_slowdown"):
        if reasons is not None and reason in reasons:
            findings.append(Finding(reason, CRITICAL, f"clocks held down by hardware: {reason}"))

    # Low clocks at rest (GpuIdle) are normal; without knowing the reasons we cannot tell.
    if (
        reasons is not None
        and "gpu_idle" not in reasons
        and sample.sm_clock_mhz is not None
        and sample.sm_clock_max_mhz
        and sample.sm_clock_mhz < CLOCK_BELOW_SPEC_FRACTION * sample.sm_clock_max_mhz
    ):
        why = ", ".join(reasons) or "no reason reported"
        findings.append(
            Finding(
                "clocks_below_spec",
                WARNING,
                f"SM clock {sample.sm_clock_mhz} MHz of {sample.sm_clock_max_mhz} MHz while not "
                f"idle ({why})",
            )
        )

    # Links retrain to a lower generation at rest to save power, so a low
    # generation counts only while the GPU is not idle; a narrower link never
    # recovers by itself.
    if (
        sample.pcie_width is not None
        and sample.pcie_width_max
        and (sample.pcie_width < sample.pcie_width_max)
    ):
        findings.append(
            Finding(
                "pcie_trained_down",
                WARNING,
                f"PCIe link x{sample.pcie_width} of x{sample.pcie_width_max}",
            )
        )
    if (
        reasons is not None
        and "gpu_idle" not in reasons
        and sample.pcie_gen is not None
        and sample.pcie_gen_max
        and sample.pcie_gen < sample.pcie_gen_max
    ):
        findings.append(
            Finding(
                "pcie_trained_down",
                WARNING,
                f"PCIe link gen {sample.pcie_gen} of gen {sample.pcie_gen_max} while not idle",
            )
        )

    if sample.ecc_uncorrected_volatile:
        findings.append(
            Finding(
                "ecc_uncorrected",
                CRITICAL,
                f"{sample.ecc_uncorrected_volatile} uncorrected ECC error(s) since the driver "
                "loaded",
            )
        )
    rows = sample.remapped_rows
    if rows is not None and rows.failure:
        findings.append(
            Finding("remap_failure", CRITICAL, "row remapping failed: the GPU needs service")
        )
    if rows is not None and rows.pending:
        findings.append(Finding("remap_pending", WARNING, "a row remap is pending: reset the GPU"))
    if sample.retired_pages_pending:
        findings.append(
            Finding(
                "page_retirement_pending",
                WARNING,
                "memory pages wait for retirement: reset the GPU or reboot",
            )
        )
    recovery = _recovery_finding(sample)
    if recovery is not None:
        findings.append(recovery)

    if previous is not None:
        corrected = _rose(sample.ecc_corrected_volatile, previous.ecc_corrected_volatile)
        if corrected:
            findings.append(
                Finding(
                    "ecc_corrected_rising",
                    WARNING,
                    f"{corrected} more corrected ECC error(s) since the last sample",
                )
            )
        replays = _rose(sample.pcie_replays, previous.pcie_replays)
        if replays:
            findings.append(
                Finding(
                    "pcie_replays_rising",
                    WARNING,
                    f"{replays} more PCIe replays since the last sample",
                )
            )
    return tuple(findings)


def classify_xid(xid: int) -> XidClass:
    """The catalog's verdict on an XID; an XID it does not know is a warning to look up."""
    known = default_xid_catalog().get(xid)
    if known is not None:
        return known
    return XidClass(
        xid,
        "other",
        WARNING,
        "not in gpuward's XID catalog",
        "look it up in NVIDIA's XID catalog",
        "",
    )


# What each finding means for the node. Broken memory, a GPU NVML cannot read or
# one the driver wants reset or rebooted fails it; anything that only slows it
# (throttling, low clocks, a narrow link, pending repairs, rising error rates)
# degrades it.
STATUS_OF_RULE: dict[str, str] = {
    **{recovery_rule(action): advice.status for action, advice in RECOVERY_ADVICE.items()},
    UNKNOWN_RECOVERY_RULE: DEGRADED,
    "nvml_query_failed": FAILED,
    "ecc_uncorrected": FAILED,
    "remap_failure": FAILED,
    "remap_pending": DEGRADED,
    "page_retirement_pending": DEGRADED,
    "thermal_throttling": DEGRADED,
    "hw_slowdown": DEGRADED,
    "hw_power_brake_slowdown": DEGRADED,
    "clocks_below_spec": DEGRADED,
    "pcie_trained_down": DEGRADED,
    "ecc_corrected_rising": DEGRADED,
    "pcie_replays_rising": DEGRADED,
}


def xid_status(xid: int) -> str:
    """What an XID means for the node: an application's fault leaves it healthy."""
    xid_class = classify_xid(xid)
    if xid_class.category == "application":
        return HEALTHY
    return FAILED if xid_class.severity == CRITICAL else DEGRADED


@dataclass(frozen=True)
class NodeHealthVerdict:
    status: str  # one of STATUSES
    reasons: tuple[str, ...]  # why it is not healthy, worst first


def worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=STATUSES.index, default=HEALTHY)


def node_verdict(
    findings: Iterable[tuple[int, Finding]], xids: Sequence[XidEvent] = ()
) -> NodeHealthVerdict:
    """The node's status from its GPUs' ``(index, finding)`` pairs and recent XIDs."""
    judged: list[tuple[str, str]] = [
        (STATUS_OF_RULE.get(f.rule, DEGRADED), f"GPU {index}: {f.message}") for index, f in findings
    ]
    for event in xids:
        status = xid_status(event.xid)
        if status != HEALTHY:
            xid_class = classify_xid(event.xid)
            gpu = "GPU ?" if event.gpu_index is None else f"GPU {event.gpu_index}"
            judged.append(
                (status, f"{gpu}: XID {event.xid} ({xid_class.description}): {xid_class.action}")
            )
    judged.sort(key=lambda j: -STATUSES.index(j[0]))
    return NodeHealthVerdict(
        worst(s for s, _ in judged), tuple(dict.fromkeys(r for _, r in judged))
    )


@dataclass(frozen=True)
class GpuState:
    """One GPU as the post-switch judgement sees it."""

    index: int
    uuid: str
    # The aggregate counter: it survives the driver reload a switch may cause.
    ecc_uncorrected: int | None
    problems: tuple[str, ...] = ()  # ``gate_problems``: each one fails the switch


@dataclass(frozen=True)
class Snapshot:
    """What NVML (or the simulation) showed at one moment; ``error`` when it could
    not look at all."""

    driver_version: str | None
    gpus: tuple[GpuState, ...]
    xids: tuple[XidEvent, ...] = ()
    error: str | None = None

    def baseline(self) -> dict[str, Any]:
        """The part the applier's journal keeps across a crash: what "before" means."""
        return {
            "driver_version": self.driver_version,
            "error": self.error,
            "gpus": [
                {"index": g.index, "uuid": g.uuid, "ecc_uncorrected": g.ecc_uncorrected}
                for g in self.gpus
            ],
        }

    @classmethod
    def from_baseline(cls, doc: dict[str, Any]) -> Snapshot:
        return cls(
            driver_version=doc["driver_version"],
            gpus=tuple(
                GpuState(int(g["index"]), str(g["uuid"]), g["ecc_uncorrected"]) for g in doc["gpus"]
            ),
            error=doc["error"],
        )


def switch_problems(
    before: Snapshot | None,
    after: Snapshot,
    expected_driver: str,
    *,
    since: float | None = None,
) -> tuple[str, ...]:
    """Every reason to roll a switch to ``expected_driver`` back; empty to commit it.

    ``before`` is what was seen just before the switch: None, or with an error,
    when there is nothing to compare with (a first install, a crash that lost
    it). The switch fails on what ``after`` could not read, another driver, no
    GPU or fewer (more) GPUs than before, a GPU's own problems, uncorrectable
    ECC errors counted since ``before``, and any XID after ``since`` that is a
    fault of the node: an application's own XID (13, 31, 43) is not.
    """
    if after.error is not None:
        return (after.error,)
    reasons = []
    if after.driver_version != expected_driver:
        reasons.append(
            f"driver {after.driver_version or 'none'} is loaded, expected {expected_driver}"
        )
    if not after.gpus:
        reasons.append("no GPU visible")
    earlier = () if before is None or before.error else before.gpus
    if earlier and len(after.gpus) != len(earlier):
        now = {g.uuid for g in after.gpus}
        missing = [g.uuid for g in earlier if g.uuid != "unknown" and g.uuid not in now]
        reasons.append(
            f"{len(after.gpus)} GPUs visible, {len(earlier)} before the switch"
            + (f" (missing: {', '.join(missing)})" if missing else "")
        )
    counted = {g.uuid: g.ecc_uncorrected for g in earlier}
    for gpu in after.gpus:
        reasons.extend(f"GPU {gpu.index} ({gpu.uuid}): {p}" for p in gpu.problems)
        new = _rose(gpu.ecc_uncorrected, counted.get(gpu.uuid))
        if new:
            reasons.append(
                f"GPU {gpu.index} ({gpu.uuid}): {new} new uncorrectable ECC error(s) "
                "since the switch"
            )
    for event in after.xids:
        if (since is None or event.at > since) and xid_status(event.xid) != HEALTHY:
            gpu_index = "?" if event.gpu_index is None else event.gpu_index
            reasons.append(
                f"GPU {gpu_index} ({event.gpu_uuid or 'unknown'}): XID {event.xid} since the "
                f"switch ({classify_xid(event.xid).description})"
            )
    return tuple(reasons)
