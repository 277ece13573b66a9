"""The NVML health probe, through nvidia-ml-py, against the fake libnvidia-ml.so.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pynvml
import pytest

from fleet.report import GpuHealth
from node.gpu_health import ProbeResult, gate
from node.nvml import explain
from tests.nvml.conftest import H100Host, ProbeJson


def as_result(doc: dict[str, Any]) -> ProbeResult:
    """The probe's JSON back as a ProbeResult; the report schema checks every GPU record."""
    return ProbeResult(
        driver_version=doc["driver_version"],
        gpus=tuple(GpuHealth.from_dict(g, f"gpus[{i}]") for i, g in enumerate(doc["gpus"])),
        error=doc["error"],
    )


def test_healthy_8x_h100(probe_json: ProbeJson, h100: H100Host) -> None:
    result = as_result(probe_json(h100()))
    assert result.error is None
    assert result.driver_version == "580.95.05"
    assert [g.index for g in result.gpus] == list(range(8))
    assert {g.name for g in result.gpus} == {"NVIDIA H100 80GB HBM3"}
    assert len({g.uuid for g in result.gpus}) == 8
    assert result.gpus[5].uuid == "GPU-00000005-1111-2222-3333-444455556666"
    assert all(g.healthy and g.driver_version == "580.95.05" for g in result.gpus)
    assert gate(result, "580.95.05") == []


def test_gate_catches_driver_mismatch(probe_json: ProbeJson, h100: H100Host) -> None:
    result = as_result(probe_json(h100(driver="570.172.08")))
    assert gate(result, "580.95.05") == ["driver 570.172.08 is loaded, expected 580.95.05"]


def test_uncorrected_ecc_is_a_problem_on_that_gpu(probe_json: ProbeJson, h100: H100Host) -> None:
    result = as_result(probe_json(h100(**{"gpu.3.ecc.uncorrected.volatile": 2})))
    sick = [g for g in result.gpus if not g.healthy]
    assert [g.index for g in sick] == [3]
    assert sick[0].problems == ("2 uncorrected ECC error(s) since the driver loaded",)
    assert gate(result, "580.95.05") == [
        "GPU 3 (GPU-00000003-1111-2222-3333-444455556666): "
        "2 uncorrected ECC error(s) since the driver loaded"
    ]


def test_aggregate_and_corrected_ecc_do_not_fail_the_gate(
    probe_json: ProbeJson, h100: H100Host
) -> None:
    config = h100(**{"gpu.0.ecc.uncorrected.aggregate": 4, "gpu.0.ecc.corrected.volatile": 100})
    assert gate(as_result(probe_json(config)), "580.95.05") == []


@pytest.mark.parametrize(
    ("remap", "problem"),
    [
        ({"remap.pending": 1}, "a row remap is pending: reset the GPU to apply it"),
        ({"remap.failure": 1}, "row remapping failed (no spare rows left): the GPU needs service"),
    ],
)
def test_remapped_rows(
    probe_json: ProbeJson, h100: H100Host, remap: dict[str, int], problem: str
) -> None:
    config = h100(**{f"gpu.1.{k}": v for k, v in remap.items()}, **{"gpu.2.remap.correctable": 3})
    result = as_result(probe_json(config))
    assert [(g.index, g.problems) for g in result.gpus if not g.healthy] == [(1, (problem,))]


@pytest.mark.parametrize(
    ("mask", "problems"),
    [
        (0x1, ()),  # GpuIdle: low clocks at rest are normal
        (0x0, ()),
        (0x4, ()),  # SwPowerCap
        (0x20, ()),  # SwThermalSlowdown
        (0x8, ("clocks held down by hardware: hw_slowdown",)),
        (0x9, ("clocks held down by hardware: hw_slowdown",)),
        (0x40, ("clocks held down by hardware: hw_thermal_slowdown",)),
        (0x80, ("clocks held down by hardware: hw_power_brake_slowdown",)),
        (
            0xC8,
            (
                "clocks held down by hardware: hw_slowdown, hw_thermal_slowdown, "
                "hw_power_brake_slowdown",
            ),
        ),
    ],
)
def test_clock_event_reasons(
    probe_json: ProbeJson, h100: H100Host, mask: int, problems: tuple[str, ...]
) -> None:
    result = as_result(probe_json(h100(gpus=2, **{"gpu.1.clock_events": hex(mask)})))
    assert result.gpus[0].problems == ()
    assert result.gpus[1].problems == problems


def test_old_driver_clock_reasons_fall_back_to_throttle_reasons(
    probe_json: ProbeJson, h100: H100Host
) -> None:
    # Before R535 only nvmlDeviceGetCurrentClocksThrottleReasons exists (same bits).
    result = as_result(probe_json(h100(gpus=1, **{"gpu.0.clock_events": 0x8}), driver="old"))
    assert result.gpus[0].problems == ("clocks held down by hardware: hw_slowdown",)


def test_not_supported_means_unknown_not_a_problem(probe_json: ProbeJson, h100: H100Host) -> None:
    # The counters say "broken", but the GPU claims not to support the queries:
    # the probe must neither crash nor invent problems from them.
    config = h100(
        gpus=2,
        **{
            "gpu.*.ecc.uncorrected.volatile": 9,
            "gpu.*.remap.failure": 1,
            "gpu.*.clock_events": 0x8,
            "gpu.*.fail.nvmlDeviceGetTotalEccErrors": "NOT_SUPPORTED",
            "gpu.*.fail.nvmlDeviceGetRemappedRows": "NOT_SUPPORTED",
            "fail.nvmlDeviceGetCurrentClocksEventReasons": "NOT_SUPPORTED",
        },
    )
    result = as_result(probe_json(config))
    assert result.error is None
    assert all(g.healthy for g in result.gpus)


def test_function_missing_from_old_driver_means_unknown(
    probe_json: ProbeJson, h100: H100Host
) -> None:
    config = h100(gpus=1, **{"gpu.0.fail.nvmlDeviceGetCurrentClocksThrottleReasons": 3})
    result = as_result(probe_json(config, driver="old"))
    assert result.gpus[0].healthy


def test_other_query_failures_are_problems(probe_json: ProbeJson, h100: H100Host) -> None:
    config = h100(gpus=3, **{"gpu.2.fail.nvmlDeviceGetRemappedRows": "GPU_IS_LOST"})
    result = as_result(probe_json(config))
    assert [g.healthy for g in result.gpus] == [True, True, False]
    assert result.gpus[2].problems == ("NVML query failed: nvmlDeviceGetRemappedRows: GPU is lost",)


def test_gpu_that_cannot_be_opened_is_reported(probe_json: ProbeJson, h100: H100Host) -> None:
    config = h100(gpus=2, **{"gpu.1.fail.nvmlDeviceGetHandleByIndex_v2": "GPU_IS_LOST"})
    result = as_result(probe_json(config))
    assert result.gpus[0].healthy
    lost = result.gpus[1]
    assert (lost.index, lost.uuid, lost.healthy) == (1, "unknown", False)
    assert lost.problems[0].startswith("NVML: GPU is lost (opening GPU 1): ")


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (
            "DRIVER_NOT_LOADED",
            "NVML: Driver Not Loaded (nvmlInit): the NVIDIA kernel module is not loaded",
        ),
        ("LIB_RM_VERSION_MISMATCH", "the user-space driver and the loaded kernel module"),
        ("NO_PERMISSION", "NVML: Insufficient Permissions (nvmlInit): the agent may not open"),
    ],
)
def test_init_failure_is_an_error_not_an_exception(
    probe_json: ProbeJson, h100: H100Host, code: str, message: str
) -> None:
    result = as_result(probe_json(h100(init_error=code)))
    assert result.driver_version is None
    assert result.gpus == ()
    assert result.error is not None and message in result.error
    assert gate(result, "580.95.05") == [result.error]


def test_failure_after_init_is_an_error(probe_json: ProbeJson, h100: H100Host) -> None:
    result = as_result(probe_json(h100(**{"fail.nvmlDeviceGetCount_v2": "UNKNOWN"})))
    assert result.error == (
        "NVML: Unknown Error (reading the driver version and GPU list): "
        "check `nvidia-smi` and the kernel log"
    )


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"gpu.1.fail.nvmlDeviceGetRemappedRows": "GPU_IS_LOST"},
        {"fail.nvmlDeviceGetCount_v2": "UNKNOWN"},
    ],
)
def test_every_init_is_shut_down(
    probe_json: ProbeJson, h100: H100Host, tmp_path: Path, extra: dict[str, str]
) -> None:
    trace = tmp_path / "calls"
    probe_json(h100(gpus=2, trace=trace, **extra))
    calls = trace.read_text().split()
    assert calls[0] == "nvmlInitWithFlags"
    assert calls[-1] == "nvmlShutdown"
    assert calls.count("nvmlInitWithFlags") == calls.count("nvmlShutdown") == 1


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "install the driver's NVML library"),
        (pynvml.NVML_ERROR_GPU_IS_LOST, "look for Xid 79"),
        (pynvml.NVML_ERROR_UNKNOWN, "check `nvidia-smi` and the kernel log"),
    ],
)
def test_explain_says_what_to_do(code: int, hint: str) -> None:
    message = explain(pynvml.NVMLError(code), "nvmlInit")
    assert message.startswith("NVML: ")
    assert hint in message
