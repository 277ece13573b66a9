"""The fleet plan: branches per node, stranded nodes and their deadline, highest CUDA."""

from __future__ import annotations

from datetime import date
from typing import Any

from fleet.catalog import default_catalog
from fleet.plan import plan
from tests.compat.builders import make_bundle, make_node

TODAY = date(2026, 11, 24)
BUNDLES = [
    make_bundle("580.82.07", flavour="proprietary"),
    make_bundle("580.95.05", flavour="proprietary"),
    make_bundle("580.95.05", flavour="open"),
    make_bundle("590.48.01", flavour="open"),
]


def _plan(*nodes: list[str]) -> dict[str, dict[str, Any]]:
    result = plan(
        [make_node(*m, node_id=f"n{i}") for i, m in enumerate(nodes)],
        BUNDLES,
        default_catalog(),
        TODAY,
    )
    assert result.branches == ("R580", "R590")
    return {n.node_id: n.to_dict() for n in result.nodes}


def test_v100_is_stranded_on_r580_until_its_end_of_life() -> None:
    v100 = _plan(["V100"])["n0"]
    r580, r590 = v100["branches"]
    assert r580["driver_version"] == "580.95.05" and r580["allowed"]
    assert not r590["allowed"]
    assert "Volta support ended with R580" in r590["reasons"][0]["message"]
    assert v100["stranded"] == {
        "last_branch": "R580",
        "architectures": ["Volta"],
        "deadline": "2028-06",
        "ended": False,
    }
    # CUDA 13.0 dropped Volta: the R580 driver runs 13.0 U2, a V100 stays on 12.x.
    assert v100["max_cuda"] == "12.9 U1"


def test_h100_takes_every_branch_and_the_newest_cuda() -> None:
    h100 = _plan(["H100", "H100"])["n0"]
    assert [b["driver_version"] for b in h100["branches"]] == ["580.95.05", "590.48.01"]
    assert h100["max_cuda"] == "13.1 U1"
    assert h100["stranded"] is None


def test_a_mixed_node_is_held_by_its_oldest_gpu() -> None:
    mixed = _plan(["H100", "P100", "K80"])["n0"]
    assert mixed["stranded"] == {
        "last_branch": "R470",
        "architectures": ["Kepler"],
        "deadline": "2024-07",
        "ended": True,
    }
    assert not any(b["allowed"] for b in mixed["branches"])
    assert mixed["max_cuda"] is None


def test_a_cuda_need_beyond_every_bundle_still_shows_how_far_it_gets() -> None:
    result = plan([make_node("H100", cuda="13.2")], BUNDLES, default_catalog(), TODAY)
    node = result.nodes[0]
    assert [f.verdict.codes for f in node.fits] == [{"cuda-too-new"}, {"cuda-too-new"}]
    assert str(node.max_cuda) == "13.1 U1"


def test_per_kernel_bundles_of_one_branch_are_all_considered() -> None:
    bundles = [
        make_bundle("580.95.05", kernels=["6.8.0-45-generic"]),
        make_bundle("580.95.05", kernels=["5.15.0-1-generic"]),
    ]
    result = plan([make_node("H100", kernel="5.15.0-1-generic")], bundles, default_catalog(), TODAY)
    assert result.nodes[0].fits[0].verdict.allowed
