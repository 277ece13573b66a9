"""The pure GPU rules: gate problems, degradation findings and the XID catalog."""

from __future__ import annotations

import pytest

from fleet.gpu import (
    CLOCK_EVENT_BITS,
    NO_RECOVERY_ACTION,
    RECOVERY_ACTIONS,
    ClockEvents,
    GpuSample,
    RemappedRows,
    architecture_name,
    cuda_version_text,
    recovery_action_name,
)
from fleet.gpu_rules import (
    DEGRADED,
    FAILED,
    HEALTHY,
    RECOVERY_ADVICE,
    STATUS_OF_RULE,
    Finding,
    classify_xid,
    degradations,
    gate_problems,
    node_verdict,
)
from fleet.xid_catalog import CRITICAL, WARNING

UUID = "GPU-00000000-1111-2222-3333-444455556666"
IDLE = ClockEvents(0x1)
BUSY = ClockEvents(0x0)


def sample(**fields: object) -> GpuSample:
    """A healthy, idle H100 sample with ``fields`` changed."""
    base: dict[str, object] = {
        "index": 0,
        "uuid": UUID,
        "name": "NVIDIA H100 80GB HBM3",
        "temperature_c": 40,
        "sm_clock_mhz": 345,
        "sm_clock_max_mhz": 1980,
        "clock_events": IDLE,
        "ecc_corrected_volatile": 0,
        "ecc_uncorrected_volatile": 0,
        "remapped_rows": RemappedRows(0, 0, pending=False, failure=False),
        "retired_pages_pending": False,
        "pcie_gen": 5,
        "pcie_gen_max": 5,
        "pcie_width": 16,
        "pcie_width_max": 16,
        "pcie_replays": 0,
    }
    base.update(fields)
    return GpuSample(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mask", "reasons"),
    [
        (0x0, ()),
        (0x1, ("gpu_idle",)),
        (0x44, ("sw_power_cap", "hw_thermal_slowdown")),
        (0x1FF, tuple(name for _, name in CLOCK_EVENT_BITS)),
        (0x208, ("hw_slowdown", "unknown_0x200")),
    ],
)
def test_clock_events_decode(mask: int, reasons: tuple[str, ...]) -> None:
    assert ClockEvents(mask).reasons == reasons
    assert all(r in ClockEvents(mask) for r in reasons)


@pytest.mark.parametrize(
    ("value", "text"), [(13000, "13.0"), (12080, "12.8"), (12020, "12.2"), (11040, "11.4")]
)
def test_cuda_version_text(value: int, text: str) -> None:
    assert cuda_version_text(value) == text


def test_architecture_names() -> None:
    assert architecture_name(9) == "hopper"
    assert architecture_name(10) == "blackwell"
    assert architecture_name(99) == "unknown (99)"


@pytest.mark.parametrize(
    ("changes", "problems"),
    [
        ({}, ()),
        # Unknown is never a problem.
        (
            {"clock_events": None, "ecc_uncorrected_volatile": None, "remapped_rows": None},
            (),
        ),
        ({"ecc_uncorrected_aggregate": 5, "ecc_corrected_volatile": 7}, ()),
        ({"clock_events": ClockEvents(0x24)}, ()),  # software power cap and thermal slowdown
        (
            {"remapped_rows": RemappedRows(3, 1, pending=True, failure=True)},
            (
                "row remapping failed (no spare rows left): the GPU needs service",
                "a row remap is pending: reset the GPU to apply it",
            ),
        ),
        (
            {"errors": ("a: GPU is lost", "b: GPU is lost", "c: GPU is lost", "d", "e")},
            (
                "NVML query failed: a: GPU is lost",
                "NVML query failed: b: GPU is lost",
                "NVML query failed: c: GPU is lost",
                "2 more NVML queries failed",
            ),
        ),
    ],
)
def test_gate_problems(changes: dict[str, object], problems: tuple[str, ...]) -> None:
    assert gate_problems(sample(**changes)) == problems


def rules(findings: tuple[Finding, ...]) -> list[tuple[str, str]]:
    return [(f.rule, f.severity) for f in findings]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, []),
        # Idle: low clocks and a retrained-down link generation are normal.
        ({"sm_clock_mhz": 210, "pcie_gen": 1}, []),
        # Unknown reasons: cannot tell idle from stuck, so no verdict.
        ({"clock_events": None, "sm_clock_mhz": 210, "pcie_gen": 1}, []),
        ({"clock_events": BUSY, "sm_clock_mhz": 1755}, []),
        ({"clock_events": BUSY, "sm_clock_mhz": 1200}, [("clocks_below_spec", WARNING)]),
        (
            {"clock_events": ClockEvents(0x4), "sm_clock_mhz": 900},
            [("clocks_below_spec", WARNING)],
        ),
        (
            {"clock_events": ClockEvents(0x20), "sm_clock_mhz": 1900},
            [("thermal_throttling", WARNING)],
        ),
        (
            {"clock_events": ClockEvents(0x20), "sm_clock_mhz": 900},
            [("thermal_throttling", WARNING), ("clocks_below_spec", WARNING)],
        ),
        (
            {"clock_events": ClockEvents(0x40), "sm_clock_mhz": 1900},
            [("thermal_throttling", CRITICAL)],
        ),
        ({"clock_events": ClockEvents(0x9)}, [("hw_slowdown", CRITICAL)]),
        (
            {"clock_events": ClockEvents(0x80), "sm_clock_mhz": 1500},
            [("hw_power_brake_slowdown", CRITICAL)],
        ),
        ({"pcie_width": 8}, [("pcie_trained_down", WARNING)]),
        ({"pcie_width": 8, "pcie_width_max": None}, []),
        (
            {"clock_events": BUSY, "sm_clock_mhz": 1980, "pcie_gen": 3},
            [("pcie_trained_down", WARNING)],
        ),
        ({"ecc_uncorrected_volatile": 1}, [("ecc_uncorrected", CRITICAL)]),
        (
            {"remapped_rows": RemappedRows(0, 1, pending=True, failure=False)},
            [("remap_pending", WARNING)],
        ),
        (
            {"remapped_rows": RemappedRows(0, 8, pending=False, failure=True)},
            [("remap_failure", CRITICAL)],
        ),
        ({"retired_pages_pending": True}, [("page_retirement_pending", WARNING)]),
        ({"errors": ("x: Unknown Error",)}, [("nvml_query_failed", CRITICAL)]),
    ],
)
def test_degradations(changes: dict[str, object], expected: list[tuple[str, str]]) -> None:
    assert rules(degradations(sample(**changes))) == expected


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ({"ecc_corrected_volatile": 3}, {"ecc_corrected_volatile": 3}, []),
        (
            {"ecc_corrected_volatile": 3},
            {"ecc_corrected_volatile": 10},
            [("ecc_corrected_rising", WARNING)],
        ),
        # The volatile counter restarts at zero when the driver reloads: not a trend.
        ({"ecc_corrected_volatile": 30}, {"ecc_corrected_volatile": 2}, []),
        ({"ecc_corrected_volatile": None}, {"ecc_corrected_volatile": 2}, []),
        ({"pcie_replays": 10}, {"pcie_replays": 12}, [("pcie_replays_rising", WARNING)]),
        # A sample of another GPU is no baseline.
        ({"uuid": "GPU-other", "ecc_corrected_volatile": 0}, {"ecc_corrected_volatile": 9}, []),
    ],
)
def test_trends(
    before: dict[str, object], after: dict[str, object], expected: list[tuple[str, str]]
) -> None:
    assert rules(degradations(sample(**after), previous=sample(**before))) == expected


def test_rising_corrected_ecc_says_how_much() -> None:
    (finding,) = degradations(
        sample(ecc_corrected_volatile=12), previous=sample(ecc_corrected_volatile=5)
    )
    assert finding.message == "7 more corrected ECC error(s) since the last sample"


@pytest.mark.parametrize(
    ("action", "rule", "severity", "status", "todo"),
    [
        ("none", None, None, HEALTHY, None),
        ("gpu_reset", "recovery_gpu_reset", CRITICAL, FAILED, "`nvidia-smi -r -i 3`"),
        ("drain_and_reset", "recovery_drain_and_reset", CRITICAL, FAILED, "`nvidia-smi -r -i 3`"),
        ("node_reboot", "recovery_node_reboot", CRITICAL, FAILED, "reboot it"),
        ("bus_reset", "recovery_bus_reset", CRITICAL, FAILED, "PCIe bus"),
        ("system_reboot", "recovery_system_reboot", CRITICAL, FAILED, "reboot it"),
        ("recover_imex_domain", "recovery_recover_imex_domain", CRITICAL, FAILED, "IMEX"),
        ("drain_p2p", "recovery_drain_p2p", WARNING, DEGRADED, "UVM persistence off"),
        # A newer driver's action: a warning to look up, as an unknown XID is.
        ("unknown_42", "recovery_unknown", WARNING, DEGRADED, "NVML documentation"),
    ],
)
def test_the_drivers_recovery_action_decides(
    action: str, rule: str | None, severity: str | None, status: str, todo: str | None
) -> None:
    findings = degradations(sample(index=3, recovery_action=action))
    assert rules(findings) == ([] if rule is None else [(rule, severity)])
    assert node_verdict((3, f) for f in findings).status == status
    if todo is not None:
        (finding,) = findings
        assert todo in finding.message


def test_every_recovery_action_has_advice_and_a_status() -> None:
    named = set(RECOVERY_ACTIONS.values()) - {NO_RECOVERY_ACTION}
    assert set(RECOVERY_ADVICE) == named
    assert all(f"recovery_{action}" in STATUS_OF_RULE for action in named)
    assert recovery_action_name(9) == "unknown_9"


def test_a_recovery_action_not_offered_is_no_finding() -> None:
    """A driver that predates the field says nothing about the GPU."""
    assert degradations(sample(recovery_action=None)) == ()


@pytest.mark.parametrize(
    ("xid", "category", "severity"),
    [
        (13, "application", WARNING),
        (31, "application", WARNING),
        (48, "memory", CRITICAL),
        (63, "memory", WARNING),
        (64, "memory", CRITICAL),
        (74, "nvlink", CRITICAL),
        (79, "bus", CRITICAL),
        (94, "memory", WARNING),
        (95, "memory", CRITICAL),
        (119, "driver", CRITICAL),
        (4242, "other", WARNING),
    ],
)
def test_xid_catalog(xid: int, category: str, severity: str) -> None:
    xid_class = classify_xid(xid)
    assert (xid_class.xid, xid_class.category, xid_class.severity) == (xid, category, severity)
    assert xid_class.action
