"""Security advisories: which driver versions NVIDIA's security bulletins name, and
what fixes them.

NVIDIA publishes a GPU display driver security bulletin every few months; each
lists CVEs with a CVSS score, and per product and branch the first driver
release that fixes them ("All driver versions prior to 580.95.05"). The feed is
those bulletins' Linux data-center ("Tesla") rows, transcribed into the
``advisories`` section of the compatibility catalog (``fleet/data/catalog.json``),
so it travels to agents and mirrors inside the signed catalog target and every
entry names the bulletin it comes from. ``load_advisory_feed`` reads it as the
catalog reader reads the rest: untrusted, strictly, naming the field at fault.

Exposure is a pure function of a driver version (``AdvisoryFeed.open_for``):

* a bulletin lists the driver's branch for a CVE: the driver is affected while
  it is older than that branch's fixed release;
* a bulletin lists the driver's branch for other CVEs only: NVIDIA evaluated the
  branch and it is not affected by this one;
* a bulletin does not list the driver's branch at all, and the branch is older
  than the newest one it lists: every bulletin says "earlier software branch
  releases ... might also be affected; upgrade to the latest branch release",
  so each of its CVEs is open as ``branch-not-listed``, with no fix in the branch;
* a branch newer than every branch a bulletin lists was released after it.

A node's exposure is judged on the server from the driver its latest report
names, never taken from the node: the feed changes without the node changing,
and a newly published bulletin must mark every affected node at once.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from functools import cached_property

from fleet.errors import InvalidDocument
from fleet.schema import Reader
from fleet.versions import DriverVersion, parse_branch
from fleet.wire import Document, Field, Integer, ListOf, Number, Ref, Text, Wire, optional

SCHEMA_VERSION = 1
# CVSS v3.1 and v4.0 share the qualitative scale; worst first.
SEVERITIES = ("critical", "high", "medium", "low")
_SCALE = {"critical": (9.0, 10.0), "high": (7.0, 8.9), "medium": (4.0, 6.9), "low": (0.1, 3.9)}
AFFECTED = "affected"  # the bulletin lists the branch; the driver predates its fix
BRANCH_NOT_LISTED = "branch-not-listed"  # an older branch the bulletin gives no fix for
STATUSES = frozenset({AFFECTED, BRANCH_NOT_LISTED})

MAX_BULLETINS = 256
MAX_CVES = 64  # per bulletin
MAX_OPEN = MAX_BULLETINS * MAX_CVES
_BULLETIN_ID = re.compile(r"\d{1,6}")
_CVE = re.compile(r"CVE-\d{4}-\d{4,7}")
_CWE = re.compile(r"CWE-\d{1,5}")
_VECTOR = re.compile(r"CVSS:(?:3\.[01]|4\.0)(?:/[A-Z]{1,3}:[A-Z]{1,2}){4,32}")
_URL = re.compile(r"https://[^\s\"'<>]{1,500}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_BRANCH = re.compile(r"R\d{3,4}")
_DRIVER = re.compile(r"\d{3,4}\.\d{1,3}(?:\.\d{1,3})?")


def _severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


@dataclass(frozen=True)
class Advisory:
    """One CVE of a bulletin, with the first fixed release in each branch it lists."""

    cve: str
    score: float  # CVSS base score
    severity: str  # one of SEVERITIES, as the bulletin rates it
    vector: str  # the CVSS vector string
    cwe: str | None
    summary: str
    fixed: tuple[tuple[str, DriverVersion], ...]  # (branch, first fixed release), by branch

    def fixed_in(self, branch: str) -> DriverVersion | None:
        return next((v for b, v in self.fixed if b == branch), None)


@dataclass(frozen=True)
class Bulletin:
    """One NVIDIA security bulletin, as published at ``url``."""

    id: str  # NVIDIA's answer id: nvidia.custhelp.com/app/answers/detail/a_id/ID
    title: str
    url: str
    source: str  # the copy of the bulletin this entry was transcribed from
    published: date
    updated: date
    advisories: tuple[Advisory, ...]

    @cached_property
    def branches(self) -> frozenset[str]:
        """Every branch the bulletin lists for any of its CVEs: the branches NVIDIA evaluated."""
        return frozenset(b for a in self.advisories for b, _ in a.fixed)

    @cached_property
    def newest_branch(self) -> int:
        return max(parse_branch(b) for b in self.branches)

    def judge(self, advisory: Advisory, driver: DriverVersion) -> OpenAdvisory | None:
        """``advisory`` open on ``driver``, or None (the module's docstring says how)."""
        branch = driver.branch
        fixed = advisory.fixed_in(branch)
        if fixed is not None:
            if driver >= fixed:
                return None
            status = AFFECTED
        elif branch in self.branches or parse_branch(branch) > self.newest_branch:
            return None
        else:
            status = BRANCH_NOT_LISTED
        return OpenAdvisory(
            cve=advisory.cve,
            severity=advisory.severity,
            score=advisory.score,
            status=status,
            fixed=None if fixed is None else fixed.text,
            summary=advisory.summary,
            bulletin=self.url,
            bulletin_title=self.title,
            published=self.published.isoformat(),
        )


@dataclass(frozen=True)
class OpenAdvisory(Wire):
    """A CVE a driver is exposed to: how bad, why it is open, what fixes it, and
    the NVIDIA bulletin that says so."""

    cve: str
    severity: str
    score: float
    status: str  # AFFECTED or BRANCH_NOT_LISTED
    fixed: str | None  # the first fixed release in the driver's branch; None: none listed
    summary: str
    bulletin: str  # the bulletin's address
    bulletin_title: str
    published: str  # the bulletin's first publication, YYYY-MM-DD

    WIRE = Document(
        Field("cve", Text(max_len=20, pattern=_CVE)),
        Field("severity", Text(choices=frozenset(SEVERITIES)), description="as NVIDIA rates it"),
        Field("score", Number(maximum=10.0), description="CVSS base score"),
        Field(
            "status",
            Text(choices=STATUSES),
            description="affected: the bulletin lists the driver's branch and a later fixed "
            "release; branch-not-listed: the branch is older than those the bulletin lists, "
            "which NVIDIA says might also be affected (upgrade to a listed branch)",
        ),
        optional("fixed", Text(max_len=16, pattern=_DRIVER), "first fixed release in the branch"),
        Field("summary", Text(max_len=512)),
        Field("bulletin", Text(max_len=512, pattern=_URL), description="the NVIDIA bulletin"),
        Field("bulletin_title", Text(max_len=200)),
        Field("published", Text(max_len=10, pattern=_DATE), description="the bulletin's date"),
        where="advisory",
    )


@dataclass(frozen=True)
class AdvisoryExposure(Wire):
    """The advisories open on one driver version, worst first, judged against the
    feed of catalog ``catalog_version``."""

    driver_version: str
    catalog_version: int
    open: tuple[OpenAdvisory, ...]
    fixed_by: str | None  # the smallest release of the branch that closes every one

    WIRE = Document(
        Field("driver_version", Text(max_len=16, pattern=_DRIVER)),
        Field("catalog_version", Integer(minimum=1), description="the feed judged against"),
        Field("open", ListOf(Ref(OpenAdvisory), MAX_OPEN), description="worst first"),
        optional(
            "fixed_by",
            Text(max_len=16, pattern=_DRIVER),
            "the smallest release of the driver's branch that closes every open advisory; "
            "null when none is open, or when a bulletin lists no fix in the branch",
        ),
        where="advisory exposure",
    )

    @property
    def worst(self) -> str | None:
        return self.open[0].severity if self.open else None


@dataclass(frozen=True)
class CveExposure(Wire):
    """How many nodes of a fleet one CVE is open on, and on which drivers."""

    cve: str
    severity: str
    score: float
    bulletin: str
    nodes: int
    affected: int  # of them, on a listed branch before its fix
    branch_not_listed: int  # of them, on an older branch the bulletin gives no fix for
    drivers: tuple[str, ...]  # the driver versions it is open on, ascending

    WIRE = Document(
        Field("cve", Text(max_len=20, pattern=_CVE)),
        Field("severity", Text(choices=frozenset(SEVERITIES))),
        Field("score", Number(maximum=10.0)),
        Field("bulletin", Text(max_len=512, pattern=_URL)),
        Field("nodes", Integer(), description="nodes it is open on"),
        Field("affected", Integer(), description="of them, on a listed branch before its fix"),
        Field("branch_not_listed", Integer(), description="of them, on an unlisted older branch"),
        Field("drivers", ListOf(Text(max_len=16, pattern=_DRIVER), 10_000)),
        where="CVE exposure",
    )


@dataclass(frozen=True)
class FleetAdvisories(Wire):
    """A fleet's exposure to the advisory feed: nodes by the worst severity open on
    them, and every CVE open somewhere, worst first."""

    catalog_version: int
    bulletins: int  # in the feed
    nodes: int  # judged: those whose latest report names a driver
    exposed: int  # with at least one open advisory
    critical: int  # nodes whose worst open advisory is critical, and so on
    high: int
    medium: int
    low: int
    cves: tuple[CveExposure, ...]

    WIRE = Document(
        Field("catalog_version", Integer(minimum=1), description="the feed judged against"),
        Field("bulletins", Integer(), description="bulletins in the feed"),
        Field("nodes", Integer(), description="nodes judged: their latest report names a driver"),
        Field("exposed", Integer(), description="nodes with at least one open advisory"),
        *(
            Field(s, Integer(), description=f"nodes whose worst open advisory is {s}")
            for s in SEVERITIES
        ),
        Field("cves", ListOf(Ref(CveExposure), MAX_OPEN), description="worst first"),
        where="fleet advisories",
    )


@dataclass(frozen=True)
class AdvisoryFeed:
    about: str  # what was transcribed from where, and what was checked
    bulletins: tuple[Bulletin, ...]

    def open_for(self, driver: DriverVersion) -> tuple[OpenAdvisory, ...]:
        """Every advisory open on ``driver``, worst first."""
        found = [
            judged
            for bulletin in self.bulletins
            for advisory in bulletin.advisories
            if (judged := bulletin.judge(advisory, driver)) is not None
        ]
        return tuple(sorted(found, key=lambda a: (_severity_rank(a.severity), -a.score, a.cve)))

    def exposure(self, driver: DriverVersion, catalog_version: int) -> AdvisoryExposure:
        found = self.open_for(driver)
        fixes = [DriverVersion.parse(a.fixed) for a in found if a.fixed is not None]
        closes_all = bool(found) and len(fixes) == len(found)
        return AdvisoryExposure(
            driver_version=driver.text,
            catalog_version=catalog_version,
            open=found,
            fixed_by=max(fixes).text if closes_all else None,
        )

    def fleet(self, drivers: Mapping[str, int], catalog_version: int) -> FleetAdvisories:
        """The exposure of a fleet given as node counts per driver version; keys that
        are no driver version ("none": no driver reported) are not judged."""
        worst: Counter[str] = Counter()
        per_cve: dict[str, list[tuple[OpenAdvisory, str, int]]] = {}
        judged = 0
        for text, count in drivers.items():
            if count <= 0 or not _DRIVER.fullmatch(text):
                continue
            judged += count
            found = self.open_for(DriverVersion.parse(text))
            if found:
                worst[found[0].severity] += count
            for advisory in found:
                per_cve.setdefault(advisory.cve, []).append((advisory, text, count))
        cves = [_cve_exposure(seen) for seen in per_cve.values()]
        cves.sort(key=lambda c: (_severity_rank(c.severity), -c.score, -c.nodes, c.cve))
        return FleetAdvisories(
            catalog_version=catalog_version,
            bulletins=len(self.bulletins),
            nodes=judged,
            exposed=sum(worst.values()),
            critical=worst["critical"],
            high=worst["high"],
            medium=worst["medium"],
            low=worst["low"],
            cves=tuple(cves),
        )


def _cve_exposure(seen: list[tuple[OpenAdvisory, str, int]]) -> CveExposure:
    first = seen[0][0]
    affected = sum(n for a, _, n in seen if a.status == AFFECTED)
    total = sum(n for _, _, n in seen)
    return CveExposure(
        cve=first.cve,
        severity=first.severity,
        score=first.score,
        bulletin=first.bulletin,
        nodes=total,
        affected=affected,
        branch_not_listed=total - affected,
        drivers=tuple(sorted((d for _, d, _ in seen), key=DriverVersion.parse)),
    )


def load_advisory_feed(doc: object, where: str, branches: Iterable[str]) -> AdvisoryFeed:
    """The feed in ``doc`` (the catalog's ``advisories`` section); each fixed release
    must be in one of ``branches`` (the catalog's). Raises ``InvalidDocument``
    naming the field at fault."""
    r = Reader(doc, where, allowed=frozenset({"schema", "about", "bulletins"}))
    if r.integer("schema") != SCHEMA_VERSION:
        raise InvalidDocument(f"{where}: unsupported advisories schema; upgrade gpuward")
    about = r.text("about", max_len=2048)
    known = frozenset(branches)
    bulletins = tuple(
        _read_bulletin(item, r.item_where("bulletins", i), known)
        for i, item in enumerate(r.items("bulletins", max_items=MAX_BULLETINS))
    )
    seen_ids: set[str] = set()
    seen_cves: set[str] = set()
    for i, bulletin in enumerate(bulletins):
        if bulletin.id in seen_ids:
            raise InvalidDocument(f"{r.item_where('bulletins', i)}: bulletin {bulletin.id} twice")
        seen_ids.add(bulletin.id)
        for advisory in bulletin.advisories:
            if advisory.cve in seen_cves:
                raise InvalidDocument(
                    f"{r.item_where('bulletins', i)}: {advisory.cve} is already in another "
                    "bulletin; list each CVE once, under the bulletin that fixes it"
                )
            seen_cves.add(advisory.cve)
    return AdvisoryFeed(about, bulletins)


def _date(r: Reader, key: str) -> date:
    text = r.text(key, pattern=_DATE, max_len=10)
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidDocument(f"{r.where}: {key!r} is not a real date: {text}") from None


def _read_bulletin(doc: object, where: str, branches: frozenset[str]) -> Bulletin:
    r = Reader(
        doc,
        where,
        allowed=frozenset({"id", "title", "url", "source", "published", "updated", "cves"}),
    )
    published, updated = _date(r, "published"), _date(r, "updated")
    if updated < published:
        raise InvalidDocument(f"{where}: 'updated' {updated} is before 'published' {published}")
    items = r.items("cves", max_items=MAX_CVES)
    if not items:
        raise InvalidDocument(f"{where}: 'cves' is empty: a bulletin without CVEs says nothing")
    return Bulletin(
        id=r.text("id", pattern=_BULLETIN_ID, max_len=6),
        title=r.text("title", max_len=200),
        url=r.text("url", pattern=_URL, max_len=512),
        source=r.text("source", pattern=_URL, max_len=512),
        published=published,
        updated=updated,
        advisories=tuple(
            _read_advisory(item, r.item_where("cves", i), branches) for i, item in enumerate(items)
        ),
    )


def _read_advisory(doc: object, where: str, branches: frozenset[str]) -> Advisory:
    r = Reader(
        doc,
        where,
        allowed=frozenset({"cve", "score", "severity", "vector", "cwe", "summary", "fixed"}),
    )
    score = r.number("score", minimum=0.1, maximum=10.0)
    if round(score * 10) != score * 10:
        raise InvalidDocument(f"{where}: 'score' {score} has more than one decimal (CVSS has one)")
    severity = r.text("severity", choices=frozenset(SEVERITIES))
    low, high = _SCALE[severity]
    if not low <= score <= high:
        raise InvalidDocument(
            f"{where}: 'severity' {severity} contradicts 'score' {score} "
            f"({severity} is {low} to {high} on the CVSS scale)"
        )
    return Advisory(
        cve=r.text("cve", pattern=_CVE, max_len=20),
        score=score,
        severity=severity,
        vector=r.text("vector", pattern=_VECTOR, max_len=200),
        cwe=r.nullable_text("cwe", pattern=_CWE, max_len=9),
        summary=r.text("summary", max_len=512),
        fixed=_read_fixed(r, where, branches),
    )


def _read_fixed(
    r: Reader, where: str, branches: frozenset[str]
) -> tuple[tuple[str, DriverVersion], ...]:
    raw = r.raw("fixed")
    if not isinstance(raw, Mapping) or not 1 <= len(raw) <= 32:
        raise InvalidDocument(
            f"{where}: 'fixed' must map 1 to 32 branches to their first fixed release, "
            'like {"R580": "580.95.05"}'
        )
    fixed = []
    for branch, version in raw.items():
        if not isinstance(branch, str) or not _BRANCH.fullmatch(branch):
            raise InvalidDocument(f"{where}: 'fixed' has an invalid branch {str(branch)[:20]!r}")
        if branch not in branches:
            raise InvalidDocument(
                f"{where}: 'fixed' names {branch}, which is not among the catalog's branches"
            )
        if not isinstance(version, str) or not _DRIVER.fullmatch(version):
            raise InvalidDocument(
                f"{where}: 'fixed'.{branch} must be a driver version like 580.95.05"
            )
        parsed = DriverVersion.parse(version)
        if parsed.branch != branch:
            raise InvalidDocument(
                f"{where}: 'fixed'.{branch} is {version}, a release of {parsed.branch}"
            )
        fixed.append((branch, parsed))
    return tuple(sorted(fixed, key=lambda bv: parse_branch(bv[0])))
