"""The node's status from findings and XIDs, the post-switch check, and the report's
health section, with pure inputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from fleet.errors import InvalidDocument
from fleet.gpu import ClockEvents, GpuSample, RemappedRows, XidEvent
from fleet.gpu_rules import DEGRADED, FAILED, HEALTHY, node_verdict, switch_problems, xid_status
from fleet.report import MAX_XIDS, GpuHealth, HealthReport
from node.gpu_health import ProbeResult, assess, snapshot

DRIVER = "580.95.05"
H100 = "NVIDIA H100 80GB HBM3"


def uuid(index: int) -> str:
    return f"GPU-{index:08x}-1111-2222-3333-444455556666"


def sample(index: int = 0, **fields: object) -> GpuSample:
    base: dict[str, object] = {
        "index": index,
        "uuid": uuid(index),
        "name": H100,
        "sm_clock_mhz": 1755,
        "sm_clock_max_mhz": 1980,
        "clock_events": ClockEvents(0x0),
        "ecc_uncorrected_volatile": 0,
        "pcie_gen": 5,
        "pcie_gen_max": 5,
        "pcie_width": 16,
        "pcie_width_max": 16,
    }
    base.update(fields)
    return GpuSample(**base)  # type: ignore[arg-type]


def seen(*samples: GpuSample, xids: tuple[XidEvent, ...] = (), driver: str = DRIVER) -> ProbeResult:
    gpus = tuple(GpuHealth(s.index, H100, s.uuid or "unknown", driver, True, ()) for s in samples)
    return ProbeResult(driver, gpus, samples=samples, xids=xids)


def xid(number: int, at: float = 100.0, gpu: int = 0) -> XidEvent:
    return XidEvent(at=at, gpu_index=gpu, gpu_uuid=uuid(gpu), xid=number)


@pytest.mark.parametrize(
    ("numbers", "status"),
    [
        *[((n,), FAILED) for n in (48, 64, 74, 79, 95, 119, 120)],
        *[((n,), DEGRADED) for n in (63, 92, 94)],
        *[((n,), HEALTHY) for n in (13, 31, 43)],  # the application's fault, not the node's
        ((13, 63, 79), FAILED),
        ((), HEALTHY),
    ],
)
def test_xids_decide_the_status(numbers: tuple[int, ...], status: str) -> None:
    verdict = node_verdict((), [xid(n) for n in numbers])
    assert verdict.status == status
    assert len(verdict.reasons) == sum(1 for n in numbers if xid_status(n) != HEALTHY)


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({}, HEALTHY),
        ({"ecc_uncorrected_volatile": 1}, FAILED),
        ({"remapped_rows": RemappedRows(0, 2, pending=False, failure=True)}, FAILED),
        ({"remapped_rows": RemappedRows(0, 1, pending=True, failure=False)}, DEGRADED),
        ({"clock_events": ClockEvents(0x8)}, DEGRADED),  # hardware slowdown while busy
        ({"clock_events": ClockEvents(0x40)}, DEGRADED),  # hardware thermal slowdown
        ({"clock_events": ClockEvents(0x80)}, DEGRADED),  # power brake
        ({"pcie_width": 8}, DEGRADED),
        ({"pcie_gen": 3}, DEGRADED),
        ({"sm_clock_mhz": 1100}, DEGRADED),  # well below maximum under load
        ({"errors": ("nvmlDeviceGetRemappedRows: GPU is lost",)}, FAILED),
        ({"recovery_action": "none"}, HEALTHY),
        ({"recovery_action": "gpu_reset"}, FAILED),  # the driver's own verdict
        ({"recovery_action": "drain_p2p"}, DEGRADED),
    ],
)
def test_findings_decide_the_status(fields: dict[str, object], status: str) -> None:
    health = assess(seen(sample(0), sample(1, **fields)))
    assert health.status == status
    assert all(r.startswith("GPU 1: ") for r in health.reasons)
    assert bool(health.reasons) == (status != HEALTHY)


def test_the_worst_reason_comes_first() -> None:
    health = assess(seen(sample(0, pcie_width=8), sample(1, ecc_uncorrected_volatile=3)))
    assert health.status == FAILED
    assert health.reasons[0] == "GPU 1: 3 uncorrected ECC error(s) since the driver loaded"
    assert health.reasons[1] == "GPU 0: PCIe link x8 of x16"


def test_nvml_unavailable_is_failed_with_its_reason() -> None:
    error = "NVML: Driver Not Loaded (nvmlInit): the NVIDIA kernel module is not loaded"
    health = assess(ProbeResult(None, (), error=error, xids=(xid(79),)))
    assert (health.status, health.reasons, health.gpus) == (FAILED, (error,), ())
    assert health.xids == (xid(79),)


def test_a_gpu_that_could_not_be_opened_fails_the_node() -> None:
    lost = GpuHealth(1, "unknown", "unknown", DRIVER, False, ("NVML: GPU is lost (opening GPU 1)",))
    result = ProbeResult(DRIVER, (seen(sample(0)).gpus[0], lost), samples=(sample(0),))
    health = assess(result)
    assert health.status == FAILED
    assert health.reasons == ("GPU 1: NVML: GPU is lost (opening GPU 1)",)


def test_only_xids_after_the_last_report_count() -> None:
    result = seen(sample(0), xids=(xid(79, at=10.0), xid(63, at=20.0)))
    health = assess(result, xids_since=10.0)
    assert health.xids == (xid(63, at=20.0),)
    assert health.status == DEGRADED


def test_trends_compare_with_the_previous_sample_of_the_same_gpu() -> None:
    before = {uuid(0): sample(0, ecc_corrected_volatile=5)}
    health = assess(seen(sample(0, ecc_corrected_volatile=40)), previous=before)
    assert [f.rule for f in health.gpus[0].findings] == ["ecc_corrected_rising"]
    assert health.status == DEGRADED


def switch(
    before: ProbeResult | None, after: ProbeResult, since: float | None = None
) -> tuple[str, ...]:
    """The applier's health gate on two looks: every reason to roll back."""
    old = None if before is None else snapshot(before)
    return tuple(switch_problems(old, snapshot(after), DRIVER, since=since))


def test_post_switch_healthy_and_degraded_commit() -> None:
    before = seen(sample(0), sample(1))
    assert switch(before, seen(sample(0), sample(1))) == ()
    slow = seen(sample(0), sample(1, pcie_width=8))
    assert switch(before, slow) == ()  # degraded commits, and is reported
    health = assess(slow)
    assert (health.status, health.reasons) == (DEGRADED, ("GPU 1: PCIe link x8 of x16",))


def test_post_switch_a_lost_gpu_fails() -> None:
    reasons = switch(seen(sample(0), sample(1)), seen(sample(0)))
    assert reasons == (f"1 GPUs visible, 2 before the switch (missing: {uuid(1)})",)


def test_post_switch_xids_after_the_switch_fail() -> None:
    before = seen(sample(0))
    old_and_app = seen(sample(0), xids=(xid(79, at=5.0), xid(13, at=20.0)))
    assert switch(before, old_and_app, since=10.0) == ()
    fresh = seen(sample(0), xids=(xid(63, at=20.0, gpu=0),))
    # any node-fault XID after the switch fails, even a degrading one
    assert switch(before, fresh, since=10.0) == (
        f"GPU 0 ({uuid(0)}): XID 63 since the switch (row remapping or page retirement recorded)",
    )


def test_post_switch_new_uncorrectable_ecc_since_the_baseline_fails() -> None:
    before = seen(sample(0, ecc_uncorrected_aggregate=2))
    assert switch(before, seen(sample(0, ecc_uncorrected_aggregate=2))) == ()
    assert switch(before, seen(sample(0, ecc_uncorrected_aggregate=5))) == (
        f"GPU 0 ({uuid(0)}): 3 new uncorrectable ECC error(s) since the switch",
    )


def test_post_switch_wrong_driver_and_nvml_errors_fail() -> None:
    wrong = switch(None, seen(sample(0), driver="570.172.08"))
    assert wrong == ("driver 570.172.08 is loaded, expected 580.95.05",)
    gone = switch(None, ProbeResult(None, (), error="NVML: Driver Not Loaded"))
    assert gone == ("NVML: Driver Not Loaded",)


def report(health_doc: object) -> dict[str, object]:
    result = seen(sample(0, clock_events=ClockEvents(0x48)), xids=(xid(79),))
    doc = HealthReport(
        "n1", 1, "a", DRIVER, None, "up-to-date", "ok", result.gpus, health=assess(result)
    ).to_dict()
    if health_doc is not None:
        doc["health"] = health_doc
    return doc


def test_report_health_round_trips() -> None:
    doc = json.loads(json.dumps(report(None)))
    parsed = HealthReport.from_dict(doc)
    assert parsed.to_dict() == doc
    assert parsed.health is not None and parsed.health.status == FAILED
    assert not parsed.healthy  # a failed node is unhealthy for rollouts too
    assert parsed.health.gpus[0].sample.clock_events == ClockEvents(0x48)
    without = {k: v for k, v in doc.items() if k != "health"}
    assert HealthReport.from_dict(without).to_dict() == without  # older agents' reports


def test_report_recovery_action_round_trips_and_older_samples_lack_it() -> None:
    doc = json.loads(json.dumps(report(None)))
    sample = doc["health"]["gpus"][0]["sample"]

    def read() -> str | None:
        health = HealthReport.from_dict(doc).health
        assert health is not None
        return health.gpus[0].sample.recovery_action

    sample["recovery_action"] = "drain_and_reset"
    assert read() == "drain_and_reset"
    assert HealthReport.from_dict(doc).to_dict() == doc
    sample["recovery_action"] = "unknown_42"  # a newer driver's action is still read
    assert read() == "unknown_42"
    del sample["recovery_action"]  # agents from before the field
    assert read() is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h: h.update(status="fine"), "'status' must be one of"),
        (lambda h: h["gpus"][0]["sample"].update(rogue=1), "unknown field(s) rogue"),
        (lambda h: h["gpus"][0]["sample"].update(temperature_c="hot"), "must be an integer"),
        (lambda h: h["gpus"][0]["findings"][0].update(severity="meh"), "'severity' must be"),
        (lambda h: h.update(xids=[h["xids"][0]] * (MAX_XIDS + 1)), "more than 64 items"),
        (lambda h: h["xids"][0].update(at=float("nan")), "'at' must be between"),
        (
            lambda h: h["gpus"][0]["sample"].update(errors=["x" * 600]),
            "errors.* is longer than 512",
        ),
        (
            lambda h: h["gpus"][0]["sample"].update(recovery_action="reset; reboot"),
            "'recovery_action' has an invalid value",
        ),
        (
            lambda h: h["gpus"][0]["sample"].update(recovery_action="a" * 65),
            "'recovery_action' is longer than 64",
        ),
    ],
)
def test_report_health_is_read_strictly(
    change: Callable[[dict[str, Any]], object], message: str
) -> None:
    doc = report(None)
    health = json.loads(json.dumps(doc["health"]))
    change(health)
    with pytest.raises(InvalidDocument, match=message.replace("(", r"\(").replace(")", r"\)")):
        HealthReport.from_dict(report(health))
