"""The TUF channel core both node processes share: python-tuf's ngclient.

Trust starts from the root installed with the agent (``trusted_root`` in the
config), passed to ngclient as ``bootstrap``: the writable metadata cache is
never a trust anchor. Every failure is classified as either ``UpdateRefused``
(the repository or the network served something that does not verify: an
attack, or a broken mirror) or ``ChannelUnavailable`` (nothing arrived).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, TargetFile, Targets
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig, Urllib3Fetcher

from fleet.errors import GpuwardError, InvalidDocument
from fleet.manifest import BundleManifest
from fleet.version import VERSION

log = structlog.get_logger(__name__)


class UpdateRefused(GpuwardError):
    """What the server sent failed verification; nothing was installed."""


class ChannelUnavailable(GpuwardError):
    """The update server could not be reached or did not answer properly."""


class TlsRefused(tuf_errors.DownloadError):
    """TLS with the server or a mirror failed (its certificate did not verify, most
    likely): nothing was fetched. The message names what the certificate was
    checked against, which is what an operator must fix."""


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
    except TlsRefused as exc:
        raise ChannelUnavailable(f"{action}: {exc}") from exc
    except tuf_errors.DownloadHTTPError as exc:
        raise ChannelUnavailable(
            f"{action}: the server answered HTTP {exc.status_code}; is this node enrolled "
            "and server_url right?"
        ) from exc
    except tuf_errors.DownloadError as exc:
        cause = exc.__cause__ or exc
        raise ChannelUnavailable(
            f"{action}: server unreachable ({type(cause).__name__}: {cause}); "
            "check server_url and the network"
        ) from exc
    except tuf_errors.RepositoryError as exc:
        raise UpdateRefused(f"{action}: {type(exc).__name__}: {exc}") from exc


USER_AGENT = f"gpuward-agent/{VERSION}"


def _digest(algorithm: str) -> Any:
    """A fresh digest for a TUF hash name (TUF spells BLAKE2b-256 its own way)."""
    try:
        return (
            hashlib.blake2b(digest_size=32)
            if algorithm == "blake2b-256"
            else hashlib.new(algorithm)
        )
    except (ValueError, TypeError) as exc:
        raise tuf_errors.LengthOrHashMismatchError(
            f"unsupported hash algorithm {algorithm!r}"
        ) from exc


def _update(digests: Iterable[Any], chunk: bytes) -> None:
    for digest in digests:
        digest.update(chunk)


class TufChannel:
    """One TUF repository through ngclient, trusted from a root installed with the agent."""

    def __init__(
        self,
        name: str,
        trusted_root: Path,
        metadata_dir: Path,
        metadata_url: str,
        targets_url: str,
        download_dir: Path | None,
        fetcher: FetcherInterface | None = None,
    ) -> None:
        """``download_dir`` None: a channel that only verifies metadata, and may not fetch."""
        self.name = name
        try:
            bootstrap = trusted_root.read_bytes()
        except FileNotFoundError:
            raise GpuwardError(
                f"trusted root {trusted_root} not found; install the {name} repository's "
                "root.json there"
            ) from None
        for folder in (metadata_dir, download_dir):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._metadata_dir = metadata_dir
        self._download_dir = download_dir
        self._targets_url = targets_url.rstrip("/") + "/"
        # Kept so that ``fetch`` can stream a bundle itself (see ``_download``);
        # the same fetcher serves ngclient's metadata requests.
        self._fetcher = fetcher or Urllib3Fetcher(app_user_agent=USER_AGENT)
        try:
            self._updater = Updater(
                metadata_dir=str(metadata_dir),
                metadata_base_url=metadata_url,
                target_dir=None if download_dir is None else str(download_dir),
                target_base_url=targets_url,
                config=UpdaterConfig(app_user_agent=USER_AGENT),
                bootstrap=bootstrap,
                fetcher=self._fetcher,
            )
        except (tuf_errors.RepositoryError, ValueError) as exc:
            raise GpuwardError(f"trusted root {trusted_root} is not valid: {exc}") from None

    def refresh(self) -> None:
        with _classified(f"refreshing {self.name} metadata"):
            self._updater.refresh()

    def targetinfo(self, path: str) -> TargetFile | None:
        """``path``'s target as verified metadata describes it (None if it has none)."""
        with _classified(f"looking up {path} in the {self.name} repository"):
            return self._updater.get_targetinfo(path)

    def listed(self, prefix: str) -> set[str]:
        """Target names under ``prefix`` in the targets metadata ngclient cached.

        ngclient offers no listing and persists only metadata it verified;
        callers still look every name up through ``targetinfo``, which answers
        from verified metadata alone.
        """
        names: set[str] = set()
        for role_file in self._metadata_dir.glob("*.json"):
            if role_file.name in ("root.json", "timestamp.json", "snapshot.json"):
                continue
            listed = Metadata[Targets].from_bytes(role_file.read_bytes())
            names.update(p for p in listed.signed.targets if p.startswith(prefix))
        return names

    def verify_all(self) -> list[str]:
        """Load every delegated role and download (so verify) every target; their names."""
        top = Metadata[Targets].from_bytes((self._metadata_dir / "targets.json").read_bytes())
        delegations = top.signed.delegations
        for role in (delegations.roles or {}).values() if delegations else ():
            for pattern in role.paths or []:
                self.targetinfo(pattern.rstrip("*"))
        names = sorted(self.listed(""))
        for name in names:
            info = self.targetinfo(name)
            if info is None:
                raise UpdateRefused(f"{name} is listed but not verifiable")
            self.fetch(info)
        return names

    def matches(self, info: TargetFile, path: Path) -> bool:
        """Whether the file at ``path`` has the length and hashes ``info`` lists."""
        return self._updater.find_cached_target(info, str(path)) is not None

    def fetch(self, info: TargetFile) -> Path:
        """The verified target file, downloaded unless a verified copy is cached."""
        with _classified(f"downloading {info.path}"):
            cached = self._updater.find_cached_target(info)
            return Path(cached) if cached else self._download(info)

    def _download(self, info: TargetFile) -> Path:
        """``info``'s target, hashed while it streams to disk, renamed into place once verified.

        ngclient's ``download_target`` spools the body to a temporary file, reads it
        back to hash it and reads it a third time to copy it out: three passes over
        a bundle of a GiB or more. The checks are ngclient's own (length cap while
        streaming, exact length, every listed hash) and raise its errors; a file at
        the target path is therefore always a verified one.
        """
        if self._download_dir is None:
            raise ValueError(f"the {self.name} channel only verifies metadata; it cannot fetch")
        destination = self._download_dir / quote(info.path, "")
        digests = {algorithm: _digest(algorithm) for algorithm in info.hashes}
        received = 0
        fd, partial = tempfile.mkstemp(dir=self._download_dir, prefix=".partial-")
        hashed: Future[None] | None = None
        try:
            with os.fdopen(fd, "wb") as out, ThreadPoolExecutor(1) as hasher:
                for chunk in self._fetcher.fetch(self._target_url(info)):
                    received += len(chunk)
                    if received > info.length:
                        raise tuf_errors.DownloadLengthMismatchError(
                            f"{info.path}: more than the {info.length} bytes signed"
                        )
                    # hashlib lets go of the GIL: a chunk is hashed on the other core
                    # while this thread writes it and receives the next.
                    if hashed is not None:
                        hashed.result()
                    hashed = hasher.submit(_update, digests.values(), chunk)
                    out.write(chunk)
                if hashed is not None:
                    hashed.result()
            if received != info.length:
                raise tuf_errors.LengthOrHashMismatchError(
                    f"{info.path}: {received} bytes, not the {info.length} signed"
                )
            for algorithm, digest in digests.items():
                if digest.hexdigest() != info.hashes[algorithm]:
                    raise tuf_errors.LengthOrHashMismatchError(
                        f"{info.path}: {algorithm} {digest.hexdigest()} is not the one signed"
                    )
            Path(partial).replace(destination)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
        log.debug("target_downloaded", target=info.path, bytes=received)
        return destination

    def _target_url(self, info: TargetFile) -> str:
        """Where ngclient's ``download_target`` would GET ``info``: with consistent
        snapshots, the file name carries its first hash. The root read is the one
        ngclient verified and persisted."""
        root = Metadata[Root].from_bytes((self._metadata_dir / "root.json").read_bytes())
        path = info.path
        if root.signed.consistent_snapshot:
            folder, sep, name = path.rpartition("/")
            path = f"{folder}{sep}{next(iter(info.hashes.values()))}.{name}"
        return self._targets_url + path


def manifest_of(info: TargetFile) -> BundleManifest:
    custom: Any = info.custom
    if not isinstance(custom, dict) or "manifest" not in custom:
        raise UpdateRefused(f"{info.path}: signed target carries no bundle manifest")
    try:
        return BundleManifest.from_dict(custom["manifest"], where=f"{info.path}: manifest")
    except InvalidDocument as exc:
        raise UpdateRefused(str(exc)) from None
