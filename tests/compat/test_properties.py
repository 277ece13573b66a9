"""Properties of the gate over generated nodes and bundles."""

from __future__ import annotations

from datetime import date

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.catalog import default_catalog
from fleet.compat import check, supported_architectures
from fleet.versions import DriverVersion
from tests.compat.builders import make_bundle, make_node

CATALOG = default_catalog()
MODELS = [m.name for a in CATALOG.architectures for m in a.models]
# Branches whose releases we can spell: the catalog's, plus the CUDA table's drivers.
BRANCHES = sorted(
    {b.number for b in CATALOG.branches} | {r.min_driver.parts[0] for r in CATALOG.cuda_releases}
)
ARCH_CODES = {"arch-dropped", "gpu-too-new", "module-flavour", "arch-not-in-bundle"}
kernels = st.sampled_from(["6.8.0-45-generic", "6.8.0-47-generic", "5.15.0-1-generic", "7.0.0-1"])
dates = st.dates(min_value=date(2019, 1, 1), max_value=date(2030, 12, 31))


@st.composite
def driver_pair(draw: st.DrawFn) -> tuple[str, str]:
    """Two releases of one branch, older first."""
    branch = draw(st.sampled_from(BRANCHES))
    a, b = sorted(draw(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 99)), min_size=2)))[
        :2
    ]
    return f"{branch}.{a[0]}.{a[1]:02d}", f"{branch}.{b[0]}.{b[1]:02d}"


@settings(max_examples=300, deadline=None)
@given(
    pair=driver_pair(),
    models=st.lists(st.sampled_from(MODELS), min_size=1, max_size=4),
    flavour=st.sampled_from(["open", "proprietary"]),
    today=dates,
)
def test_a_newer_driver_of_the_same_branch_never_loses_an_architecture(
    pair: tuple[str, str], models: list[str], flavour: str, today: date
) -> None:
    older, newer = pair
    node = make_node(*models)
    old = check(node, make_bundle(older, flavour=flavour, cuda="11.0"), CATALOG, today)
    new = check(node, make_bundle(newer, flavour=flavour, cuda="11.0"), CATALOG, today)
    assert new.codes & ARCH_CODES <= old.codes & ARCH_CODES
    # The same, stated on what ``bundle build`` offers by default.
    old_driver, new_driver = DriverVersion.parse(older), DriverVersion.parse(newer)
    assert set(supported_architectures(CATALOG, old_driver.branch, old_driver, flavour)) <= set(
        supported_architectures(CATALOG, new_driver.branch, new_driver, flavour)
    )


@settings(max_examples=300, deadline=None)
@given(
    running=kernels,
    carried=st.lists(kernels, unique=True, max_size=3),
    dkms=st.booleans(),
    models=st.lists(st.sampled_from(MODELS), min_size=1, max_size=3),
    version=st.sampled_from([str(r.min_driver) for r in CATALOG.cuda_releases]),
    flavour=st.sampled_from(["open", "proprietary"]),
    nvswitch=st.booleans(),
    today=dates,
)
def test_never_allows_a_bundle_without_a_module_for_the_running_kernel(
    running: str,
    carried: list[str],
    dkms: bool,
    models: list[str],
    version: str,
    flavour: str,
    nvswitch: bool,
    today: date,
) -> None:
    if not carried and not dkms:
        carried = ["4.19.0-1-amd64"]  # a manifest must state one or the other
    node = make_node(*models, kernel=running, nvswitch=nvswitch, fabric_manager=version)
    bundle = make_bundle(version, flavour=flavour, kernels=carried, dkms=dkms)
    verdict = check(node, bundle, CATALOG, today)
    has_module = running in carried or dkms
    if not has_module:
        assert not verdict.allowed
    assert ("no-kernel-module" in verdict.codes) == (not has_module)


@settings(max_examples=200, deadline=None)
@given(
    models=st.lists(st.sampled_from(MODELS), min_size=1, max_size=3),
    version=st.sampled_from([str(r.min_driver) for r in CATALOG.cuda_releases]),
    flavour=st.sampled_from(["open", "proprietary"]),
    today=dates,
)
def test_allowed_exactly_when_no_reason(
    models: list[str], version: str, flavour: str, today: date
) -> None:
    verdict = check(make_node(*models), make_bundle(version, flavour=flavour), CATALOG, today)
    assert verdict.allowed == (not verdict.reasons)
    assert len(set(verdict.reasons)) == len(verdict.reasons)
