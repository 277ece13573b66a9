"""Fleet planning: which nodes can take which published branch, and who is stranded.

For every node and every branch that has published bundles, the plan runs the
gate (``fleet.compat.check``) against each bundle of that branch and keeps the
newest one the node accepts. It also says how far each node's CUDA can go, and
which nodes hold GPUs whose support ends with an older branch: those nodes are
stranded on that branch, and its end of life is their deadline to replace the
hardware. Pure functions of their inputs, "today" included.

For a node whose running driver is known and has security advisories open on
it (``fleet.advisories``), the plan proposes the smallest published bundle of
the node's own branch that the node accepts and that leaves nothing open; when
its branch has none (a bulletin lists no fix there, or no such bundle is
published or fits), the nearest other branch's smallest such bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from fleet.advisories import AdvisoryExposure
from fleet.catalog import Catalog
from fleet.compat import CompatVerdict, ResolvedGpu, UnknownGpu, check, resolve
from fleet.inventory import NodeInventory
from fleet.manifest import BundleManifest
from fleet.versions import CudaVersion, DriverVersion, parse_branch


@dataclass(frozen=True)
class BranchFit:
    """A node against one branch: the newest bundle it accepts, or why none."""

    branch: str
    bundle: BundleManifest | None  # the newest accepted bundle
    verdict: CompatVerdict  # of that bundle, or of the closest refused one

    def to_dict(self) -> dict[str, Any]:
        return {
            "branch": self.branch,
            "driver_version": None if self.bundle is None else self.bundle.driver_version,
            **self.verdict.to_dict(),
        }


@dataclass(frozen=True)
class Stranded:
    """The node's GPUs lose support after ``last_branch``; its EOL is the deadline."""

    last_branch: str
    architectures: tuple[str, ...]
    deadline: str  # the branch's EOL month, or why there is none
    ended: bool  # the deadline has passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "last_branch": self.last_branch,
            "architectures": list(self.architectures),
            "deadline": self.deadline,
            "ended": self.ended,
        }

    def text(self) -> str:
        if self.ended:
            return f"{self.last_branch}, ended {self.deadline}"
        return f"{self.last_branch} until {self.deadline}"


@dataclass(frozen=True)
class AdvisoryFix:
    """What closes the advisories open on a node's driver, among the published bundles."""

    branch: str  # the node's
    open: int
    worst: str
    needed: str | None  # the smallest release of the branch closing them all; None: none listed
    bundle: str | None  # the smallest published one of the branch from ``needed`` the node takes
    nearest: BundleManifest | None  # otherwise: the nearest other branch's, if any

    def to_dict(self) -> dict[str, Any]:
        return {
            "branch": self.branch,
            "open": self.open,
            "worst": self.worst,
            "needed": self.needed,
            "bundle": self.bundle,
            "nearest_branch": None if self.nearest is None else self.nearest.branch,
            "nearest": None if self.nearest is None else self.nearest.driver_version,
        }

    def text(self) -> str:
        head = f"{self.open} open ({self.worst})"
        if self.bundle is not None:
            return f"{head}: {self.bundle}"
        if self.needed is None:
            why = f"no fix listed in {self.branch}"
        else:
            why = f"needs {self.needed}, no published {self.branch} bundle from it fits"
        nearest = (
            "no other branch fits"
            if self.nearest is None
            else f"nearest {self.nearest.branch} {self.nearest.driver_version}"
        )
        return f"{head}: {why}; {nearest}"


@dataclass(frozen=True)
class NodePlan:
    node_id: str
    gpus: tuple[str, ...]  # "H100 (Hopper)", or the label of a GPU the catalog does not know
    fits: tuple[BranchFit, ...]  # one per planned branch, in plan order
    max_cuda: CudaVersion | None  # the newest CUDA any published bundle lets it run
    stranded: Stranded | None
    advisories: AdvisoryExposure | None = None  # None: running driver or feed unknown
    advisory_fix: AdvisoryFix | None = None  # None: nothing open (or nothing known)

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "gpus": list(self.gpus),
            "branches": [f.to_dict() for f in self.fits],
            "max_cuda": None if self.max_cuda is None else str(self.max_cuda),
            "stranded": None if self.stranded is None else self.stranded.to_dict(),
            "advisories": None if self.advisories is None else self.advisories.to_dict(),
            "advisory_fix": None if self.advisory_fix is None else self.advisory_fix.to_dict(),
        }

    def advisory_text(self) -> str | None:
        """The plan's answer to the node's open advisories, in a few words."""
        if self.advisories is None:
            return None
        return "none open" if self.advisory_fix is None else self.advisory_fix.text()


@dataclass(frozen=True)
class FleetPlan:
    today: date
    catalog_version: int
    branches: tuple[str, ...]
    nodes: tuple[NodePlan, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "today": self.today.isoformat(),
            "catalog_version": self.catalog_version,
            "branches": list(self.branches),
            "nodes": [n.to_dict() for n in self.nodes],
        }


def plan(
    nodes: Sequence[NodeInventory],
    bundles: Sequence[BundleManifest],
    catalog: Catalog,
    today: date,
) -> FleetPlan:
    branches = tuple(sorted({b.branch for b in bundles}, key=parse_branch))
    newest_first = sorted(bundles, key=lambda b: b.version, reverse=True)
    return FleetPlan(
        today=today,
        catalog_version=catalog.catalog_version,
        branches=branches,
        nodes=tuple(_plan_node(n, branches, newest_first, catalog, today) for n in nodes),
    )


def _plan_node(
    node: NodeInventory,
    branches: tuple[str, ...],
    newest_first: Sequence[BundleManifest],
    catalog: Catalog,
    today: date,
) -> NodePlan:
    verdicts = [(b, check(node, b, catalog, today)) for b in newest_first]
    fits = []
    for branch in branches:
        mine = [(b, v) for b, v in verdicts if b.branch == branch]
        accepted = next(((b, v) for b, v in mine if v.allowed), None)
        if accepted is not None:
            fits.append(BranchFit(branch, accepted[0], accepted[1]))
        else:
            # The newest bundle among those refused for the fewest reasons.
            closest = min(mine, key=lambda bv: len(bv[1].reasons))
            fits.append(BranchFit(branch, None, closest[1]))
    resolved: list[ResolvedGpu] = []
    labels: list[str] = []
    for gpu in node.gpus:
        try:
            r = resolve(gpu, catalog)
        except UnknownGpu:
            labels.append(f"{gpu.label()} (unknown)")
            continue
        resolved.append(r)
        labels.append(f"{r.label} ({r.architecture.name})")
    exposure = catalog.exposure(node.driver_version)
    return NodePlan(
        node_id=node.node_id,
        gpus=tuple(labels),
        fits=tuple(fits),
        max_cuda=_max_cuda(resolved, verdicts, catalog)
        if len(resolved) == len(node.gpus)
        else None,
        stranded=_stranded(resolved, catalog, today),
        advisories=exposure,
        advisory_fix=None
        if exposure is None or not exposure.open
        else _advisory_fix(exposure, verdicts, catalog),
    )


def _advisory_fix(
    exposure: AdvisoryExposure,
    verdicts: Sequence[tuple[BundleManifest, CompatVerdict]],
    catalog: Catalog,
) -> AdvisoryFix:
    """The smallest accepted bundle of the node's branch with nothing open, else the
    nearest other branch's (by branch number; the newer on a tie)."""
    branch = DriverVersion.parse(exposure.driver_version).branch
    feed = catalog.advisories
    assert feed is not None  # an exposure comes from a feed
    clean = [b for b, v in verdicts if v.allowed and not feed.open_for(b.version)]
    mine = [b for b in clean if b.branch == branch]
    others = [b for b in clean if b.branch != branch]
    nearest = None
    if not mine and others:
        number = parse_branch(branch)
        closest = min(
            {b.branch for b in others},
            key=lambda name: (abs(parse_branch(name) - number), -parse_branch(name)),
        )
        nearest = min((b for b in others if b.branch == closest), key=lambda b: b.version)
    return AdvisoryFix(
        branch=branch,
        open=len(exposure.open),
        worst=exposure.open[0].severity,
        needed=exposure.fixed_by,
        bundle=min(mine, key=lambda b: b.version).driver_version if mine else None,
        nearest=nearest,
    )


def _max_cuda(
    gpus: Sequence[ResolvedGpu],
    verdicts: Sequence[tuple[BundleManifest, CompatVerdict]],
    catalog: Catalog,
) -> CudaVersion | None:
    """The newest CUDA the node could run on a bundle it accepts but for its CUDA need."""
    lasts = [g.last_cuda_major for g in gpus if g.last_cuda_major is not None]
    max_major = min(lasts) if lasts else None  # CUDA 13.0 dropped Volta: a V100 stays on 12.x
    best: CudaVersion | None = None
    for bundle, verdict in verdicts:
        if not verdict.codes <= {"cuda-too-new"}:
            continue
        runs = catalog.newest_cuda(bundle.version, max_major=max_major)
        if runs is not None and bundle.cuda < runs:
            runs = bundle.cuda
        if runs is not None and (best is None or runs > best):
            best = runs
    return best


def _stranded(gpus: Sequence[ResolvedGpu], catalog: Catalog, today: date) -> Stranded | None:
    ending = [g.architecture for g in gpus if g.architecture.last_branch is not None]
    if not ending:
        return None
    last = min((a.last_branch for a in ending if a.last_branch), key=parse_branch)
    branch = catalog.require_branch(last)
    return Stranded(
        last_branch=last,
        architectures=tuple(dict.fromkeys(a.name for a in ending if a.last_branch == last)),
        deadline=branch.eol_text(),
        ended=branch.ended(today),
    )
