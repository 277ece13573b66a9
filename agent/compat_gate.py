"""The compatibility gate on the node itself, with the catalog from the signed channel.

The server plans with the same rules, but a mis-targeted bundle must still be
refused here: the node checks every candidate against its own GPUs, running
kernel and CUDA needs before it stages a byte. The catalog comes through TUF
(``catalog/catalog.json``); one that fails to load is ignored and the last good
one (or the one shipped in the package) stays in force.
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path

import structlog

from agent.channel import ImageChannel
from fleet.catalog import TARGET_PATH, Catalog, default_catalog, load_catalog
from fleet.compat import CompatVerdict, check
from fleet.errors import InvalidDocument
from fleet.inventory import Gpu, NodeInventory
from fleet.manifest import BundleManifest
from keys.durable_files import atomic_write
from node.config import AgentConfig
from node.gpu_health import ProbeResult

log = structlog.get_logger(__name__)


def current_catalog(config: AgentConfig, channel: ImageChannel) -> Catalog:
    """The newest valid catalog: signed and newer, else the last good, else built in."""
    last_good = config.state_dir / "catalog.json"
    catalog = _load_file(last_good) or default_catalog()
    info = channel.targetinfo(TARGET_PATH)
    if info is None:
        return catalog
    data = channel.fetch(info).read_bytes()
    try:
        fetched = load_catalog(data, where=TARGET_PATH)
    except InvalidDocument as exc:
        log.warning("catalog_rejected", reason=str(exc), kept=catalog.catalog_version)
        return catalog
    if fetched.catalog_version > catalog.catalog_version:
        atomic_write(last_good, data)
        log.info("catalog_updated", version=fetched.catalog_version)
        return fetched
    return catalog


def _load_file(path: Path) -> Catalog | None:
    try:
        return load_catalog(path.read_bytes(), where=str(path))
    except FileNotFoundError:
        return None
    except InvalidDocument as exc:
        log.warning("catalog_rejected", reason=str(exc), path=str(path))
        return None


def inventory(config: AgentConfig, seen: ProbeResult) -> NodeInventory:
    return NodeInventory(
        node_id=config.node_id,
        gpus=tuple(Gpu(g.name, None, None, None) for g in seen.gpus),
        kernel=config.kernel or os.uname().release,
        os=_os_id(),
        nvswitch=config.nvswitch,
        required_cuda=config.required_cuda,
        fabric_manager=None,
    )


def reported_inventory(config: AgentConfig, seen: ProbeResult) -> NodeInventory | None:
    """The inventory to report: the gate's, when it reads back as the server reads it.
    A host whose GPUs NVML does not see (no driver loaded) has none, and a GPU name
    the schema refuses must cost the report its inventory, never the report."""
    try:
        return NodeInventory.from_dict(inventory(config, seen).to_dict())
    except InvalidDocument as exc:
        log.info("inventory_not_reported", reason=str(exc))
        return None


def _os_id() -> str:
    try:
        release = platform.freedesktop_os_release()
    except OSError:
        return "unknown"
    return f"{release.get('ID', 'linux')}-{release.get('VERSION_ID', '')}".rstrip("-")


def gate(
    config: AgentConfig, seen: ProbeResult, manifest: BundleManifest, catalog: Catalog
) -> CompatVerdict:
    return check(inventory(config, seen), manifest, catalog, datetime.now(UTC).date())
