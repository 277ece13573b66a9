"""The shipped catalog states the reference facts; a malformed one is rejected by field."""

from __future__ import annotations

import copy
import json
from datetime import date
from importlib import resources
from typing import Any

import pytest

from fleet.branches import require_branch
from fleet.catalog import default_catalog, load_catalog
from fleet.errors import GpuwardError, InvalidDocument
from fleet.versions import CudaVersion, DriverVersion

RAW = resources.files("fleet").joinpath("data/catalog.json").read_bytes()
GOOD: dict[str, Any] = json.loads(RAW)


@pytest.mark.parametrize(
    ("name", "type_", "first_ga", "eol", "listed", "cuda_major"),
    [
        ("R418", "LTSB", "2019-01-30", "2022-03", False, None),
        ("R450", "LTSB", "2020-06-24", "2023-07", False, None),
        ("R460", "PB", "2021-01-07", "2022-01", False, None),
        ("R470", "LTSB", "2021-07-19", "2024-07", False, None),
        ("R535", "LTSB", "2023-06-14", "2026-06", False, 12),
        ("R550", "PB", "2024-02-23", None, True, None),
        ("R560", "PB", "2024-08-22", None, True, None),
        ("R565", "PB", "2024-10-29", None, True, None),
        ("R570", "PB", "2025-01-27", "2026-02", False, None),
        ("R575", "NFB", "2025-06-03", None, True, None),
        ("R580", "LTSB", "2025-08-04", "2028-06", False, 13),
        ("R590", "NFB", "2025-12-22", None, False, None),
        ("R595", "PB", "2026-03-24", "2027-03", False, 13),
        ("R610", "NFB", "2026-08-03", "2026-08", False, 13),
        ("R620", "LTSB", None, "2029-09", False, 13),
    ],
)
def test_branches(
    name: str, type_: str, first_ga: str | None, eol: str | None, listed: bool, cuda_major: int
) -> None:
    branch = require_branch(name)
    assert branch.type == type_
    assert branch.first_ga == (None if first_ga is None else date.fromisoformat(first_ga))
    assert (branch.eol, branch.listed_eol, branch.cuda_major) == (eol, listed, cuda_major)


def test_branch_first_releases_and_secondary_marks() -> None:
    assert require_branch("R570").first_release == "570.86.15"
    assert require_branch("R580").first_release == "580.65.06"
    assert require_branch("R610").first_release == "610.57.04"
    # R590's row rests on endoflife.date only; GA dates all come from there.
    assert {"type", "first_ga", "eol"} <= set(require_branch("R590").secondary)
    assert "eol" in require_branch("R470").secondary
    assert "first_ga" not in require_branch("R620").secondary  # it has none


@pytest.mark.parametrize(
    ("name", "today", "ended"),
    [
        ("R535", date(2026, 6, 30), False),
        ("R535", date(2026, 7, 1), True),
        ("R570", date(2026, 11, 24), True),
        ("R580", date(2026, 11, 24), False),
        ("R580", date(2028, 6, 30), False),
        ("R580", date(2028, 7, 1), True),
        ("R590", date(2030, 1, 1), False),  # no EOL published
        ("R575", date(2025, 7, 1), True),  # listed as ended, no date
        ("R610", date(2026, 11, 24), True),
        ("R620", date(2029, 9, 30), False),
    ],
)
def test_end_of_life(name: str, today: date, ended: bool) -> None:
    assert require_branch(name).ended(today) is ended


def test_unknown_branch_names_the_known_ones() -> None:
    with pytest.raises(GpuwardError, match="known branches are R418, R450"):
        require_branch("R508")


@pytest.mark.parametrize(
    ("cuda", "driver"),
    [
        ("11.0", "450.51.05"),
        ("11.1", "455.23"),
        ("11.4 U3", "470.82.01"),
        ("11.8", "520.61.05"),
        ("12.0", "525.60.13"),
        ("12.2 U2", "535.104.05"),
        ("12.6 U3", "560.35.05"),
        ("12.8", "570.26"),
        ("12.8 U1", "570.124.06"),
        ("12.9 U1", "575.57.08"),
        ("13.0", "580.65.06"),
        ("13.0 U1", "580.82.07"),
        ("13.0 U2", "580.95.05"),
        ("13.1 U1", "590.48.01"),
        ("13.2 U2", "595.71.05"),
        ("13.3", "610.43.02"),
    ],
)
def test_cuda_minimum_drivers(cuda: str, driver: str) -> None:
    catalog = default_catalog()
    assert catalog.min_driver_for_cuda(CudaVersion.parse(cuda)) == DriverVersion.parse(driver)
    highest = catalog.cuda_for_driver(DriverVersion.parse(driver))
    assert highest is not None and highest >= CudaVersion.parse(cuda)


def test_cuda_table_details() -> None:
    catalog = default_catalog()
    assert catalog.min_driver_for_cuda(CudaVersion(12, 7)) is None  # there was no 12.7
    secondary = {str(r.version) for r in catalog.cuda_releases if r.secondary}
    assert secondary == {"13.3", "13.3 U1"}
    assert catalog.cuda_for_driver(DriverVersion.parse("418.40.04")) is None


@pytest.mark.parametrize("name", ["R535", "R580", "R595", "R610", "R620"])
def test_branch_cuda_major_agrees_with_the_toolkit_table(name: str) -> None:
    catalog = default_catalog()
    branch = require_branch(name)
    newest = max(r.version for r in catalog.cuda_releases if r.min_driver.parts[0] <= branch.number)
    assert newest.major == branch.cuda_major


@pytest.mark.parametrize(
    ("driver", "major"),
    [("450.80.02", 11), ("450.80.01", None), ("525.60.13", 12), ("580.65.06", 13)],
)
def test_minor_version_compatibility_floors(driver: str, major: int | None) -> None:
    assert default_catalog().minor_compat_major(DriverVersion.parse(driver)) == major


@pytest.mark.parametrize(
    ("arch", "ccs", "last_branch", "flavours", "models"),
    [
        ("Kepler", {"3.0", "3.2", "3.5", "3.7"}, "R470", {"proprietary"}, {"K10", "K80"}),
        ("Maxwell", {"5.0", "5.2", "5.3"}, "R580", {"proprietary"}, {"M40", "M60"}),
        ("Pascal", {"6.0", "6.1"}, "R580", {"proprietary"}, {"P100", "P4", "P40"}),
        ("Volta", {"7.0"}, "R580", {"proprietary"}, {"V100"}),
        ("Turing", {"7.5"}, None, {"open", "proprietary"}, {"T4"}),
        ("Ampere", {"8.0", "8.6"}, None, {"open", "proprietary"}, {"A100", "A30", "A10", "A2"}),
        ("Ada", {"8.9"}, None, {"open", "proprietary"}, {"L4", "L40", "L40S"}),
        ("Hopper", {"9.0"}, None, {"open", "proprietary"}, {"H100", "H200", "GH200"}),
        ("Blackwell", {"10.0", "10.3", "11.0", "12.0", "12.1"}, None, {"open"}, {"B200", "GB10"}),
    ],
)
def test_architectures(
    arch: str, ccs: set[str], last_branch: str | None, flavours: set[str], models: set[str]
) -> None:
    found = default_catalog().architecture(arch)
    assert found is not None
    assert {c.cc for c in found.compute_capabilities} == ccs
    assert found.last_branch == last_branch
    assert found.module_flavours == flavours
    assert models <= {m.name for m in found.models}


def test_model_facts() -> None:
    catalog = default_catalog()
    models = {m.name: m for a in catalog.architectures for m in a.models}
    assert models["GH200"].module_flavours == frozenset({"open"})
    assert str(models["B200"].min_driver) == "570.133.20"
    assert str(models["RTX PRO 6000 Blackwell Server Edition"].min_driver) == "575.57.08"
    assert models["P40"].compute_capabilities == ("6.1",)
    # The facts give no PCI device ids; the catalog invents none.
    assert all(not m.pci_device_ids for m in models.values())
    ampere = catalog.architecture("Ampere")
    assert ampere is not None
    cc86 = ampere.capability("8.6")
    assert cc86 is not None and cc86.secondary == ("first_cuda",)
    assert catalog.open_modules_from == "R515" and catalog.open_default_from == "R560"


def _set(path: str, value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is _DELETE:
            del target[int(last) if last.isdigit() else last]
        else:
            target[int(last) if last.isdigit() else last] = value

    return change


_DELETE = object()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("schema", 2), "unsupported catalog schema"),
        (_set("catalog_version", 0), "'catalog_version' must be between"),
        (_set("catalog_version", _DELETE), "missing field 'catalog_version'"),
        (_set("gathered", "2026-02-30"), "'gathered' is not a real date"),
        (_set("extra", 1), "unknown field"),
        (_set("branches.10.eol", "2028-13"), r"catalog\.branches\[10\]: 'eol' has an invalid"),
        (_set("branches.10.type", "LTS"), r"branches\[10\]: 'type' must be one of"),
        (_set("branches.10.first_release", "590.48.01"), r"'first_release' 590\.48\.01 is not"),
        (_set("branches.5.eol", "2025-02"), r"branches\[5\]: 'listed_eol' is for branches"),
        (_set("branches.0.secondary", ["colour"]), r"branches\[0\]: 'secondary' must name"),
        (_set("branches.1.name", "R418"), "branches: 'R418' appears twice"),
        (_set("branches.4.cuda_major", "12"), r"branches\[4\]: 'cuda_major' must be an integer"),
        (
            _set("cuda_toolkits.18.releases.2.driver", "580.82.06"),
            r"cuda_toolkits\[18\]\.releases\[2\]: 'driver' 580\.82\.06 .* ascending",
        ),
        (_set("cuda_toolkits.18.releases.1.release", "U2"), r"releases\[1\]: 'release' must be U1"),
        (_set("cuda_toolkits.0.releases", []), r"cuda_toolkits\[0\]: 'releases' must list"),
        (_set("cuda_toolkits.3.version", "11"), r"cuda_toolkits\[3\]: 'version' has an invalid"),
        (_set("minor_version_compatibility.2.floor", "≥580"), r"compatibility\[2\]: 'floor'"),
        (_set("kernel_modules.open_from_branch", "515"), "kernel_modules: 'open_from_branch'"),
        (_set("fabric_manager", "any"), "'fabric_manager' must be one of"),
        (
            _set("architectures.3.last_branch", "R999"),
            r"architectures\[3\]: 'last_branch' R999 is not among",
        ),
        (
            _set("architectures.3.module_flavours", ["closed"]),
            r"architectures\[3\]: 'module_flavours' must list",
        ),
        (
            _set("architectures.7.models.2.module_flavours", []),
            r"architectures\[7\]\.models\[2\]: 'module_flavours' must list",
        ),
        (
            _set("architectures.3.models.0.compute_capabilities", ["9.0"]),
            r"architectures\[3\]\.models\[0\]: 'compute_capabilities' must list some of 7\.0",
        ),
        (
            _set("architectures.3.models.0.pci_device_ids", ["0x1DB1"]),
            r"models\[0\]: 'pci_device_ids' must be like",
        ),
        (
            _set("architectures.8.models.0.min_driver", "570"),
            r"models\[0\]: 'min_driver' has an invalid value",
        ),
        (
            lambda d: d["architectures"][4]["compute_capabilities"].append(
                d["architectures"][3]["compute_capabilities"][0]
            ),
            "compute capabilities: '7.0' appears twice",
        ),
        (_set("architectures.4.name", "Volta"), "architectures: 'Volta' appears twice"),
        (_set("architectures", {}), "'architectures' must be a list"),
    ],
)
def test_malformed_catalog_is_rejected_naming_the_field(change: Any, message: str) -> None:
    doc = copy.deepcopy(GOOD)
    change(doc)
    with pytest.raises(InvalidDocument, match=message):
        load_catalog(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b"[" * 100_000, "not JSON"),
        (b" " * (1024 * 1024 + 1), "larger than"),
    ],
)
def test_garbage_is_rejected(data: bytes, message: str) -> None:
    with pytest.raises(InvalidDocument, match=message):
        load_catalog(data)


def test_a_rejected_catalog_leaves_the_current_one_alone() -> None:
    """The agent's pattern: replace its catalog only when the new one loads."""
    shipped = default_catalog()
    current = load_catalog(RAW)
    before = copy.deepcopy(current)
    bad = copy.deepcopy(GOOD)
    bad["catalog_version"] = GOOD["catalog_version"] + 1
    bad["architectures"][3]["last_branch"] = "R999"
    with pytest.raises(InvalidDocument, match="R999"):
        current = load_catalog(json.dumps(bad).encode())
    assert current == before
    assert current.catalog_version == GOOD["catalog_version"]
    assert default_catalog() is shipped and shipped == before


def test_the_shipped_file_round_trips() -> None:
    assert load_catalog(RAW) == default_catalog()
    assert default_catalog().catalog_version == GOOD["catalog_version"] == 2
