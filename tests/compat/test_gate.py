"""The gate against the reference facts, one row per fact."""

from __future__ import annotations

import json
from datetime import date
from importlib import resources
from typing import Any

import pytest

from fleet.catalog import default_catalog, load_catalog
from fleet.compat import REASON_CODES, check
from fleet.inventory import NodeInventory
from tests.compat.builders import make_bundle, make_node, node_doc

GATHERED = date(2026, 11, 24)  # the day the facts were gathered
EARLY = date(2025, 12, 1)  # R570 still supported: lets older branches be judged on the rest

# (why, node, bundle, today, expected reason codes, a fact the message must name)
CASES: list[tuple[str, dict[str, Any], dict[str, Any], date, set[str], str]] = [
    (
        "H100 on R580 580.95.05 with modules for the running 6.8 kernel",
        {"models": ["NVIDIA H100 80GB HBM3"], "cc": "9.0"},
        {"version": "580.95.05"},
        GATHERED,
        set(),
        "",
    ),
    (
        "V100 with an R590 bundle",
        {"models": ["Tesla V100-SXM2-16GB"]},
        {"version": "590.48.01", "flavour": "proprietary"},
        GATHERED,
        {"arch-dropped"},
        "Volta support ended with R580",
    ),
    (
        "V100 on R580, its last branch, proprietary",
        {"models": ["V100"]},
        {"version": "580.95.05", "flavour": "proprietary"},
        GATHERED,
        set(),
        "",
    ),
    (
        "Maxwell M60 on R590",
        {"models": ["M60"]},
        {"version": "590.48.01", "flavour": "proprietary"},
        GATHERED,
        {"arch-dropped"},
        "Maxwell support ended with R580",
    ),
    (
        "Pascal P40 on R595",
        {"models": ["P40"]},
        {"version": "595.71.05", "flavour": "proprietary"},
        GATHERED,
        {"arch-dropped"},
        "Pascal support ended with R580",
    ),
    (
        "Kepler K80 on R535",
        {"models": ["K80"]},
        {"version": "535.261.03", "flavour": "proprietary"},
        EARLY,
        {"arch-dropped"},
        "Kepler support ended with R470",
    ),
    (
        "V100 with open modules: open supports only Turing and later",
        {"models": ["V100"]},
        {"version": "580.95.05", "flavour": "open"},
        GATHERED,
        {"module-flavour"},
        "needs the proprietary kernel modules",
    ),
    (
        "B200 with proprietary modules",
        {"models": ["B200"]},
        {"version": "580.95.05", "flavour": "proprietary"},
        GATHERED,
        {"module-flavour"},
        "B200 (Blackwell) needs the open kernel modules",
    ),
    (
        "GB300 (Blackwell Ultra) with proprietary modules",
        {"models": ["GB300"]},
        {"version": "590.48.01", "flavour": "proprietary"},
        GATHERED,
        {"module-flavour"},
        "needs the open kernel modules",
    ),
    (
        "GH200 with proprietary modules: Grace Hopper must use open",
        {"models": ["GH200"]},
        {"version": "580.95.05", "flavour": "proprietary"},
        GATHERED,
        {"module-flavour"},
        "GH200 (Hopper) needs the open kernel modules",
    ),
    (
        "H100 with proprietary modules is fine",
        {"models": ["H100"]},
        {"version": "580.95.05", "flavour": "proprietary"},
        GATHERED,
        set(),
        "",
    ),
    (
        "an unidentified compute capability 9.0 could be a GH200: proprietary refused",
        {"models": ["H800"], "cc": "9.0"},
        {"version": "580.95.05", "flavour": "proprietary"},
        GATHERED,
        {"module-flavour"},
        "needs the open kernel modules",
    ),
    (
        "a CUDA 13.0 requirement on R570",
        {"models": ["H100"], "cuda": "13.0"},
        {"version": "570.133.20"},
        EARLY,
        {"cuda-too-new"},
        "CUDA 13.0, which needs driver >= 580.65.06",
    ),
    (
        "CUDA 12.8 on R535 (CUDA 12.2 U2)",
        {"models": ["A100"], "cuda": "12.8"},
        {"version": "535.261.03"},
        EARLY,
        {"cuda-too-new"},
        "runs CUDA 12.2 U2",
    ),
    (
        "CUDA 12.2 on R535",
        {"models": ["A100"], "cuda": "12.2"},
        {"version": "535.104.05"},
        EARLY,
        set(),
        "",
    ),
    (
        "CUDA 13.0 U2 needs 580.95.05, not 580.82.07",
        {"models": ["H100"], "cuda": "13.0 U2"},
        {"version": "580.82.07"},
        GATHERED,
        {"cuda-too-new"},
        "needs driver >= 580.95.05",
    ),
    (
        "a bundle claiming less CUDA than its driver runs is held to its claim",
        {"models": ["H100"], "cuda": "13.0 U2"},
        {"version": "580.95.05", "cuda": "13.0"},
        GATHERED,
        {"cuda-too-new"},
        "runs CUDA 13.0",
    ),
    (
        "B200 needs at least 570.133.20",
        {"models": ["B200"]},
        {"version": "570.124.06"},
        EARLY,
        {"gpu-too-new"},
        "B200 needs driver >= 570.133.20",
    ),
    (
        "B200 on 570.133.20",
        {"models": ["B200"]},
        {"version": "570.133.20"},
        EARLY,
        set(),
        "",
    ),
    (
        "RTX PRO 6000 Blackwell Server Edition needs at least 575.57.08",
        {"models": ["RTX PRO 6000 Blackwell Server Edition"]},
        {"version": "570.133.20"},
        EARLY,
        {"gpu-too-new"},
        "needs driver >= 575.57.08",
    ),
    (
        "Blackwell on R535: older than its first CUDA (12.8, driver 570.26)",
        {"models": ["GB200"]},
        {"version": "535.261.03"},
        EARLY,
        {"gpu-too-new"},
        "arrived with CUDA 12.8, which needs driver >= 570.26",
    ),
    (
        "R535 after its June 2026 end of life",
        {"models": ["A100"]},
        {"version": "535.261.03"},
        date(2026, 7, 1),
        {"branch-eol"},
        "R535 is past its end of life (2026-06)",
    ),
    (
        "R535 on the last day of its EOL month",
        {"models": ["A100"]},
        {"version": "535.261.03"},
        date(2026, 6, 30),
        set(),
        "",
    ),
    (
        "R570 after Feb 2026",
        {"models": ["A100"]},
        {"version": "570.133.20"},
        GATHERED,
        {"branch-eol"},
        "(2026-02)",
    ),
    (
        "R550 is listed as ended without a date",
        {"models": ["A100"]},
        {"version": "550.163.01"},
        date(2024, 6, 1),
        {"branch-eol"},
        "listed as ended",
    ),
    (
        "R580 until June 2028 (the newer edition, not Aug 2028)",
        {"models": ["H100"]},
        {"version": "580.95.05"},
        date(2028, 7, 1),
        {"branch-eol"},
        "(2028-06)",
    ),
    (
        "no module for the running kernel",
        {"models": ["H100"], "kernel": "6.8.0-47-generic"},
        {"version": "580.95.05"},
        GATHERED,
        {"no-kernel-module"},
        "no module for the running kernel 6.8.0-47-generic",
    ),
    (
        "DKMS builds for any kernel",
        {"models": ["H100"], "kernel": "6.8.0-47-generic"},
        {"version": "580.95.05", "kernels": [], "dkms": True},
        GATHERED,
        set(),
        "",
    ),
    (
        "NVSwitch node, bundle without Fabric Manager, older FM installed",
        {"models": ["H100"], "nvswitch": True, "fabric_manager": "580.82.07"},
        {"version": "580.95.05"},
        GATHERED,
        {"fabric-manager"},
        "Fabric Manager must equal the driver 580.95.05",
    ),
    (
        "NVSwitch node, bundle with Fabric Manager at the driver's version",
        {"models": ["H100"], "nvswitch": True, "fabric_manager": "580.82.07"},
        {"version": "580.95.05", "fabric_manager": "580.95.05"},
        GATHERED,
        set(),
        "",
    ),
    (
        "no NVSwitch, no Fabric Manager needed",
        {"models": ["H100"], "nvswitch": False},
        {"version": "580.95.05"},
        GATHERED,
        set(),
        "",
    ),
    (
        "an architecture the bundle does not list",
        {"models": ["L40S"]},
        {"version": "580.95.05", "archs": ["Hopper"]},
        GATHERED,
        {"arch-not-in-bundle"},
        "L40S (Ada): the bundle supports only Hopper",
    ),
    (
        "a GPU the catalog does not know",
        {"models": ["Quadro 9000"]},
        {"version": "580.95.05"},
        GATHERED,
        {"gpu-unknown"},
        "not a GPU model the catalog knows",
    ),
    (
        "an inventory that contradicts itself",
        {"models": ["V100"], "cc": "9.0"},
        {"version": "580.95.05", "flavour": "proprietary"},
        GATHERED,
        {"gpu-unknown"},
        "the inventory contradicts itself",
    ),
    (
        "every reason, not the first",
        {"models": ["V100", "B200"], "kernel": "5.15.0-1-generic", "cuda": "13.2"},
        {"version": "590.48.01", "flavour": "proprietary"},
        GATHERED,
        {"arch-dropped", "module-flavour", "no-kernel-module", "cuda-too-new"},
        "Volta support ended with R580",
    ),
]


@pytest.mark.parametrize(
    ("node", "bundle", "today", "codes", "fact"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_fact(
    node: dict[str, Any], bundle: dict[str, Any], today: date, codes: set[str], fact: str
) -> None:
    kw = dict(node)
    models = kw.pop("models")
    verdict = check(make_node(*models, **kw), make_bundle(**bundle), default_catalog(), today)
    assert verdict.codes == codes, verdict.reasons
    assert verdict.allowed == (not codes)
    assert fact in " | ".join(r.message for r in verdict.reasons)


def test_identical_gpus_give_one_reason_each() -> None:
    verdict = check(
        make_node(*["V100"] * 8),
        make_bundle("590.48.01", flavour="proprietary"),
        default_catalog(),
        GATHERED,
    )
    assert [r.code for r in verdict.reasons] == ["arch-dropped"]


def test_every_reason_code_is_reachable() -> None:
    """The table above exercises each code the gate can give."""
    assert {c for case in CASES for c in case[4]} == set(REASON_CODES) - {"branch-unknown"}


def test_unknown_branch_is_refused() -> None:
    # R555 is a real CUDA 12.5 driver branch the catalog has no lifecycle facts for.
    verdict = check(make_node("H100"), make_bundle("555.42.06"), default_catalog(), EARLY)
    assert "branch-unknown" in verdict.codes


def test_a_pci_id_resolves_and_must_agree_with_the_model_name() -> None:
    """The facts give no PCI ids yet; a catalog update that adds one is used."""
    doc = json.loads(resources.files("fleet").joinpath("data/catalog.json").read_bytes())
    volta = next(a for a in doc["architectures"] if a["name"] == "Volta")
    volta["models"][0]["pci_device_ids"] = ["0x1db1"]
    catalog = load_catalog(json.dumps(doc).encode())
    r590 = make_bundle("590.48.01", flavour="proprietary")
    by_id = NodeInventory.from_dict({**node_doc(), "gpus": [{"pci_device_id": "0x1DB1"}]})
    assert check(by_id, r590, catalog, GATHERED).codes == {"arch-dropped"}
    both = NodeInventory.from_dict(
        {**node_doc(), "gpus": [{"pci_device_id": "0x1db1", "model": "H100"}]}
    )
    verdict = check(both, r590, catalog, GATHERED)
    assert verdict.codes == {"gpu-unknown"}
    assert "is a V100, but the model name says H100" in verdict.reasons[0].message
