"""The applier takes in the agent's spool, trusting nothing in it.

The agent (or whoever took it over) can rewrite the spooled bundle and request
at any moment, so the applier trusts neither: it copies the bundle somewhere
only root writes and re-verifies that copy against TUF metadata it verifies
again itself, offline, from the root of trust in /etc. It reaches the agent's
folders and files through ``applier.untrusted_files``: no link followed on the
way, regular files only, bounded. A spool the agent replaced with a link (to
any folder holding a ``target.json``) is refused, nothing read or removed.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile
from tuf.ngclient import FetcherInterface

from applier.unpack import MAX_BUNDLE_BYTES
from applier.untrusted_files import AgentFolder, UntrustedFileRefused
from fleet.errors import GpuwardError
from fleet.manifest import BundleManifest
from node.channel import TufChannel, UpdateRefused, manifest_of
from node.config import AgentConfig
from node.director import Directive, read_directive
from node.spool import BUNDLE, TARGET

MAX_TARGET_BYTES = 1024 * 1024
# Above python-tuf's own caps on a role's metadata (5 MB for targets roles).
MAX_METADATA_BYTES = 16 * 1024 * 1024
MAX_METADATA_FILES = 4096
# The one link ngclient keeps in its cache: root.json names the newest trusted root.
NGCLIENT_ROOT_LINK = re.compile(r"root_history/[0-9]+\.root\.json")

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Verified:
    """A bundle copy only root can write, and what verified metadata says it is."""

    target_path: str
    sha256: str
    manifest: BundleManifest
    bundle: Path


class SpoolRefused(UpdateRefused):
    """The spool is not the agent's own folder: nothing in it is read or removed."""


def open_spool(config: AgentConfig) -> AgentFolder | None:
    """The spool as root opens it (None when the agent has made none); raise
    ``SpoolRefused`` for a link anywhere on the way or a folder the agent does not own."""
    below = config.spool_dir.relative_to(config.state_dir).parts
    try:
        return AgentFolder.open(config.state_dir, *below)
    except FileNotFoundError:
        return None
    except (UntrustedFileRefused, OSError) as exc:
        raise SpoolRefused(
            f"the spool {config.spool_dir} is refused ({exc}); nothing in it was read or "
            "removed: make it a folder of the agent's account again"
        ) from None


def clear_spool(spool: AgentFolder) -> None:
    """Consume the request: the path unit stops triggering once the spool is empty."""
    for name in (TARGET, BUNDLE):
        try:
            spool.remove(name)
        except OSError as exc:  # a folder the agent made there: its own to remove
            log.error("spool_not_cleared", file=str(spool.path / name), reason=exc.strerror)


class _OfflineFetcher(FetcherInterface):
    """Answers ngclient from the cached metadata alone: the applier has no network.

    Serving the cached timestamp back makes ngclient's refresh see "no newer
    version" and verify what it has; every other download is a 404, so roots
    come from the cache's root_history and nothing new can arrive.
    """

    def __init__(self, metadata_url: str, cache: Path) -> None:
        self._timestamp_url = f"{metadata_url}timestamp.json"
        self._cache = cache

    def _fetch(self, url: str) -> Iterator[bytes]:
        if url == self._timestamp_url:
            try:
                return iter([(self._cache / "timestamp.json").read_bytes()])
            except OSError:
                pass
        raise tuf_errors.DownloadHTTPError(f"{url}: the applier works offline", 404)


class MetadataUnusable(UpdateRefused):
    """The agent's cached metadata could not vouch for the request: the request is
    not at fault, and the agent may spool it again once its metadata is fresh."""


def read_request(spool: AgentFolder) -> TargetFile:
    """The spooled ``TargetFile``, as the agent claims it; nothing in it is trusted yet."""
    try:
        doc: Any = json.loads(spool.read_file(TARGET, MAX_TARGET_BYTES))
        return TargetFile.from_dict(dict(doc["info"]), str(doc["path"]))
    except (UntrustedFileRefused, OSError, ValueError, KeyError, TypeError) as exc:
        raise UpdateRefused(
            f"spooled request {spool.path / TARGET} is unreadable ({exc})"
        ) from None


def verify_spool(
    config: AgentConfig, spool: AgentFolder, spooled: TargetFile, work: Path
) -> Verified:
    """Copy the spooled bundle into ``work`` and verify it as ``spooled`` (from
    ``read_request``); raise ``UpdateRefused``."""
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    bundle = work / BUNDLE
    bundle.unlink(missing_ok=True)  # left by a run that crashed mid-copy
    try:
        # No bundle longer than its signed length can match it: refused unread.
        spool.copy_file(BUNDLE, bundle, min(spooled.length, MAX_BUNDLE_BYTES))
    except (UntrustedFileRefused, OSError) as exc:
        raise UpdateRefused(f"spooled bundle is unreadable ({exc})") from None
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        channel = _offline_channel(
            config, "image", config.trusted_root, config.metadata_dir, config.metadata_url, scratch
        )
        try:
            verified = channel.targetinfo(spooled.path)
        except GpuwardError as exc:
            raise MetadataUnusable(f"cached metadata does not verify offline: {exc}") from None
        if verified is None:
            raise UpdateRefused(f"{spooled.path} is not in the verified metadata")
        if verified != spooled:
            raise UpdateRefused(f"spooled target info for {spooled.path} differs from signed")
        if not channel.matches(verified, bundle):
            raise UpdateRefused(f"spooled bundle for {spooled.path} changed after staging")
    return Verified(spooled.path, str(verified.hashes["sha256"]), manifest_of(verified), bundle)


def verify_directive(config: AgentConfig, verified: Verified, work: Path) -> Directive:
    """What the director assigns this node, from the agent's cached director metadata
    verified offline from the director root in /etc; raise ``UpdateRefused`` unless it
    names exactly the verified bundle, for this node.

    Every refusal is ``MetadataUnusable``: the bundle is not at fault when the
    director's word is missing or has moved on, so the agent may hand it over
    again once the director assigns it.
    """
    assert config.director is not None
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        channel = _offline_channel(
            config,
            "director",
            config.director.trusted_root,
            config.director_metadata_dir,
            f"{config.director_url}/metadata/",
            scratch,
        )
        try:
            directive = read_directive(channel)
        except GpuwardError as exc:
            raise MetadataUnusable(
                f"cached director metadata does not verify offline: {exc}"
            ) from None
    if directive is None:
        raise MetadataUnusable(
            f"the director assigns no bundle to this node, not {verified.target_path}"
        )
    if directive.node_id != config.node_id:
        raise MetadataUnusable(
            f"the director's {directive.target_path} is meant for {directive.node_id}, "
            f"not {config.node_id}"
        )
    if (
        directive.target_path != verified.target_path
        or directive.info.hashes.get("sha256") != verified.sha256
    ):
        raise MetadataUnusable(
            f"the director assigns {directive.target_path}, not the spooled {verified.target_path}"
        )
    return directive


def _offline_channel(
    config: AgentConfig,
    name: str,
    trusted_root: Path,
    cache: Path,
    metadata_url: str,
    scratch: str,
) -> TufChannel:
    """A TUF repository verified from ``trusted_root`` over a private copy of the agent's
    ``cache``: ngclient writes its cache, and root must not write into a folder the
    agent owns."""
    metadata = Path(scratch) / "metadata"
    below = cache.relative_to(config.state_dir).parts
    try:
        with AgentFolder.open(config.state_dir, *below) as cached:
            cached.copy_tree(
                metadata, MAX_METADATA_BYTES, MAX_METADATA_FILES, links=NGCLIENT_ROOT_LINK
            )
    except (UntrustedFileRefused, OSError) as exc:
        raise MetadataUnusable(
            f"the agent's cached metadata of the {name} repository, {cache}, cannot be "
            f"copied ({exc}); "
            "run `gpuward agent run --once` so the agent refreshes it, then apply again"
        ) from None
    return TufChannel(
        name,
        trusted_root,
        metadata,
        metadata_url,
        config.targets_url,
        Path(scratch) / "targets",
        fetcher=_OfflineFetcher(metadata_url, metadata),
    )
