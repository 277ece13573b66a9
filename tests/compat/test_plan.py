"""The fleet plan: branches per node, stranded nodes and their deadline, highest CUDA."""

from __future__ import annotations

import dataclasses
from datetime import date
from typing import Any

from fleet.catalog import default_catalog
from fleet.inventory import NodeInventory
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


# After the May 2026 bulletin, before R535's end of life (June 2026).
MAY_2026 = date(2026, 5, 25)


def _running(driver: str, *models: str, **kw: Any) -> NodeInventory:
    return dataclasses.replace(make_node(*models or ("H100",), **kw), driver_version=driver)


def test_the_smallest_fixed_release_of_the_nodes_branch_it_can_take() -> None:
    node = _running("535.216.03")  # Debian's, with 24 advisories open
    other_kernel = make_bundle("535.309.01", kernels=["6.1.0-99-amd64"])
    bundles = [make_bundle("535.288.01"), other_kernel, make_bundle("580.159.03")]
    [planned] = plan([node], bundles, default_catalog(), MAY_2026).nodes
    assert planned.advisories is not None and len(planned.advisories.open) == 24
    fix = planned.advisory_fix
    assert fix is not None
    # 535.288.01 leaves May 2026's open; the only 535.309.01 has no module for its kernel.
    assert (fix.needed, fix.bundle) == ("535.309.01", None)
    assert fix.nearest is not None and fix.nearest.driver_version == "580.159.03"
    assert planned.advisory_text() == (
        "24 open (high): needs 535.309.01, no published R535 bundle from it fits; "
        "nearest R580 580.159.03"
    )

    later = [*bundles, make_bundle("535.309.01"), make_bundle("535.310.05")]
    [planned] = plan([node], later, default_catalog(), MAY_2026).nodes
    assert planned.advisory_text() == "24 open (high): 535.309.01"  # the smallest that fits
    assert planned.to_dict()["advisory_fix"] == {
        "branch": "R535", "open": 24, "worst": "high", "needed": "535.309.01",
        "bundle": "535.309.01", "nearest_branch": None, "nearest": None,
    }  # fmt: skip


def test_a_branch_without_a_listed_fix_gets_the_nearest_branch_with_one() -> None:
    node = _running("550.163.01", "A100")  # R550 ended; later bulletins do not list it
    bundles = [make_bundle(v) for v in ("535.309.01", "570.211.01", "580.159.03")]
    [planned] = plan([node], bundles, default_catalog(), MAY_2026).nodes
    fix = planned.advisory_fix
    assert fix is not None and fix.needed is None and fix.bundle is None
    # R535 is nearer than R580; R570 has ended, and May 2026 did not list it either.
    assert (
        planned.advisory_text() == "21 open (high): no fix listed in R550; nearest R535 535.309.01"
    )
    # After R535's end of life the gate refuses it: R580 is the nearest that fits.
    [later] = plan([node], bundles, default_catalog(), TODAY).nodes
    assert later.advisory_fix is not None and later.advisory_fix.nearest is not None
    assert later.advisory_fix.nearest.driver_version == "580.159.03"
    [nothing] = plan([node], bundles[:2], default_catalog(), TODAY).nodes
    assert nothing.advisory_text() == (
        "21 open (high): no fix listed in R550; no other branch fits"
    )


def test_no_driver_no_proposal_and_nothing_open_none() -> None:
    nodes = [make_node("H100", node_id="unknown"), _running("595.71.05", node_id="fixed")]
    unknown, fixed = plan(nodes, BUNDLES, default_catalog(), TODAY).nodes
    assert (unknown.advisories, unknown.advisory_fix, unknown.advisory_text()) == (None, None, None)
    assert fixed.advisories is not None and fixed.advisories.open == ()
    assert (fixed.advisory_fix, fixed.advisory_text()) == (None, "none open")
