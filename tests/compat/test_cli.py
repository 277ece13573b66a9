"""``gpuward compat`` and the catalog-aware ``bundle build``, run as a person would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.compat.builders import bundle_doc, gpuward, node_doc, one_line_error

TODAY = ["--today", "2026-11-24"]


def write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    path = tmp_path / "payload"
    path.mkdir()
    (path / "nvidia.ko").write_bytes(b"module\n")
    return path


def test_check_allows_h100_on_r580_with_a_built_bundle(tmp_path: Path, payload: Path) -> None:
    bundle = tmp_path / "r580.bundle"
    built = gpuward(
        "bundle", "build", payload, "--driver-version", "580.95.05", "--branch", "R580",
        "--kernel", "6.8.0-45-generic", "--arch", "Hopper", "--arch", "Ampere",
        "--cuda", "13.0", "--fabric-manager", "580.95.05", "-o", bundle, "--json",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    manifest = json.loads(built.stdout)["manifest"]
    assert {k: manifest[k] for k in ("module_flavour", "architectures", "kernels", "dkms")} == {
        "module_flavour": "open",
        "architectures": ["Hopper", "Ampere"],
        "kernels": ["6.8.0-45-generic"],
        "dkms": False,
    }
    assert (manifest["cuda_version"], manifest["fabric_manager"]) == ("13.0", "580.95.05")
    inventory = write(tmp_path / "inv.json", node_doc("NVIDIA H100 80GB HBM3", nvswitch=True))
    result = gpuward("compat", "check", "--inventory", inventory, "--bundle", bundle, *TODAY)
    assert result.returncode == 0, result.stderr
    assert "node-1: driver 580.95.05 (R580) allowed" in result.stdout


def test_check_refuses_with_exit_3_and_every_reason(tmp_path: Path) -> None:
    inventory = write(tmp_path / "inv.json", node_doc("V100", "B200", cuda="13.2"))
    manifest = write(tmp_path / "m.json", bundle_doc("590.48.01", flavour="proprietary"))
    result = gpuward(
        "compat", "check", "--inventory", inventory, "--bundle", manifest, *TODAY, "--json"
    )
    assert result.returncode == 3, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["allowed"] is False
    assert [r["code"] for r in verdict["reasons"]] == [
        "arch-dropped",
        "module-flavour",
        "cuda-too-new",
    ]
    text = gpuward("compat", "check", "--inventory", inventory, "--bundle", manifest, *TODAY)
    assert text.returncode == 3
    assert "Volta support ended with R580" in text.stdout


def test_today_decides_end_of_life(tmp_path: Path) -> None:
    inventory = write(tmp_path / "inv.json", node_doc("A100"))
    manifest = write(tmp_path / "m.json", bundle_doc("535.261.03"))
    args = ("compat", "check", "--inventory", inventory, "--bundle", manifest)
    assert gpuward(*args, "--today", "2026-06-30").returncode == 0
    late = gpuward(*args, "--today", "2026-07-01")
    assert late.returncode == 3 and "branch-eol" in late.stdout
    assert "YYYY-MM-DD" in gpuward(*args, "--today", "30/06/2026").stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "inventory {path} not found"),
        ("{not json", "{path}: inventory is not JSON"),
        (
            json.dumps({**node_doc(), "gpus": [{"model": "H100", "compute_capability": "nine"}]}),
            "{path}.gpus[0]: 'compute_capability' has an invalid value",
        ),
        (json.dumps({**node_doc(), "nvswitch": "yes"}), "{path}: 'nvswitch' must be true or false"),
        (json.dumps({**node_doc(), "gpus": [{}]}), "{path}.gpus[0]: give at least one of model"),
    ],
)
def test_bad_inventory_is_one_line(tmp_path: Path, content: str | None, message: str) -> None:
    inventory = tmp_path / "inv.json"
    if content is not None:
        inventory.write_text(content)
    manifest = write(tmp_path / "m.json", bundle_doc("580.95.05"))
    result = gpuward("compat", "check", "--inventory", inventory, "--bundle", manifest)
    assert message.format(path=inventory) in one_line_error(result)


def test_bad_bundle_is_one_line(tmp_path: Path) -> None:
    inventory = write(tmp_path / "inv.json", node_doc())
    missing = gpuward("compat", "check", "--inventory", inventory, "--bundle", tmp_path / "no")
    assert "not found" in one_line_error(missing)
    manifest = write(tmp_path / "m.json", {**bundle_doc("580.95.05"), "module_flavour": "closed"})
    bad = gpuward("compat", "check", "--inventory", inventory, "--bundle", manifest)
    assert "'module_flavour' must be one of" in one_line_error(bad)


def test_plan_table_and_json(tmp_path: Path) -> None:
    fleet = write(
        tmp_path / "fleet.json",
        [
            node_doc("H100", node_id="h100-1"),
            {**node_doc("Tesla V100-SXM2-32GB", node_id="v100-1"), "driver_version": "580.82.07"},
        ],
    )
    bundles = [
        write(tmp_path / "a.json", bundle_doc("580.95.05", flavour="proprietary")),
        write(tmp_path / "b.json", bundle_doc("590.48.01")),
    ]
    args = ("compat", "plan", "--fleet", fleet, "--bundle", bundles[0], "--bundle", bundles[1])
    table = gpuward(*args, *TODAY)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "NODE", "GPUS", "R580", "R590", "MAX", "CUDA", "STRANDED", "ON", "ADVISORIES",
    ]  # fmt: skip
    v100 = next(line for line in lines if line.startswith("v100-1"))
    assert "arch-dropped" in v100 and "12.9 U1" in v100 and "R580 until 2028-06" in v100
    # Its running driver predates fixes up to 580.159.03; neither bundle closes them.
    assert "needs 580.159.03, no published R580 bundle from it fits" in v100
    doc = json.loads(gpuward(*args, *TODAY, "--json").stdout)
    assert [n["node_id"] for n in doc["nodes"]] == ["h100-1", "v100-1"]
    assert doc["nodes"][0]["max_cuda"] == "13.1 U1"
    assert doc["nodes"][0]["advisories"] is None  # no running driver given
    assert doc["nodes"][1]["advisory_fix"]["needed"] == "580.159.03"


def test_plan_errors_are_one_line(tmp_path: Path) -> None:
    fleet = write(tmp_path / "fleet.json", [node_doc(), node_doc()])
    bundle = write(tmp_path / "a.json", bundle_doc("580.95.05"))
    assert "nothing to plan against" in one_line_error(gpuward("compat", "plan", "--fleet", fleet))
    duplicate = gpuward("compat", "plan", "--fleet", fleet, "--bundle", bundle)
    assert "node_id 'node-1' appears twice" in one_line_error(duplicate)
    not_a_list = write(tmp_path / "obj.json", node_doc())
    wrong = gpuward("compat", "plan", "--fleet", not_a_list, "--bundle", bundle)
    assert "expected a JSON list" in one_line_error(wrong)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--branch", "R590", "--module-flavour", "proprietary", "--arch", "Volta"],
         "Volta support ended with R580"),
        (["--branch", "R580", "--module-flavour", "proprietary", "--arch", "Blackwell"],
         "Blackwell needs the open kernel modules"),
        (["--branch", "R580", "--arch", "Volta"], "Volta needs the proprietary kernel modules"),
        (["--branch", "R580", "--arch", "Hopper", "--cuda", "13.1"],
         "runs CUDA 13.0 U2, not 13.1"),
        (["--branch", "R580", "--arch", "Fermi"], "unknown architecture 'Fermi'"),
        (["--branch", "R580", "--fabric-manager", "580.82.07"], "must equal the driver version"),
    ],
)  # fmt: skip
def test_bundle_build_checks_the_catalog(
    tmp_path: Path, payload: Path, flags: list[str], message: str
) -> None:
    version = "590.48.01" if "R590" in flags else "580.95.05"
    out = tmp_path / "x.bundle"
    result = gpuward(
        "bundle", "build", payload, "--driver-version", version, *flags,
        "--kernel", "6.8.0-45-generic", "-o", out,
    )  # fmt: skip
    assert message in one_line_error(result)
    assert not out.exists()


def test_bundle_build_defaults_come_from_the_catalog(tmp_path: Path, payload: Path) -> None:
    out = tmp_path / "x.bundle"
    base = ("bundle", "build", payload, "--driver-version", "580.95.05", "--branch", "R580")
    needs = gpuward(*base, "-o", out)
    assert "--kernel RELEASE" in one_line_error(needs)
    result = gpuward(*base, "--dkms", "--module-flavour", "proprietary", "-o", out, "--json")
    manifest = json.loads(result.stdout)["manifest"]
    assert manifest["architectures"] == [
        "Maxwell", "Pascal", "Volta", "Turing", "Ampere", "Ada", "Hopper",
    ]  # fmt: skip
    assert (manifest["cuda_version"], manifest["dkms"], manifest["kernels"]) == (
        "13.0 U2",
        True,
        [],
    )
    assert manifest["schema"] == 2 and manifest["fabric_manager"] is None
