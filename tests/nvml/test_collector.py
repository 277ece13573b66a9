"""The collector (inventory and health samples) against the fake libnvidia-ml.so.1."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from fleet.gpu import RECOVERY_ACTIONS
from fleet.gpu_rules import recovery_rule
from tests.nvml.conftest import H100Host, NvmlRun

Inventory = Callable[..., dict[str, Any]]


@pytest.fixture
def inventory(run_nvml: NvmlRun) -> Inventory:
    def run(config: Mapping[str, object], *, driver: str = "current") -> dict[str, Any]:
        done = run_nvml(config, "--inventory", driver=driver)
        assert "Traceback" not in done.stderr, done.stderr
        doc: dict[str, Any] = json.loads(done.stdout)
        assert done.returncode == (1 if "error" in doc else 0), done.stderr
        return doc

    return run


def test_inventory_of_a_b200(inventory: Inventory, h100: H100Host) -> None:
    config = h100(
        gpus=2,
        cuda_driver_version=12080,
        **{
            "gpu.1.name": "NVIDIA B200",
            "gpu.1.serial": "1655024012345",
            "gpu.1.pci.bus_id": "00000000:9A:00.0",
            "gpu.1.pci.device_id": "0x290110DE",
            "gpu.1.architecture": 10,
            "gpu.1.compute_capability": "10.0",
            "gpu.1.vbios": "97.00.3A.00.11",
            "gpu.1.memory.total": 191528000000,
            "gpu.1.mig.current": 1,
            "gpu.1.mig.pending": 0,
        },
    )
    doc = inventory(config)
    assert (doc["driver_version"], doc["cuda_driver_version"]) == ("580.95.05", "12.8")
    assert doc["gpus"][1]["inventory"] == {
        "index": 1,
        "uuid": "GPU-00000001-1111-2222-3333-444455556666",
        "serial": "1655024012345",
        "name": "NVIDIA B200",
        "pci_bus_id": "00000000:9A:00.0",
        "pci_device_id": 0x290110DE,
        "architecture": "blackwell",
        "compute_capability": "10.0",
        "vbios": "97.00.3A.00.11",
        "memory_total_bytes": 191528000000,
        "mig_enabled": True,
        "mig_pending": False,
        "errors": [],
    }
    assert doc["gpus"][0]["inventory"]["architecture"] == "hopper"


def test_a_healthy_gpu_reports_every_measurement(inventory: Inventory, h100: H100Host) -> None:
    doc = inventory(h100(gpus=1))
    gpu = doc["gpus"][0]
    assert [k for k, v in gpu["inventory"].items() if v is None] == []
    assert [k for k, v in gpu["sample"].items() if v is None] == []
    assert gpu["sample"]["recovery_action"] == "none"
    assert gpu["findings"] == []


def test_sample_values_come_from_the_driver(inventory: Inventory, h100: H100Host) -> None:
    config = h100(
        gpus=1,
        **{
            "gpu.0.temperature": 83,
            "gpu.0.power.usage_mw": 689000,
            "gpu.0.power.limit_mw": 700000,
            "gpu.0.clock.sm": 1410,
            "gpu.0.clock.sm_max": 1980,
            "gpu.0.clock.mem": 2619,
            "gpu.0.clock.mem_max": 2619,
            "gpu.0.clock_events": 0x24,
            "gpu.0.ecc.corrected.volatile": 11,
            "gpu.0.ecc.uncorrected.volatile": 0,
            "gpu.0.ecc.corrected.aggregate": 250,
            "gpu.0.ecc.uncorrected.aggregate": 2,
            "gpu.0.remap.correctable": 1,
            "gpu.0.remap.uncorrectable": 2,
            "gpu.0.retired.sbe": 3,
            "gpu.0.retired.dbe": 1,
            "gpu.0.retired.pending": 1,
            "gpu.0.pcie.gen": 4,
            "gpu.0.pcie.width": 8,
            "gpu.0.pcie.replays": 17,
            "gpu.0.util.gpu": 97,
            "gpu.0.util.memory": 61,
            "gpu.0.processes": "4242:68719476736,4343:1073741824",
        },
    )
    sample = inventory(config)["gpus"][0]["sample"]
    assert sample["temperature_c"] == 83
    assert (sample["power_mw"], sample["power_limit_mw"]) == (689000, 700000)
    assert (sample["sm_clock_mhz"], sample["sm_clock_max_mhz"]) == (1410, 1980)
    assert sample["clock_events"] == {
        "mask": 0x24,
        "reasons": ["sw_power_cap", "sw_thermal_slowdown"],
    }
    assert [
        sample[f"ecc_{kind}_{counter}"]
        for kind in ("corrected", "uncorrected")
        for counter in ("volatile", "aggregate")
    ] == [11, 250, 0, 2]
    assert sample["remapped_rows"] == {
        "correctable": 1,
        "uncorrectable": 2,
        "pending": False,
        "failure": False,
    }
    assert (
        sample["retired_pages_sbe"],
        sample["retired_pages_dbe"],
        sample["retired_pages_pending"],
    ) == (3, 1, True)
    assert [sample[k] for k in ("pcie_gen", "pcie_gen_max", "pcie_width", "pcie_width_max")] == [
        4,
        5,
        8,
        16,
    ]
    assert sample["pcie_replays"] == 17
    assert (sample["gpu_util_pct"], sample["mem_util_pct"]) == (97, 61)
    assert sample["processes"] == [
        {"pid": 4242, "used_memory_bytes": 68719476736},
        {"pid": 4343, "used_memory_bytes": 1073741824},
    ]


def test_findings_are_reported_with_the_sample(inventory: Inventory, h100: H100Host) -> None:
    config = h100(gpus=1, **{"gpu.0.clock_events": 0x40, "gpu.0.pcie.width": 8})
    findings = inventory(config)["gpus"][0]["findings"]
    assert [(f["rule"], f["severity"]) for f in findings] == [
        ("thermal_throttling", "critical"),
        ("clocks_below_spec", "warning"),
        ("pcie_trained_down", "warning"),
    ]


def test_the_drivers_recovery_action_is_read(inventory: Inventory, h100: H100Host) -> None:
    """Each nvmlDeviceGpuRecoveryAction_t value, one GPU each, through the field value."""
    values = [*RECOVERY_ACTIONS, 42]  # 42: an action a newer driver may add
    config = h100(gpus=len(values), **{f"gpu.{i}.recovery_action": v for i, v in enumerate(values)})
    gpus = inventory(config)["gpus"]
    assert [g["sample"]["recovery_action"] for g in gpus] == [
        *RECOVERY_ACTIONS.values(),
        "unknown_42",
    ]
    assert [[f["rule"] for f in g["findings"]] for g in gpus] == [
        [],
        *([recovery_rule(name)] for name in list(RECOVERY_ACTIONS.values())[1:]),
        ["recovery_unknown"],
    ]
    assert all(g["sample"]["errors"] == [] for g in gpus)


@pytest.mark.parametrize(
    "config",
    [
        # The GPU does not offer it, or the driver answers the field with another error.
        {"gpu.0.fail.field.230": "NOT_SUPPORTED"},
        {"gpu.0.fail.field.230": "UNKNOWN"},
        # No field values at all on this GPU.
        {"gpu.0.fail.nvmlDeviceGetFieldValues": "NOT_SUPPORTED"},
    ],
    ids=["field-not-supported", "field-error", "call-not-supported"],
)
def test_a_recovery_action_not_offered_is_unknown(
    inventory: Inventory, h100: H100Host, config: dict[str, object]
) -> None:
    gpu = inventory(h100(gpus=1, **{"gpu.0.recovery_action": 1, **config}))["gpus"][0]
    assert gpu["sample"]["recovery_action"] is None
    assert gpu["sample"]["errors"] == []
    assert gpu["findings"] == []


def test_a_failing_field_value_call_is_recorded(inventory: Inventory, h100: H100Host) -> None:
    """Only a field's own error is "not offered": the call failing as a whole is a failure."""
    config = h100(gpus=1, **{"gpu.0.fail.nvmlDeviceGetFieldValues": "GPU_IS_LOST"})
    sample = inventory(config)["gpus"][0]["sample"]
    assert sample["recovery_action"] is None
    assert sample["errors"] == ["nvmlDeviceGetFieldValues: GPU is lost"]


SAMPLE_FUNCTIONS = [
    "nvmlDeviceGetTemperatureV",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetMaxClockInfo",
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetTotalEccErrors",
    "nvmlDeviceGetRemappedRows",
    "nvmlDeviceGetRetiredPages",
    "nvmlDeviceGetRetiredPagesPendingStatus",
    "nvmlDeviceGetCurrPcieLinkGeneration",
    "nvmlDeviceGetMaxPcieLinkGeneration",
    "nvmlDeviceGetCurrPcieLinkWidth",
    "nvmlDeviceGetMaxPcieLinkWidth",
    "nvmlDeviceGetPcieReplayCounter",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetFieldValues",
    "nvmlDeviceGetSerial",
    "nvmlDeviceGetPciInfo_v3",
    "nvmlDeviceGetArchitecture",
    "nvmlDeviceGetCudaComputeCapability",
    "nvmlDeviceGetVbiosVersion",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetMigMode",
]


def test_unsupported_queries_are_unknown(inventory: Inventory, h100: H100Host) -> None:
    config = h100(gpus=1, **{f"fail.{name}": "NOT_SUPPORTED" for name in SAMPLE_FUNCTIONS})
    config["fail.nvmlSystemGetCudaDriverVersion_v2"] = "NOT_SUPPORTED"
    doc = inventory(config)
    assert doc["cuda_driver_version"] is None
    gpu = doc["gpus"][0]
    known = {"index", "uuid", "name", "errors"}
    assert {k for k, v in gpu["inventory"].items() if v is not None} == known
    assert {k for k, v in gpu["sample"].items() if v is not None} == known
    assert gpu["inventory"]["errors"] == gpu["sample"]["errors"] == []
    assert gpu["findings"] == []


def test_old_driver_falls_back_to_older_symbols(inventory: Inventory, h100: H100Host) -> None:
    config = h100(
        gpus=1,
        **{"gpu.0.temperature": 71, "gpu.0.clock_events": 0x8, "gpu.0.recovery_action": 2},
    )
    sample = inventory(config, driver="old")["gpus"][0]["sample"]
    assert sample["temperature_c"] == 71
    assert sample["clock_events"]["reasons"] == ["hw_slowdown"]
    assert sample["recovery_action"] is None  # the old driver predates the field
    assert sample["errors"] == []


def test_failing_queries_are_recorded_not_raised(inventory: Inventory, h100: H100Host) -> None:
    config = h100(
        gpus=3,
        **{
            "gpu.1.fail.nvmlDeviceGetPowerUsage": "UNKNOWN",
            "gpu.2.fail.nvmlDeviceGetHandleByIndex_v2": "GPU_IS_LOST",
        },
    )
    gpus = inventory(config)["gpus"]
    assert gpus[0]["sample"]["errors"] == []
    assert gpus[1]["sample"]["power_mw"] is None
    assert gpus[1]["sample"]["errors"] == ["nvmlDeviceGetPowerUsage: Unknown Error"]
    assert [f["rule"] for f in gpus[1]["findings"]] == ["nvml_query_failed"]
    lost = gpus[2]
    assert lost["inventory"]["uuid"] is None
    assert lost["sample"]["errors"][0].startswith("NVML: GPU is lost (opening GPU 2): ")


def test_inventory_without_a_driver_is_one_error(inventory: Inventory, h100: H100Host) -> None:
    doc = inventory(h100(init_error="DRIVER_NOT_LOADED"))
    assert doc["error"].startswith("NVML: Driver Not Loaded (nvmlInit): ")


def test_agent_gpus_command_through_the_real_binding(run_nvml: NvmlRun, h100: H100Host) -> None:
    """``gpuward agent gpus`` reads the same collector, through nvidia-ml-py."""
    config = h100(gpus=2, **{"gpu.1.clock_events": "0x40"})  # HW thermal slowdown
    done = run_nvml(config, "agent", "gpus", "--json", module="gpuward")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [g["inventory"]["index"] for g in doc["gpus"]] == [0, 1]
    assert doc["gpus"][0]["findings"] == []
    assert doc["gpus"][1]["findings"]
    table = run_nvml(config, "agent", "gpus", module="gpuward")
    assert table.returncode == 0 and "GPU-00000001" in table.stdout
