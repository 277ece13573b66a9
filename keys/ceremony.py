"""Offline signing: stage on the online side, sign where the keys live, publish.

Offline keys should never touch a networked machine. The repository holder
stages the next version of a role into a file; each key holder signs that file
on an offline machine (``gpuward keys sign``); the holder publishes it once the
signatures reach the threshold the trusted metadata demands. The staged file
also says which keys may sign, so a signer does not need the repository, but
``publish`` checks against the repository's own metadata, never the file's word.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, TargetFile, Targets
from tuf.api.serialization import DeserializationError

from fleet.errors import GpuwardError
from keys.bundle import bundle_to_publish
from keys.durable_files import atomic_write, read_bounded
from keys.image_repo import ImageRepository
from keys.keyring import Keyring, PassphraseSource

FORMAT = "gpuward-staged/1"
MAX_STAGED = 5 * 1024 * 1024


@dataclass(frozen=True)
class Staged:
    role: str
    metadata: Metadata[Any]
    keyids: tuple[str, ...]  # who may sign, as the stager saw it (informational)
    threshold: int

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT,
            "role": self.role,
            "keyids": list(self.keyids),
            "threshold": self.threshold,
            "metadata": self.metadata.to_dict(),
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode()

    @classmethod
    def read(cls, path: Path) -> Staged:
        raw = read_bounded(path, MAX_STAGED, "staged metadata file")
        try:
            doc = json.loads(raw)
            if doc["format"] != FORMAT:
                raise ValueError("unknown format")
            metadata: Metadata[Any] = Metadata.from_dict(doc["metadata"])
            return cls(
                str(doc["role"]), metadata, tuple(map(str, doc["keyids"])), int(doc["threshold"])
            )
        except (ValueError, KeyError, TypeError, DeserializationError) as exc:
            raise GpuwardError(f"{path}: not a gpuward staged metadata file ({exc})") from None


def stage(repo: ImageRepository, role: str, *, add_bundle: Path | None = None) -> Staged:
    """The next version of ``role``, unsigned: renewed, or with ``add_bundle`` added."""
    md: Metadata[Any] = repo.root_metadata() if role == "root" else repo.targets(role)
    if add_bundle is not None:
        if not isinstance(md.signed, Targets) or role == "targets":
            raise GpuwardError("bundles are added to a branch role, e.g. R580")
        manifest = bundle_to_publish(add_bundle)
        if manifest.branch != role:
            raise GpuwardError(f"{add_bundle} belongs to {manifest.branch}, not {role}")
        path = f"drivers/{role}/{add_bundle.name}"
        info = TargetFile.from_file(path, str(add_bundle), ["sha256"])
        info.unrecognized_fields["custom"] = {"manifest": manifest.to_dict()}
        md.signed.targets[path] = info
        repo.store_target(add_bundle, path, info.hashes["sha256"])
    repo.bump(md, role)
    md.signatures.clear()
    keyids, threshold = repo.role_keys(role)
    return Staged(role, md, tuple(keyids), threshold)


def sign(staged: Staged, keyring: Keyring, passphrase: PassphraseSource) -> list[str]:
    """Add a signature from every key in ``keyring`` the staged role allows."""
    local = keyring.keys()
    mine = [local[k] for k in staged.keyids if k in local]
    if not mine:
        raise GpuwardError(
            f"none of the keys in {keyring.dir} may sign {staged.role}; "
            "check that you hold one of its keys"
        )
    signers: list[Signer] = [keyring.signer(k, passphrase) for k in mine]
    for signer in signers:
        staged.metadata.sign(signer, append=True)
    return [k.name for k in mine]


def publish(repo: ImageRepository, staged: Staged) -> None:
    """Publish ``staged`` if its signatures meet the threshold the repository trusts."""
    md = staged.metadata
    current_version = (
        repo.root_metadata().signed.version
        if staged.role == "root"
        else repo.targets(staged.role).signed.version
    )
    if md.signed.version != current_version + 1:
        raise GpuwardError(
            f"staged {staged.role} is version {md.signed.version} but the repository is at "
            f"{current_version}: stage again from the current metadata"
        )
    try:
        if staged.role == "root":
            # Both the trusted root and the new one must accept it.
            repo.root_metadata().signed.verify_delegate("root", md.signed_bytes, md.signatures)
            md.signed.verify_delegate("root", md.signed_bytes, md.signatures)
        elif staged.role == "targets":
            repo.root_metadata().signed.verify_delegate("targets", md.signed_bytes, md.signatures)
        else:
            repo.targets().signed.verify_delegate(staged.role, md.signed_bytes, md.signatures)
    except UnsignedMetadataError as exc:
        raise GpuwardError(f"not enough valid signatures to publish {staged.role}: {exc}") from None
    repo.write(md, staged.role)
    if not isinstance(md.signed, Root):
        repo.publish_snapshot({staged.role: md.signed.version})


def write_staged(staged: Staged, path: Path) -> None:
    atomic_write(path, staged.to_bytes())
