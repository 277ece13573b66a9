"""The driver compatibility catalog: what NVIDIA says about branches, CUDA and GPUs.

Every compatibility decision (the agent's gate before staging, the server's
rollout planning, ``gpuward bundle build``) reads the same versioned data file,
``fleet/data/catalog.json``, transcribed from the reference facts. The catalog
is also published as a TUF target, so agents receive corrections through the
signed channel; ``load_catalog`` therefore treats it as untrusted input: it
validates everything, names the field at fault, and builds a new object without
touching any existing one, so an agent offered a bad catalog keeps its old one.

Fields that rest on a secondary source are listed in each entry's
``secondary``; nothing here is guessed.

The catalog also carries the security advisory feed (``fleet.advisories``):
NVIDIA's driver bulletins ride in the same signed target, so a mirror inside an
air gap has them too. The section is optional: a catalog from before it reads
as one without a feed (``advisories`` is None), never as a fleet with no open
advisory.
"""

from __future__ import annotations

import calendar
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from functools import cache
from importlib import resources

from fleet.advisories import AdvisoryExposure, AdvisoryFeed, load_advisory_feed
from fleet.errors import GpuwardError, InvalidDocument
from fleet.manifest import MODULE_FLAVOURS
from fleet.schema import Reader
from fleet.versions import CudaVersion, DriverVersion, parse_branch, parse_version_floor

SCHEMA_VERSION = 1
TARGET_PATH = "catalog/catalog.json"
MAX_CATALOG_BYTES = 1024 * 1024
BRANCH_TYPES = frozenset({"NFB", "PB", "LTSB"})
# The only Fabric Manager rule NVIDIA states: its version equals the driver's.
FABRIC_MANAGER_RULES = frozenset({"equals-driver"})

_MAX_ENTRIES = 512
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ()._-]{0,63}")
_BRANCH = re.compile(r"R\d{3,4}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
_DRIVER = re.compile(r"\d{3,4}\.\d{1,3}(?:\.\d{1,3})?")
_FLOOR = re.compile(r"\d{3,4}(?:\.\d{1,3}){0,2}")
_CUDA = re.compile(r"\d{1,2}\.\d{1,2}")
_CC = re.compile(r"\d{1,2}\.\d")
_RELEASE = re.compile(r"GA|U[1-9]")
_DEVICE_ID = re.compile(r"0x[0-9a-f]{4}")


@dataclass(frozen=True)
class Branch:
    name: str
    type: str  # one of BRANCH_TYPES
    first_ga: date | None
    first_release: str | None
    eol: str | None  # "YYYY-MM": NVIDIA publishes end of life to the month
    listed_eol: bool  # NVIDIA lists the branch as ended without giving a date
    cuda_major: int | None  # highest CUDA major without the forward-compatibility package
    secondary: tuple[str, ...]
    note: str | None

    @property
    def number(self) -> int:
        return parse_branch(self.name)

    def ended(self, today: date) -> bool:
        """Past end of life on ``today``: a branch is supported through its EOL month."""
        if self.listed_eol:
            return True
        if self.eol is None:
            return False
        year, month = (int(p) for p in self.eol.split("-"))
        return today > date(year, month, calendar.monthrange(year, month)[1])

    def eol_text(self) -> str:
        if self.eol is not None:
            return self.eol
        return "listed as ended" if self.listed_eol else "none published"


@dataclass(frozen=True)
class CudaRelease:
    version: CudaVersion
    min_driver: DriverVersion
    secondary: bool


@dataclass(frozen=True)
class MinorCompat:
    """CUDA minor-version compatibility: ``major``.x runs on drivers at ``floor`` and up."""

    major: int
    floor: str
    below: str | None

    def admits(self, driver: DriverVersion) -> bool:
        return parse_version_floor(self.floor) <= driver.parts


@dataclass(frozen=True)
class ComputeCapability:
    cc: str
    first_cuda: CudaVersion
    last_cuda_major: int | None  # None: still supported
    secondary: tuple[str, ...]
    note: str | None


@dataclass(frozen=True)
class GpuModel:
    name: str
    compute_capabilities: tuple[str, ...]
    pci_device_ids: tuple[str, ...]
    module_flavours: frozenset[str] | None  # None: as the architecture
    min_driver: DriverVersion | None
    note: str | None


@dataclass(frozen=True)
class Architecture:
    name: str
    last_branch: str | None  # None: still supported
    module_flavours: frozenset[str]
    compute_capabilities: tuple[ComputeCapability, ...]
    models: tuple[GpuModel, ...]
    note: str | None

    def capability(self, cc: str) -> ComputeCapability | None:
        return next((c for c in self.compute_capabilities if c.cc == cc), None)

    def dropped_by(self, branch: str) -> bool:
        return self.last_branch is not None and parse_branch(branch) > parse_branch(
            self.last_branch
        )


@dataclass(frozen=True)
class Catalog:
    catalog_version: int
    gathered: date
    branches: tuple[Branch, ...]
    cuda_releases: tuple[CudaRelease, ...]  # ascending by version and by minimum driver
    minor_compat: tuple[MinorCompat, ...]
    open_modules_from: str
    open_default_from: str
    fabric_manager_rule: str
    architectures: tuple[Architecture, ...]
    advisories: AdvisoryFeed | None  # None: a catalog from before the feed

    def exposure(self, driver: str | None) -> AdvisoryExposure | None:
        """The advisories open on ``driver``; None when the driver or the feed is unknown."""
        if driver is None or self.advisories is None:
            return None
        return self.advisories.exposure(DriverVersion.parse(driver), self.catalog_version)

    def branch(self, name: str) -> Branch | None:
        return next((b for b in self.branches if b.name == name), None)

    def require_branch(self, name: str) -> Branch:
        """Return the branch called ``name`` or explain which names exist."""
        parse_branch(name)
        branch = self.branch(name)
        if branch is None:
            names = ", ".join(b.name for b in self.branches)
            raise GpuwardError(f"unknown driver branch {name!r}: known branches are {names}")
        return branch

    def architecture(self, name: str) -> Architecture | None:
        return next((a for a in self.architectures if a.name == name), None)

    def cuda_for_driver(self, driver: DriverVersion) -> CudaVersion | None:
        """The newest CUDA release whose minimum driver ``driver`` meets."""
        met = [r.version for r in self.cuda_releases if r.min_driver <= driver]
        return max(met) if met else None

    def min_driver_for_cuda(self, cuda: CudaVersion) -> DriverVersion | None:
        """The minimum driver of toolkit ``cuda``; ``13.0`` means its GA release."""
        return next((r.min_driver for r in self.cuda_releases if r.version == cuda), None)

    def newest_cuda(self, driver: DriverVersion, *, max_major: int | None) -> CudaVersion | None:
        """``cuda_for_driver`` limited to majors up to ``max_major`` (a GPU's last CUDA)."""
        met = [
            r.version
            for r in self.cuda_releases
            if r.min_driver <= driver and (max_major is None or r.version.major <= max_major)
        ]
        return max(met) if met else None

    def minor_compat_major(self, driver: DriverVersion) -> int | None:
        """The highest CUDA major ``driver`` runs through minor-version compatibility."""
        majors = [m.major for m in self.minor_compat if m.admits(driver)]
        return max(majors) if majors else None

    def derived_min_driver(self, capability: ComputeCapability) -> DriverVersion | None:
        """The GA driver of the first toolkit that knew this compute capability.

        Derived, not stated: a driver older than the first CUDA release for a GPU
        generation predates that generation. None where the toolkit is older
        than the catalog's CUDA table (Kepler to Volta).
        """
        return self.min_driver_for_cuda(
            CudaVersion(capability.first_cuda.major, capability.first_cuda.minor)
        )


@cache
def default_catalog() -> Catalog:
    """The catalog shipped inside the package."""
    data = resources.files("fleet").joinpath("data/catalog.json").read_bytes()
    return load_catalog(data, where="fleet/data/catalog.json")


def load_catalog(data: bytes, where: str = "catalog") -> Catalog:
    """Parse and validate a catalog; raise ``InvalidDocument`` naming the field.

    Pure: it neither caches nor replaces anything, so a caller holding a good
    catalog keeps it when a new one is rejected.
    """
    if len(data) > MAX_CATALOG_BYTES:
        raise InvalidDocument(f"{where}: larger than {MAX_CATALOG_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidDocument(f"{where}: not JSON ({exc})") from None
    return _read_catalog(doc, where)


def _read_catalog(doc: object, where: str) -> Catalog:
    r = Reader(
        doc,
        where,
        allowed=frozenset(
            {
                "schema",
                "catalog_version",
                "gathered",
                "source",
                "branches",
                "cuda_toolkits",
                "minor_version_compatibility",
                "kernel_modules",
                "fabric_manager",
                "architectures",
                "advisories",
            }
        ),
    )
    if r.integer("schema") != SCHEMA_VERSION:
        raise InvalidDocument(f"{where}: unsupported catalog schema; upgrade gpuward")
    r.text("source", max_len=512)
    branches = tuple(
        _read_branch(item, r.item_where("branches", i))
        for i, item in enumerate(r.items("branches", max_items=_MAX_ENTRIES))
    )
    _unique(where, "branches", (b.name for b in branches))
    cuda = _read_cuda(r, where)
    minor = tuple(
        _read_minor(item, r.item_where("minor_version_compatibility", i))
        for i, item in enumerate(r.items("minor_version_compatibility", max_items=_MAX_ENTRIES))
    )
    _unique(where, "minor_version_compatibility", (str(m.major) for m in minor))
    km = Reader(
        r.raw("kernel_modules"),
        f"{where}.kernel_modules",
        allowed=frozenset({"open_from_branch", "open_default_from_branch"}),
    )
    architectures = tuple(
        _read_architecture(item, r.item_where("architectures", i))
        for i, item in enumerate(r.items("architectures", max_items=_MAX_ENTRIES))
    )
    _unique(where, "architectures", (a.name for a in architectures))
    _unique(where, "models", (m.name.casefold() for a in architectures for m in a.models))
    _unique(
        where, "compute capabilities", (c.cc for a in architectures for c in a.compute_capabilities)
    )
    _unique(
        where,
        "pci_device_ids",
        (d for a in architectures for m in a.models for d in m.pci_device_ids),
    )
    names = {b.name for b in branches}
    for i, arch in enumerate(architectures):
        if arch.last_branch is not None and arch.last_branch not in names:
            raise InvalidDocument(
                f"{r.item_where('architectures', i)}: 'last_branch' {arch.last_branch} "
                "is not among the catalog's branches"
            )
    return Catalog(
        catalog_version=r.integer("catalog_version", minimum=1),
        gathered=_date(r, "gathered"),
        branches=branches,
        cuda_releases=cuda,
        minor_compat=minor,
        open_modules_from=km.text("open_from_branch", pattern=_BRANCH),
        open_default_from=km.text("open_default_from_branch", pattern=_BRANCH),
        fabric_manager_rule=r.text("fabric_manager", choices=FABRIC_MANAGER_RULES),
        architectures=architectures,
        advisories=None
        if r.optional_raw("advisories") is None
        else load_advisory_feed(r.raw("advisories"), f"{where}.advisories", names),
    )


def _unique(where: str, what: str, values: Iterable[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise InvalidDocument(f"{where}: {what}: {value!r} appears twice")
        seen.add(value)


def _date(r: Reader, key: str) -> date:
    text = r.text(key, pattern=_DATE)
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidDocument(f"{r.where}: {key!r} is not a real date: {text}") from None


def _secondary(r: Reader, allowed: frozenset[str]) -> tuple[str, ...]:
    items = r.items("secondary", max_items=len(allowed))
    for item in items:
        if item not in allowed:
            raise InvalidDocument(
                f"{r.where}: 'secondary' must name fields among {', '.join(sorted(allowed))}"
            )
    return tuple(items)


_BRANCH_FIELDS = frozenset(
    {"name", "type", "first_ga", "first_release", "eol", "listed_eol", "cuda_major"}
)


def _read_branch(doc: object, where: str) -> Branch:
    r = Reader(doc, where, allowed=_BRANCH_FIELDS | {"secondary", "note"})
    name = r.text("name", pattern=_BRANCH)
    first_ga = None if r.raw("first_ga") is None else _date(r, "first_ga")
    first_release = r.nullable_text("first_release", pattern=_DRIVER, max_len=16)
    if first_release is not None and DriverVersion.parse(first_release).branch != name:
        raise InvalidDocument(f"{where}: 'first_release' {first_release} is not in {name}")
    eol = r.nullable_text("eol", pattern=_MONTH, max_len=7)
    listed_eol = r.boolean("listed_eol")
    if eol is not None and listed_eol:
        raise InvalidDocument(f"{where}: 'listed_eol' is for branches without an 'eol' month")
    cuda_major = None if r.raw("cuda_major") is None else r.integer("cuda_major", maximum=99)
    return Branch(
        name=name,
        type=r.text("type", choices=BRANCH_TYPES),
        first_ga=first_ga,
        first_release=first_release,
        eol=eol,
        listed_eol=listed_eol,
        cuda_major=cuda_major,
        secondary=_secondary(r, _BRANCH_FIELDS - {"name"}),
        note=r.nullable_text("note", max_len=512),
    )


def _read_cuda(r: Reader, where: str) -> tuple[CudaRelease, ...]:
    releases: list[CudaRelease] = []
    for i, item in enumerate(r.items("cuda_toolkits", max_items=_MAX_ENTRIES)):
        tw = r.item_where("cuda_toolkits", i)
        tr = Reader(item, tw, allowed=frozenset({"version", "releases", "secondary", "note"}))
        toolkit = CudaVersion.parse(tr.text("version", pattern=_CUDA))
        secondary = _secondary(tr, frozenset({"releases"})) == ("releases",)
        tr.nullable_text("note", max_len=512)
        items = tr.items("releases", max_items=16)
        if not items:
            raise InvalidDocument(f"{tw}: 'releases' must list at least the GA release")
        for j, rel in enumerate(items):
            rw = tr.item_where("releases", j)
            rr = Reader(rel, rw, allowed=frozenset({"release", "driver"}))
            expected = "GA" if j == 0 else f"U{j}"
            if rr.text("release", pattern=_RELEASE) != expected:
                raise InvalidDocument(f"{rw}: 'release' must be {expected} (in order)")
            version = CudaVersion(toolkit.major, toolkit.minor, j)
            driver = DriverVersion.parse(rr.text("driver", pattern=_DRIVER, max_len=16))
            if releases and (version <= releases[-1].version or driver < releases[-1].min_driver):
                # Newer toolkits never need older drivers: out of order means a typo.
                raise InvalidDocument(
                    f"{rw}: 'driver' {driver} for CUDA {version} breaks the ascending order "
                    f"(CUDA {releases[-1].version} needs {releases[-1].min_driver})"
                )
            releases.append(CudaRelease(version, driver, secondary))
    if not releases:
        raise InvalidDocument(f"{where}: 'cuda_toolkits' is empty")
    return tuple(releases)


def _read_minor(doc: object, where: str) -> MinorCompat:
    r = Reader(doc, where, allowed=frozenset({"major", "floor", "below", "note"}))
    r.nullable_text("note", max_len=512)
    return MinorCompat(
        major=r.integer("major", maximum=99),
        floor=r.text("floor", pattern=_FLOOR, max_len=16),
        below=r.nullable_text("below", pattern=_FLOOR, max_len=16),
    )


def _flavours(r: Reader, key: str) -> frozenset[str]:
    items = r.items(key, max_items=len(MODULE_FLAVOURS))
    if not items or not all(f in MODULE_FLAVOURS for f in items) or len(set(items)) != len(items):
        raise InvalidDocument(
            f"{r.where}: {key!r} must list one or both of {', '.join(sorted(MODULE_FLAVOURS))}"
        )
    return frozenset(items)


def _read_architecture(doc: object, where: str) -> Architecture:
    r = Reader(
        doc,
        where,
        allowed=frozenset(
            {"name", "last_branch", "module_flavours", "compute_capabilities", "models", "note"}
        ),
    )
    capabilities = []
    for i, item in enumerate(r.items("compute_capabilities", max_items=32)):
        cr = Reader(
            item,
            r.item_where("compute_capabilities", i),
            allowed=frozenset({"cc", "first_cuda", "last_cuda_major", "secondary", "note"}),
        )
        last = cr.raw("last_cuda_major")
        capabilities.append(
            ComputeCapability(
                cc=cr.text("cc", pattern=_CC, max_len=5),
                first_cuda=CudaVersion.parse(cr.text("first_cuda", pattern=_CUDA)),
                last_cuda_major=None if last is None else cr.integer("last_cuda_major", maximum=99),
                secondary=_secondary(cr, frozenset({"first_cuda", "last_cuda_major"})),
                note=cr.nullable_text("note", max_len=512),
            )
        )
    if not capabilities:
        raise InvalidDocument(f"{where}: 'compute_capabilities' is empty")
    known_cc = {c.cc for c in capabilities}
    models = []
    for i, item in enumerate(r.items("models", max_items=128)):
        mw = r.item_where("models", i)
        mr = Reader(
            item,
            mw,
            allowed=frozenset(
                {
                    "name",
                    "compute_capabilities",
                    "pci_device_ids",
                    "module_flavours",
                    "min_driver",
                    "note",
                }
            ),
        )
        ccs = tuple(mr.items("compute_capabilities", max_items=8))
        if not ccs or not set(ccs) <= known_cc:
            raise InvalidDocument(
                f"{mw}: 'compute_capabilities' must list some of {', '.join(sorted(known_cc))}"
            )
        ids = tuple(mr.items("pci_device_ids", max_items=64))
        if not all(isinstance(d, str) and _DEVICE_ID.fullmatch(d) for d in ids):
            raise InvalidDocument(f"{mw}: 'pci_device_ids' must be like 0x2330 (lower case)")
        min_driver = mr.nullable_text("min_driver", pattern=_DRIVER, max_len=16)
        models.append(
            GpuModel(
                name=mr.text("name", pattern=_NAME),
                compute_capabilities=ccs,
                pci_device_ids=ids,
                module_flavours=None
                if mr.raw("module_flavours") is None
                else _flavours(mr, "module_flavours"),
                min_driver=None if min_driver is None else DriverVersion.parse(min_driver),
                note=mr.nullable_text("note", max_len=512),
            )
        )
    return Architecture(
        name=r.text("name", pattern=_NAME),
        last_branch=r.nullable_text("last_branch", pattern=_BRANCH, max_len=8),
        module_flavours=_flavours(r, "module_flavours"),
        compute_capabilities=tuple(capabilities),
        models=tuple(models),
        note=r.nullable_text("note", max_len=512),
    )
