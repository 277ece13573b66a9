"""The compatibility gate: may this bundle be installed on this node?

One pure function, ``check``, answers it for the agent (before it stages a
bundle) and for the server (when it plans a rollout), so both always agree. It
returns every reason for a refusal, not just the first, because an operator
fixing one problem at a time through a rollout is slow and expensive. "Today"
is an argument: the gate never reads the clock, so its answers are reproducible.

Also here: ``bundle_problems``, the same facts applied to a bundle on its own
when it is built or published, and ``resolve``, which turns whatever a node
knows about a GPU (model name, PCI id, architecture, compute capability) into
the catalog's facts about it, choosing the strictest reading when it is unsure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from fleet.catalog import Architecture, Catalog, ComputeCapability, GpuModel
from fleet.errors import GpuwardError
from fleet.inventory import Gpu, NodeInventory
from fleet.manifest import BundleManifest
from fleet.versions import CudaVersion, DriverVersion, parse_branch

# Every refusal code, and what it means.
REASON_CODES = {
    "gpu-unknown": "a GPU the catalog cannot identify (refused: its needs are unknown)",
    "branch-unknown": "the bundle's branch is not in the catalog",
    "branch-eol": "the bundle's branch is past its end of life",
    "arch-dropped": "a GPU's architecture is no longer supported by the bundle's branch",
    "gpu-too-new": "a GPU needs a newer driver than the bundle's",
    "arch-not-in-bundle": "the bundle does not list a GPU's architecture",
    "module-flavour": "the bundle's kernel-module flavour does not drive a GPU",
    "no-kernel-module": "the bundle has no kernel module for the running kernel",
    "cuda-too-new": "the node's workloads need a newer CUDA than the driver runs",
    "fabric-manager": "an NVSwitch node would run a Fabric Manager unequal to the driver",
}


@dataclass(frozen=True)
class Reason:
    code: str  # one of REASON_CODES
    message: str  # names the fact, e.g. "Volta support ended with R580"

    def __post_init__(self) -> None:
        if self.code not in REASON_CODES:
            raise ValueError(f"unknown reason code {self.code!r}")

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class CompatVerdict:
    allowed: bool
    reasons: tuple[Reason, ...]

    def __post_init__(self) -> None:
        if self.allowed == bool(self.reasons):
            raise ValueError("a verdict allows exactly when it has no reasons")

    @property
    def codes(self) -> frozenset[str]:
        return frozenset(r.code for r in self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "reasons": [r.to_dict() for r in self.reasons]}


class UnknownGpu(GpuwardError):
    """The catalog cannot tell what a GPU is, or the inventory contradicts itself."""


@dataclass(frozen=True)
class ResolvedGpu:
    """What the catalog says about one GPU; the strictest reading where it is unsure."""

    label: str
    architecture: Architecture
    module_flavours: frozenset[str]
    min_driver: DriverVersion | None
    min_driver_why: str
    last_cuda_major: int | None  # None: current CUDA still supports it


def _normalise(name: str) -> str:
    name = name.casefold().strip()
    for prefix in ("nvidia ", "tesla "):
        name = name.removeprefix(prefix)
    return name


def _model_by_name(catalog: Catalog, name: str) -> tuple[Architecture, GpuModel] | None:
    """The longest catalog model that ``name`` starts with: NVML says "NVIDIA H100 80GB HBM3"."""
    wanted = _normalise(name)
    best: tuple[Architecture, GpuModel] | None = None
    for arch in catalog.architectures:
        for model in arch.models:
            known = model.name.casefold()
            fits = wanted == known or any(wanted.startswith(known + sep) for sep in " -_")
            if fits and (best is None or len(known) > len(best[1].name)):
                best = (arch, model)
    return best


def _model_by_device_id(catalog: Catalog, device_id: str) -> tuple[Architecture, GpuModel] | None:
    return next(
        ((a, m) for a in catalog.architectures for m in a.models if device_id in m.pci_device_ids),
        None,
    )


def resolve(gpu: Gpu, catalog: Catalog) -> ResolvedGpu:
    """Identify ``gpu`` from whatever the inventory gives; raise ``UnknownGpu`` if it cannot."""
    label = gpu.label()
    found: list[tuple[Architecture, GpuModel]] = []
    if gpu.pci_device_id is not None:
        by_id = _model_by_device_id(catalog, gpu.pci_device_id)
        if by_id is not None:
            found.append(by_id)
    if gpu.model is not None:
        by_name = _model_by_name(catalog, gpu.model)
        if by_name is not None:
            found.append(by_name)
    if len({m.name for _, m in found}) > 1:
        raise UnknownGpu(
            f"{label}: PCI id {gpu.pci_device_id} is a {found[0][1].name}, "
            f"but the model name says {found[1][1].name}"
        )
    model = found[0][1] if found else None

    arches: dict[str, Architecture] = {}
    if found:
        arches[f"model {found[0][1].name}"] = found[0][0]
    if gpu.compute_capability is not None:
        by_cc = next(
            (a for a in catalog.architectures if a.capability(gpu.compute_capability)), None
        )
        if by_cc is None:
            raise UnknownGpu(f"{label}: compute capability {gpu.compute_capability} is not known")
        arches[f"compute capability {gpu.compute_capability}"] = by_cc
    if gpu.architecture is not None:
        named = catalog.architecture(gpu.architecture)
        if named is None:
            raise UnknownGpu(f"{label}: architecture {gpu.architecture!r} is not known")
        arches[f"architecture {gpu.architecture}"] = named
    if not arches:
        raise UnknownGpu(f"{label}: not a GPU model the catalog knows; add its compute capability")
    if len({a.name for a in arches.values()}) > 1:
        said = ", ".join(f"{k} says {a.name}" for k, a in arches.items())
        raise UnknownGpu(f"{label}: the inventory contradicts itself ({said})")
    arch = next(iter(arches.values()))
    if (
        model is not None
        and gpu.compute_capability is not None
        and gpu.compute_capability not in model.compute_capabilities
    ):
        raise UnknownGpu(
            f"{label}: reports compute capability {gpu.compute_capability}; the catalog has "
            f"{' or '.join(model.compute_capabilities)} for {model.name}"
        )

    # Unsure which model or capability this is: take every candidate's constraints.
    if model is not None:
        models: tuple[GpuModel, ...] = (model,)
        ccs = [c for c in arch.compute_capabilities if c.cc in model.compute_capabilities]
    elif gpu.compute_capability is not None:
        models = tuple(m for m in arch.models if gpu.compute_capability in m.compute_capabilities)
        ccs = [c for c in arch.compute_capabilities if c.cc == gpu.compute_capability]
    else:
        models, ccs = arch.models, list(arch.compute_capabilities)
    flavours = arch.module_flavours
    for m in models:
        flavours = flavours & (m.module_flavours or arch.module_flavours)
    min_driver, why = _min_driver(catalog, models, ccs)
    lasts = [c.last_cuda_major for c in ccs]
    return ResolvedGpu(
        label=label,
        architecture=arch,
        module_flavours=flavours,
        min_driver=min_driver,
        min_driver_why=why,
        last_cuda_major=None if None in lasts else min(x for x in lasts if x is not None),
    )


def _min_driver(
    catalog: Catalog, models: Iterable[GpuModel], ccs: Iterable[ComputeCapability]
) -> tuple[DriverVersion | None, str]:
    needs: list[tuple[DriverVersion, str]] = [
        (m.min_driver, f"{m.name} needs driver >= {m.min_driver}")
        for m in models
        if m.min_driver is not None
    ]
    for c in ccs:
        derived = catalog.derived_min_driver(c)
        if derived is not None:
            needs.append(
                (
                    derived,
                    f"compute capability {c.cc} arrived with CUDA {c.first_cuda}, "
                    f"which needs driver >= {derived}",
                )
            )
    if not needs:
        return None, ""
    return max(needs, key=lambda n: n[0])


def check(
    inventory: NodeInventory, manifest: BundleManifest, catalog: Catalog, today: date
) -> CompatVerdict:
    """Allow ``manifest`` on ``inventory``'s node, or give every reason not to."""
    reasons: list[Reason] = []
    branch = catalog.branch(manifest.branch)
    if branch is None:
        reasons.append(Reason("branch-unknown", f"{manifest.branch} is not in the catalog"))
    elif branch.ended(today):
        reasons.append(
            Reason("branch-eol", f"{branch.name} is past its end of life ({branch.eol_text()})")
        )
    driver = manifest.version
    for gpu in inventory.gpus:
        try:
            resolved = resolve(gpu, catalog)
        except UnknownGpu as exc:
            reasons.append(Reason("gpu-unknown", str(exc)))
            continue
        reasons.extend(_gpu_reasons(resolved, manifest, driver))
    if inventory.kernel not in manifest.kernels and not manifest.dkms:
        carried = ", ".join(manifest.kernels)
        reasons.append(
            Reason(
                "no-kernel-module",
                f"no module for the running kernel {inventory.kernel}: the bundle has "
                f"precompiled modules for {carried} and no DKMS",
            )
        )
    if inventory.required_cuda is not None:
        reasons.extend(_cuda_reasons(CudaVersion.parse(inventory.required_cuda), manifest, catalog))
    if inventory.nvswitch:
        reasons.extend(_fabric_manager_reasons(inventory, manifest))
    unique = tuple(dict.fromkeys(reasons))  # eight identical GPUs give one reason, not eight
    return CompatVerdict(allowed=not unique, reasons=unique)


def _gpu_reasons(gpu: ResolvedGpu, manifest: BundleManifest, driver: DriverVersion) -> list[Reason]:
    arch = gpu.architecture
    who = f"{gpu.label} ({arch.name})"
    reasons = []
    if arch.dropped_by(manifest.branch):
        reasons.append(
            Reason(
                "arch-dropped",
                f"{who}: {arch.name} support ended with {arch.last_branch}; "
                f"the bundle is {manifest.branch}",
            )
        )
    if gpu.min_driver is not None and driver < gpu.min_driver:
        reasons.append(
            Reason("gpu-too-new", f"{who}: {gpu.min_driver_why}; the bundle has {driver}")
        )
    if arch.name not in manifest.architectures:
        reasons.append(
            Reason(
                "arch-not-in-bundle",
                f"{who}: the bundle supports only {', '.join(manifest.architectures)}",
            )
        )
    if manifest.module_flavour not in gpu.module_flavours:
        needed = " or ".join(sorted(gpu.module_flavours))
        reasons.append(
            Reason(
                "module-flavour",
                f"{who} needs the {needed} kernel modules; the bundle has "
                f"{manifest.module_flavour}",
            )
        )
    return reasons


def _cuda_reasons(
    required: CudaVersion, manifest: BundleManifest, catalog: Catalog
) -> list[Reason]:
    runs = catalog.cuda_for_driver(manifest.version)
    if runs is not None and manifest.cuda < runs:
        runs = manifest.cuda  # a bundle may claim less than its driver could
    if runs is not None and required <= runs:
        return []
    needs = catalog.min_driver_for_cuda(required)
    needs_text = f", which needs driver >= {needs}" if needs is not None else ""
    return [
        Reason(
            "cuda-too-new",
            f"the workloads need CUDA {required}{needs_text}; "
            f"driver {manifest.driver_version} runs CUDA {runs or 'older than the catalog'}",
        )
    ]


def _fabric_manager_reasons(inventory: NodeInventory, manifest: BundleManifest) -> list[Reason]:
    # NVIDIA ships Fabric Manager at the driver's exact version; a mismatched one
    # refuses to start, and the NVSwitch fabric with it.
    after = manifest.fabric_manager or inventory.fabric_manager
    if after == manifest.driver_version:
        return []
    return [
        Reason(
            "fabric-manager",
            f"NVSwitch node: Fabric Manager must equal the driver {manifest.driver_version}; "
            f"the bundle carries none and the node has {inventory.fabric_manager or 'none'}",
        )
    ]


def _arch_problem(
    arch: Architecture, branch: str, driver: DriverVersion, flavour: str, catalog: Catalog
) -> str | None:
    """Why a bundle of ``branch``/``driver``/``flavour`` cannot drive ``arch``, if it cannot."""
    if arch.dropped_by(branch):
        return f"{arch.name} support ended with {arch.last_branch}"
    if flavour not in arch.module_flavours:
        return f"{arch.name} needs the {' or '.join(sorted(arch.module_flavours))} kernel modules"
    floors = [catalog.derived_min_driver(c) for c in arch.compute_capabilities]
    earliest = min((f for f in floors if f is not None), default=None)
    if earliest is not None and None not in floors and driver < earliest:
        return f"{arch.name} GPUs need at least driver {earliest}"
    return None


def supported_architectures(
    catalog: Catalog, branch: str, driver: DriverVersion, flavour: str
) -> tuple[str, ...]:
    """The architectures a bundle of this driver and module flavour can drive."""
    return tuple(
        a.name
        for a in catalog.architectures
        if _arch_problem(a, branch, driver, flavour, catalog) is None
    )


def bundle_problems(manifest: BundleManifest, catalog: Catalog) -> tuple[str, ...]:
    """What in ``manifest`` contradicts the catalog, whatever node it meets."""
    problems = []
    branch = catalog.branch(manifest.branch)
    if branch is None:
        problems.append(f"{manifest.branch} is not in the catalog")
    driver = manifest.version
    open_from = catalog.open_modules_from
    if manifest.module_flavour == "open" and parse_branch(manifest.branch) < parse_branch(
        open_from
    ):
        problems.append(f"open kernel modules start with {open_from}")
    for name in manifest.architectures:
        arch = catalog.architecture(name)
        if arch is None:
            known = ", ".join(a.name for a in catalog.architectures)
            problems.append(f"unknown architecture {name!r}: known are {known}")
            continue
        problem = _arch_problem(arch, manifest.branch, driver, manifest.module_flavour, catalog)
        if problem is not None:
            problems.append(f"{problem}; the bundle lists {name}")
    runs = catalog.cuda_for_driver(driver)
    if runs is None or manifest.cuda > runs:
        problems.append(
            f"driver {driver} runs CUDA {runs or 'older than the catalog'}, "
            f"not {manifest.cuda_version}"
        )
    return tuple(problems)
