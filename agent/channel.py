"""The signed update channel as the agent sees it: python-tuf's ngclient.

Trust starts from the root installed with the agent (``trusted_root`` in the
config), passed to ngclient as ``bootstrap``: the writable metadata cache is
never a trust anchor. Every failure is classified as either ``UpdateRefused``
(the repository or the network served something that does not verify: an
attack, or a broken mirror) or ``ChannelUnavailable`` (nothing arrived).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import Updater, UpdaterConfig

from agent.config import AgentConfig
from fleet.errors import GpuwardError, InvalidDocument
from fleet.manifest import BundleManifest
from gpuward import __version__

log = structlog.get_logger(__name__)


class UpdateRefused(GpuwardError):
    """What the server sent failed verification; nothing was installed."""


class ChannelUnavailable(GpuwardError):
    """The update server could not be reached or did not answer properly."""


@dataclass(frozen=True)
class Candidate:
    """A bundle the image repository offers, with its verified target info."""

    target_path: str
    info: TargetFile
    manifest: BundleManifest

    @property
    def sha256(self) -> str:
        return str(self.info.hashes["sha256"])


@contextlib.contextmanager
def _classified(action: str) -> Iterator[None]:
    try:
        yield
    except tuf_errors.DownloadLengthMismatchError as exc:
        # Endless-data attack or a mirror serving the wrong file.
        raise UpdateRefused(f"{action}: {type(exc).__name__}: {exc}") from exc
    except tuf_errors.DownloadError as exc:
        cause = exc.__cause__ or exc
        raise ChannelUnavailable(
            f"{action}: server unreachable ({type(cause).__name__}: {cause}); "
            "check server_url and the network"
        ) from exc
    except tuf_errors.RepositoryError as exc:
        raise UpdateRefused(f"{action}: {type(exc).__name__}: {exc}") from exc


class ImageChannel:
    def __init__(self, config: AgentConfig) -> None:
        try:
            bootstrap = config.trusted_root.read_bytes()
        except FileNotFoundError:
            raise GpuwardError(
                f"trusted root {config.trusted_root} not found; install the repository's "
                "root.json there"
            ) from None
        for folder in (config.metadata_dir, config.download_dir):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._metadata_dir = config.metadata_dir
        try:
            self._updater = Updater(
                metadata_dir=str(config.metadata_dir),
                metadata_base_url=config.metadata_url,
                target_dir=str(config.download_dir),
                target_base_url=config.targets_url,
                config=UpdaterConfig(app_user_agent=f"gpuward-agent/{__version__}"),
                bootstrap=bootstrap,
            )
        except (tuf_errors.RepositoryError, ValueError) as exc:
            raise GpuwardError(f"trusted root {config.trusted_root} is not valid: {exc}") from None

    def refresh(self) -> None:
        with _classified("refreshing metadata"):
            self._updater.refresh()

    def candidates(self, branch: str) -> list[Candidate]:
        """Every bundle of ``branch`` in the verified metadata.

        ngclient offers no listing. Looking up the branch folder itself makes it
        walk the delegations and verify and cache the branch's role; names are
        then read from the roles it cached and each is looked up again through
        ``get_targetinfo``, which answers only from verified metadata.
        """
        prefix = f"drivers/{branch}/"
        with _classified(f"loading the metadata of branch {branch}"):
            self._updater.get_targetinfo(prefix)
        names: set[str] = set()
        for role_file in self._metadata_dir.glob("*.json"):
            if role_file.name in ("root.json", "timestamp.json", "snapshot.json"):
                continue
            listed = Metadata[Targets].from_bytes(role_file.read_bytes())
            names.update(p for p in listed.signed.targets if p.startswith(prefix))
        found = []
        for path in sorted(names):
            with _classified(f"looking up {path}"):
                info = self._updater.get_targetinfo(path)
            if info is None:
                continue
            try:
                found.append(Candidate(path, info, _manifest_of(info)))
            except UpdateRefused as exc:
                # One unreadable manifest (say, a newer schema) must not block
                # the bundles this agent does understand.
                log.warning("bundle_skipped", target=path, reason=str(exc))
        return found

    def fetch(self, candidate: Candidate) -> Path:
        """The verified bundle file, downloaded unless a verified copy is cached."""
        with _classified(f"downloading {candidate.target_path}"):
            cached = self._updater.find_cached_target(candidate.info)
            return Path(cached or self._updater.download_target(candidate.info))


def _manifest_of(info: TargetFile) -> BundleManifest:
    custom: Any = info.custom
    if not isinstance(custom, dict) or "manifest" not in custom:
        raise UpdateRefused(f"{info.path}: signed target carries no bundle manifest")
    try:
        return BundleManifest.from_dict(custom["manifest"], where=f"{info.path}: manifest")
    except InvalidDocument as exc:
        raise UpdateRefused(str(exc)) from None
