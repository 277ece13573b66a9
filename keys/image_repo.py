"""The image repository: offline-signed driver bundles as TUF targets.

On disk a repository directory holds ``keys/`` (never served), ``metadata/``
and ``targets/`` (served as they are, by the server or any static mirror). It
uses consistent snapshots: every version of root, targets and snapshot has its
own file and bundles are stored under their digest, so a mirror can update
while clients read and a client never mixes versions.

Driver bundles live under ``drivers/<branch>/``, each branch delegated by the
top-level targets role to a role of its own (``R580``), so a team can publish
one branch with its own key and no power over the others. Besides bundles
(``drivers/<branch>/...``) it publishes the compatibility
catalog at ``catalog/catalog.json``, so agents get catalog corrections through
the same signed channel, never from an unsigned download, and the files the
server judges GPU attestation with (NVIDIA's RIMs and the OCSP responses for
their and the GPUs' certificates) under ``gpu-rims/``, so a mirror carries them
into an air gap and the server believes only what the targets key signed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuf.api.metadata import DelegatedRole, Delegations, Metadata, TargetFile, Targets

from fleet.catalog import MAX_CATALOG_BYTES, TARGET_PATH, load_catalog
from fleet.errors import GpuwardError
from fleet.gpu_attestation import GPU_RIM_TARGETS, gpu_rim_target
from fleet.manifest import BundleManifest, target_path
from keys import provenance
from keys.bundle import bundle_to_publish, sha256_file
from keys.durable_files import atomic_write, fsync_dir, read_bounded
from keys.keyring import Keyring, LocalKey, PassphraseSource
from keys.progress import SILENT, ByteProgress, copy_tracked
from keys.tuf_repo import TOP_LEVEL_ROLES, RoleSpec, TufRepository, load_expiry, save_expiry


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
    provenance: str | None = None  # its provenance's target path, where add_bundle published one


@dataclass(frozen=True)
class PublishedGpuFile:
    target_path: str
    sha256: str
    length: int
    changed: bool  # False: already published with these bytes


DEFAULT_SPECS = {"root": RoleSpec(2, 3)}


@dataclass(frozen=True)
class RootHolder:
    """One custodian of a root key: it is sealed with their passphrase and written
    to their folder (their own removable media) only, so a threshold of root keys
    needs that many people's folders and passphrases."""

    name: str
    folder: Path
    passphrase: str = field(repr=False)


class ImageRepository(TufRepository):
    def __init__(self, root: Path) -> None:
        super().__init__(root / "metadata", Keyring(root / "keys"), load_expiry(root))
        self.root = root
        self.targets_dir = root / "targets"
        self._root_holders: tuple[RootHolder, ...] = ()

    @classmethod
    def init(
        cls,
        root: Path,
        passphrase: str,
        specs: dict[str, RoleSpec] | None = None,
        expiry_days: dict[str, int] | None = None,
        root_holders: Sequence[RootHolder] = (),
    ) -> ImageRepository:
        """Generate keys and the first signed version of every role.

        ``passphrase`` seals the targets key, and the root keys too unless
        ``root_holders`` are given: then each root key goes to its own holder.
        """
        if (root / "keys").exists() and any((root / "keys").iterdir()):
            raise GpuwardError(f"{root} already holds keys; choose an empty directory")
        specs = {**DEFAULT_SPECS, **(specs or {})}
        if root_holders:
            _check_holders(root, root_holders, specs["root"].count)
        if expiry_days:
            save_expiry(root, expiry_days)
        repo = cls(root)
        repo._root_holders = tuple(root_holders)
        repo.create(specs, passphrase)
        repo._root_holders = ()
        repo.targets_dir.mkdir(parents=True, exist_ok=True)
        return repo

    def new_keys(
        self, role: str, count: int, passphrase: PassphraseSource, token: str | None = None
    ) -> list[LocalKey]:
        if role != "root" or not self._root_holders:
            return super().new_keys(role, count, passphrase, token)
        return [
            self.keyring.generate_held(f"root-{h.name}", h.folder, h.passphrase)
            for h in self._root_holders
        ]

    # -- reading -----------------------------------------------------------

    def branch_roles(self) -> list[str]:
        delegations = self.targets().signed.delegations
        if delegations is None or delegations.roles is None:
            return []
        return sorted(delegations.roles)

    def published(self) -> list[PublishedBundle]:
        out = []
        for role in self.branch_roles():
            for path, info in sorted(self.targets(role).signed.targets.items()):
                if path.endswith(provenance.SUFFIX):
                    continue  # a bundle's provenance, published beside it
                custom: Any = info.custom
                manifest = BundleManifest.from_dict(custom.get("manifest"), where=path)
                out.append(PublishedBundle(path, manifest, info.hashes["sha256"], info.length))
        return out

    # -- publishing --------------------------------------------------------

    def delegate_branch(
        self, branch: str, passphrase: PassphraseSource, spec: RoleSpec | None = None
    ) -> None:
        """Give ``branch`` its own role and keys: it alone may sign ``drivers/<branch>/*``."""
        targets_md = self.targets()
        if branch in self.branch_roles():
            raise GpuwardError(f"branch {branch} is already delegated")
        spec = spec or RoleSpec()
        keys = self.new_keys(branch, spec.count, passphrase)
        delegations = targets_md.signed.delegations or Delegations(keys={}, roles={})
        assert delegations.roles is not None  # path-based delegations, never succinct
        for key in keys:
            delegations.keys[key.keyid] = key.public_key
        delegations.roles[branch] = DelegatedRole(
            name=branch,
            keyids=[k.keyid for k in keys],
            threshold=spec.threshold,
            terminating=True,
            paths=[f"drivers/{branch}/*"],
        )
        targets_md.signed.delegations = delegations
        self.bump(targets_md, "targets")
        self.sign_and_write(targets_md, passphrase)
        branch_md = Metadata(Targets(expires=self.expires(branch)))
        self.sign_and_write(
            branch_md, passphrase, role=branch, authority=([k.keyid for k in keys], spec.threshold)
        )
        self.publish_snapshot({"targets": targets_md.signed.version, branch: 1})

    def rotate(
        self,
        role: str,
        passphrase: PassphraseSource,
        *,
        only: Sequence[str] = (),
        token: str | None = None,
    ) -> list[LocalKey]:
        """Rotate a top-level role, or a branch role through the targets delegation."""
        if role in TOP_LEVEL_ROLES:
            return super().rotate(role, passphrase, only=only, token=token)
        if role not in self.branch_roles():
            raise GpuwardError(
                f"no role {role!r}: rotate root, targets, snapshot, timestamp or a branch"
            )
        targets_md = self.targets()
        delegations = targets_md.signed.delegations
        assert delegations is not None and delegations.roles is not None
        delegated = delegations.roles[role]
        # The targets key delegates: it may replace branch keys it does not hold.
        old = self._replaced(role, delegated.keyids, only) if only else list(delegated.keyids)
        new = self.new_keys(role, len(old), passphrase, token)
        for keyid in old:
            delegations.keys.pop(keyid, None)
        for key in new:
            delegations.keys[key.keyid] = key.public_key
        delegated.keyids = [k for k in delegated.keyids if k not in old] + [k.keyid for k in new]
        branch_md = self.targets(role)
        self.bump(targets_md, "targets")
        self.sign_and_write(targets_md, passphrase)
        self.bump(branch_md, role)
        authority = ([k.keyid for k in new], delegated.threshold)
        self.sign_and_write(branch_md, passphrase, role=role, authority=authority)
        self.publish_snapshot(
            {"targets": targets_md.signed.version, role: branch_md.signed.version}
        )
        self.keyring.retire(old)
        return new

    def add_bundle(
        self, bundle: Path, passphrase: PassphraseSource, progress: ByteProgress = SILENT
    ) -> PublishedBundle:
        """Publish ``bundle`` in its branch role, delegating the branch on first use;
        refused, with the nodes' reason, if nodes would refuse to unpack it.
        ``progress`` follows the passes over its bytes: checking, hashing, storing."""
        manifest = bundle_to_publish(bundle, progress)
        path = target_path(manifest, bundle.name)
        length = bundle.stat().st_size
        progress.begin(f"hashing {bundle.name}", length)
        info = TargetFile(length, {"sha256": sha256_file(bundle, progress)}, path)
        info.unrecognized_fields["custom"] = {"manifest": manifest.to_dict()}
        if manifest.branch not in self.branch_roles():
            self.delegate_branch(manifest.branch, passphrase)

        branch_md = self.targets(manifest.branch)
        existing = branch_md.signed.targets.get(path)
        if existing is not None and existing.hashes != info.hashes:
            raise GpuwardError(
                f"{path} is already published with other content; published bundles "
                "never change: build it under a new file name"
            )
        attestation = _provenance_target(bundle, path, info.hashes["sha256"])
        progress.begin(f"storing {bundle.name}", length)
        self.store_target(bundle, path, info.hashes["sha256"], progress)
        branch_md.signed.targets[path] = info
        if attestation is not None:
            data, attestation_info = attestation
            atomic_write(
                self.target_file(attestation_info.path, attestation_info.hashes["sha256"]), data
            )
            branch_md.signed.targets[attestation_info.path] = attestation_info
        self.bump(branch_md, manifest.branch)
        self.sign_and_write(branch_md, passphrase, role=manifest.branch)
        self.publish_snapshot({manifest.branch: branch_md.signed.version})
        return PublishedBundle(
            path,
            manifest,
            info.hashes["sha256"],
            info.length,
            None if attestation is None else attestation[1].path,
        )

    def remove_bundle(self, path: str, passphrase: PassphraseSource) -> PublishedBundle:
        """Withdraw bundle ``path``: its branch role, re-signed, no longer lists it, so
        agents no longer see it. Its file stays in ``targets/``: an agent or mirror
        midway through the previous snapshot still finds what that snapshot names."""
        for published in self.published():
            if published.target_path == path:
                break
        else:
            raise GpuwardError(
                f"{path} is not a published bundle; 'gpuward repo list' shows the published ones"
            )
        branch = published.manifest.branch
        branch_md = self.targets(branch)
        del branch_md.signed.targets[path]
        branch_md.signed.targets.pop(path + provenance.SUFFIX, None)
        self.bump(branch_md, branch)
        self.sign_and_write(branch_md, passphrase, role=branch)
        self.publish_snapshot({branch: branch_md.signed.version})
        return published

    def add_catalog(self, catalog_file: Path, passphrase: PassphraseSource) -> PublishedCatalog:
        """Publish a compatibility catalog; its ``catalog_version`` must go up.

        The catalog is validated first: a broken one must never reach agents,
        who would reject it anyway and keep running on the old one.
        """
        data = read_bounded(catalog_file, MAX_CATALOG_BYTES, "catalog")
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
        atomic_write(self.target_file(TARGET_PATH, info.hashes["sha256"]), data)
        targets_md.signed.targets[TARGET_PATH] = info
        self.bump(targets_md, "targets")
        self.sign_and_write(targets_md, passphrase)
        self.publish_snapshot({"targets": targets_md.signed.version})
        return published

    def gpu_rim_targets(self) -> dict[str, TargetFile]:
        """The published RIMs and OCSP responses, by target path (unverified: the
        server checks them, ``server.gpu_rims``)."""
        listed = self.targets().signed.targets
        return {p: info for p, info in sorted(listed.items()) if p.startswith(GPU_RIM_TARGETS)}

    def add_gpu_rims(
        self, files: Sequence[tuple[str, bytes]], passphrase: PassphraseSource
    ) -> list[PublishedGpuFile]:
        """Publish RIMs (``*.swidtag``) and OCSP responses (``*.der``) in the targets
        role, each under its file name; a name published before is replaced (OCSP
        responses are refreshed under the same name). The caller has checked that
        each parses (``gpuward repo add-rims``); the server verifies them anyway."""
        targets_md = self.targets()
        published = []
        for name, data in files:
            path = gpu_rim_target(name)  # GpuwardError naming a bad file name
            info = TargetFile.from_data(path, data, ["sha256"])
            existing = targets_md.signed.targets.get(path)
            changed = existing is None or existing.hashes != info.hashes
            if changed:
                atomic_write(self.target_file(path, info.hashes["sha256"]), data)
                targets_md.signed.targets[path] = info
            published.append(PublishedGpuFile(path, info.hashes["sha256"], info.length, changed))
        if any(p.changed for p in published):
            self.bump(targets_md, "targets")
            self.sign_and_write(targets_md, passphrase)
            self.publish_snapshot({"targets": targets_md.signed.version})
        return published

    def target_file(self, path: str, sha256: str) -> Path:
        """Where target ``path`` is served from: consistent snapshots prefix the digest."""
        folder, name = path.rsplit("/", 1)
        return self.targets_dir / folder / f"{sha256}.{name}"

    def store_target(
        self, source: Path, path: str, sha256: str, progress: ByteProgress = SILENT
    ) -> None:
        dest = self.target_file(path, sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.partial")
        copy_tracked(source, tmp, progress)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.replace(dest)
        fsync_dir(dest.parent)


def _provenance_target(bundle: Path, path: str, sha256: str) -> tuple[bytes, TargetFile] | None:
    """The provenance ``bundle build`` wrote beside ``bundle`` (if any) and its target,
    published beside the bundle's; refused if it names another bundle. Its signature
    is the agents' to check against the build key they pin."""
    attestation = provenance.attestation_path(bundle)
    if not attestation.exists():
        return None
    data = read_bounded(attestation, provenance.MAX_ATTESTATION, "bundle provenance")
    subjects = provenance.subject_digests(data)
    if sha256 not in subjects:
        raise GpuwardError(
            f"{attestation} is the provenance of another bundle ({', '.join(subjects)[:80]}), "
            f"not of {bundle.name}: rebuild with 'gpuward bundle build --build-keys', or remove it"
        )
    return data, TargetFile.from_data(path + provenance.SUFFIX, data, ["sha256"])


def _check_holders(root: Path, holders: Sequence[RootHolder], count: int) -> None:
    """Each holder distinct in name, folder and passphrase, one per root key."""
    if len(holders) != count:
        raise GpuwardError(
            f"root has {count} keys but {len(holders)} holder(s) were named; name one per key"
        )
    folders = [h.folder.resolve() for h in holders]
    keys = (root / "keys").resolve()
    for holder, folder in zip(holders, folders, strict=True):
        if folder == keys or keys in folder.parents or folder in keys.parents:
            raise GpuwardError(
                f"root key holder {holder.name}: {holder.folder} overlaps the repository's "
                "keys; give the holder's own folder (their removable media)"
            )
        if folder.exists() and any(folder.iterdir()):
            raise GpuwardError(f"root key holder {holder.name}: {holder.folder} is not empty")
    for what, values in (
        ("name", [h.name for h in holders]),
        ("folder", folders),
        ("passphrase", [h.passphrase for h in holders]),
    ):
        if len(set(values)) != len(values):
            raise GpuwardError(
                f"two root key holders share a {what}: each root key must be a separate secret"
            )
