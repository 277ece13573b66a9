"""The catalog the server judges nodes with, and their exposure to its advisory feed.

Exposure is the server's judgement, made from the driver version each node's
latest report names (``fleet.advisories`` says why not the node's): the API,
the dashboard and the compliance reports all read it here, so they agree.

The catalog is the newest the server has: the one it publishes to its agents
(``gpuward repo add-catalog``), or the one gpuward ships when that is newer, so
an upgrade brings new bulletins before anyone republishes. The published one
is believed only as its agents would believe it: the targets role's signature
checked against root's keys, then the file's length and hashes against the
signed entry. One that fails is not used; the server logs
``served_catalog_refused`` and judges with the shipped catalog, as an agent
keeps its last good one.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import Targets

from fleet.advisories import AdvisoryExposure, FleetAdvisories
from fleet.catalog import MAX_CATALOG_BYTES, TARGET_PATH, Catalog, default_catalog, load_catalog
from fleet.errors import GpuwardError
from keys.durable_files import read_bounded
from keys.image_repo import ImageRepository

log = structlog.get_logger(__name__)


def served_catalog(repo: Path) -> Catalog:
    """The catalog to judge with for the image repository at ``repo``."""
    # Every publication signs a new timestamp file: read again only then.
    stamp = (repo / "metadata" / "timestamp.json").stat()
    return _newest(repo, stamp.st_ino, stamp.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _newest(repo: Path, _inode: int, _mtime_ns: int) -> Catalog:
    shipped = default_catalog()
    try:
        published = _published(repo)
    except (GpuwardError, RepositoryError, OSError) as exc:
        log.error(
            "served_catalog_refused",
            repo=str(repo),
            reason=f"{type(exc).__name__}: {exc}",
            judged_with=shipped.catalog_version,
        )
        return shipped
    if published is None or published.catalog_version < shipped.catalog_version:
        return shipped
    return published


def _published(repo: Path) -> Catalog | None:
    image = ImageRepository(repo)
    targets = image.targets()
    info = targets.signed.targets.get(TARGET_PATH)
    if info is None:
        return None
    image.root_metadata().verify_delegate(Targets.type, targets)
    folder, name = TARGET_PATH.rsplit("/", 1)
    path = image.targets_dir / folder / f"{info.hashes['sha256']}.{name}"
    data = read_bounded(path, MAX_CATALOG_BYTES, "catalog")
    info.verify_length_and_hashes(data)
    return load_catalog(data, where=str(path))


@dataclass
class ExposureMemo:
    """Exposure against one catalog, judged once per driver version: a fleet of
    thousands of nodes runs a handful of versions."""

    catalog: Catalog
    _found: dict[str, AdvisoryExposure | None] = field(default_factory=dict)

    def of(self, driver: str | None) -> AdvisoryExposure | None:
        """None: no driver reported, or a catalog without a feed (unknown, not clean)."""
        if driver is None:
            return None
        if driver not in self._found:
            self._found[driver] = self.catalog.exposure(driver)
        return self._found[driver]

    def fleet(self, drivers: Mapping[str, int]) -> FleetAdvisories | None:
        """The fleet's exposure from node counts per driver version ("none" is skipped)."""
        feed = self.catalog.advisories
        return None if feed is None else feed.fleet(drivers, self.catalog.catalog_version)
