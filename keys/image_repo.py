"""The image repository: offline-signed driver bundles as TUF targets.

On disk a repository directory holds ``keys/`` (never served), ``metadata/``
and ``targets/`` (served as they are, by the server or any static mirror). It
uses consistent snapshots: every version of root, targets and snapshot has its
own file and bundles are stored under their digest, so a mirror can update
while clients read and a client never mixes versions.

Besides driver bundles (``drivers/<branch>/...``) it publishes the compatibility
catalog at ``catalog/catalog.json``, so agents get catalog corrections through
the same signed channel, never from an unsigned download.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from fleet.catalog import MAX_CATALOG_BYTES, TARGET_PATH, load_catalog
from fleet.errors import GpuwardError
from fleet.manifest import BundleManifest, target_path
from keys.bundle import read_manifest
from keys.keyring import TOP_LEVEL_ROLES, Keyring, PassphraseSource
from keys.storage import atomic_write, fsync_dir

EXPIRY = {
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}
T = TypeVar("T", Root, Targets, Snapshot, Timestamp)


def _expiry(role: str) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + EXPIRY[role]


@dataclass(frozen=True)
class PublishedCatalog:
    target_path: str
    catalog_version: int
    sha256: str
    length: int


@dataclass(frozen=True)
class PublishedBundle:
    target_path: str
    manifest: BundleManifest
    sha256: str
    length: int


class ImageRepository:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.keyring = Keyring(root / "keys")
        self.metadata_dir = root / "metadata"
        self.targets_dir = root / "targets"

    # -- creation ---------------------------------------------------------

    @classmethod
    def init(cls, root: Path, passphrase: str) -> ImageRepository:
        """Generate keys and the first signed version of every role."""
        repo = cls(root)
        if repo.metadata_dir.exists():
            raise GpuwardError(f"{root} already holds a repository")
        Keyring.generate(repo.keyring.dir, passphrase)
        repo.targets_dir.mkdir(parents=True, exist_ok=True)

        root_md = Metadata(Root(expires=_expiry("root"), consistent_snapshot=True))
        for role in TOP_LEVEL_ROLES:
            root_md.signed.add_key(repo.keyring.role_key(role).public_key, role)
        targets_md = Metadata(Targets(expires=_expiry("targets")))

        def secret() -> str:
            return passphrase

        snapshot_md = Metadata(Snapshot(expires=_expiry("snapshot")))
        timestamp_md = Metadata(Timestamp(expires=_expiry("timestamp")))
        for md in (root_md, targets_md, snapshot_md, timestamp_md):
            repo._sign_and_write(md, secret)
        return repo

    # -- reading -----------------------------------------------------------

    def _load(self, filename: str, kind: type[T]) -> Metadata[T]:
        path = self.metadata_dir / filename
        try:
            md: Metadata[Any] = Metadata.from_bytes(path.read_bytes())
        except FileNotFoundError:
            raise GpuwardError(
                f"{self.root} is not a gpuward repository ({filename} missing); "
                "run 'gpuward keys init' first"
            ) from None
        except DeserializationError as exc:
            raise GpuwardError(f"{path}: corrupt metadata ({exc})") from None
        if not isinstance(md.signed, kind):
            raise GpuwardError(f"{path}: expected {kind.type} metadata")
        return md

    def root_metadata(self) -> Metadata[Root]:
        return self._load("root.json", Root)

    def timestamp(self) -> Metadata[Timestamp]:
        return self._load("timestamp.json", Timestamp)

    def snapshot(self) -> Metadata[Snapshot]:
        version = self.timestamp().signed.snapshot_meta.version
        return self._load(f"{version}.snapshot.json", Snapshot)

    def targets(self) -> Metadata[Targets]:
        version = self.snapshot().signed.meta["targets.json"].version
        return self._load(f"{version}.targets.json", Targets)

    def published(self) -> list[PublishedBundle]:
        out = []
        for path, info in sorted(self.targets().signed.targets.items()):
            if not path.startswith("drivers/"):
                continue
            custom: Any = info.custom
            manifest = BundleManifest.from_dict(custom.get("manifest"), where=path)
            out.append(PublishedBundle(path, manifest, info.hashes["sha256"], info.length))
        return out

    # -- publishing --------------------------------------------------------

    def add_bundle(self, bundle: Path, passphrase: PassphraseSource) -> PublishedBundle:
        """Publish ``bundle`` as a target and re-sign targets, snapshot, timestamp."""
        manifest = read_manifest(bundle)
        path = target_path(manifest, bundle.name)
        info = TargetFile.from_file(path, str(bundle), ["sha256"])
        info.unrecognized_fields["custom"] = {"manifest": manifest.to_dict()}

        targets_md = self.targets()
        existing = targets_md.signed.targets.get(path)
        if existing is not None and existing.hashes != info.hashes:
            raise GpuwardError(
                f"{path} is already published with other content; published bundles "
                "never change: build it under a new file name"
            )
        self._store_target(bundle, path, info.hashes["sha256"])
        targets_md.signed.targets[path] = info
        targets_md.signed.version += 1
        targets_md.signed.expires = _expiry("targets")
        self._sign_and_write(targets_md, passphrase)
        self._publish_snapshot(targets_md.signed.version)
        return PublishedBundle(path, manifest, info.hashes["sha256"], info.length)

    def add_catalog(self, catalog_file: Path, passphrase: PassphraseSource) -> PublishedCatalog:
        """Publish a compatibility catalog; its ``catalog_version`` must go up.

        The catalog is validated first: a broken one must never reach agents,
        who would reject it anyway and keep running on the old one.
        """
        with catalog_file.open("rb") as f:
            data = f.read(MAX_CATALOG_BYTES + 1)
        catalog = load_catalog(data, where=str(catalog_file))
        info = TargetFile.from_data(TARGET_PATH, data, ["sha256"])
        info.unrecognized_fields["custom"] = {"catalog_version": catalog.catalog_version}
        published = PublishedCatalog(
            TARGET_PATH, catalog.catalog_version, info.hashes["sha256"], info.length
        )
        targets_md = self.targets()
        existing = targets_md.signed.targets.get(TARGET_PATH)
        if existing is not None:
            if existing.hashes == info.hashes:
                return published  # already published: nothing to sign
            current: Any = existing.custom
            if catalog.catalog_version <= int(current.get("catalog_version", 0)):
                raise GpuwardError(
                    f"catalog version {catalog.catalog_version} is not newer than the published "
                    f"version {current.get('catalog_version')}: raise catalog_version"
                )
        # Store the bytes that were validated and hashed, not the file again.
        atomic_write(self._target_file(TARGET_PATH, info.hashes["sha256"]), data)
        targets_md.signed.targets[TARGET_PATH] = info
        targets_md.signed.version += 1
        targets_md.signed.expires = _expiry("targets")
        self._sign_and_write(targets_md, passphrase)
        self._publish_snapshot(targets_md.signed.version)
        return published

    def _target_file(self, path: str, sha256: str) -> Path:
        """Where target ``path`` is served from: consistent snapshots prefix the digest."""
        folder, name = path.rsplit("/", 1)
        return self.targets_dir / folder / f"{sha256}.{name}"

    def _store_target(self, source: Path, path: str, sha256: str) -> None:
        dest = self._target_file(path, sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.partial")
        shutil.copyfile(source, tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.replace(dest)
        fsync_dir(dest.parent)

    def _publish_snapshot(self, targets_version: int) -> None:
        """Sign a new snapshot naming ``targets_version``, then a timestamp for it."""
        snapshot_md = self.snapshot()
        snapshot_md.signed.version += 1
        snapshot_md.signed.meta["targets.json"] = MetaFile(targets_version)
        snapshot_md.signed.expires = _expiry("snapshot")
        self._sign_and_write(snapshot_md, _no_passphrase)
        self.sign_timestamp(snapshot_version=snapshot_md.signed.version)

    def sign_timestamp(
        self, *, snapshot_version: int | None = None, expires: datetime | None = None
    ) -> Metadata[Timestamp]:
        """Sign the next timestamp; it expires soonest, so the server re-signs it often."""
        timestamp_md = self.timestamp()
        timestamp_md.signed.version += 1
        if snapshot_version is not None:
            timestamp_md.signed.snapshot_meta = MetaFile(snapshot_version)
        timestamp_md.signed.expires = expires or _expiry("timestamp")
        self._sign_and_write(timestamp_md, _no_passphrase)
        return timestamp_md

    def _sign_and_write(self, md: Metadata[Any], passphrase: PassphraseSource) -> None:
        role = md.signed.type
        md.signatures.clear()
        md.sign(self.keyring.signer(role, passphrase))
        data = md.to_bytes(JSONSerializer(compact=False))
        version = md.signed.version
        if role == Timestamp.type:
            atomic_write(self.metadata_dir / "timestamp.json", data)
        else:
            atomic_write(self.metadata_dir / f"{version}.{role}.json", data)
        if role == Root.type:
            atomic_write(self.metadata_dir / "root.json", data)


def _no_passphrase() -> str:
    raise GpuwardError("online keys need no passphrase; the key description is wrong")
