"""One TUF repository on disk, signed with thresholds of local keys.

The image repository and the director's per-node repositories are both this:
a ``metadata/`` folder with consistent snapshots (every version of root,
targets, delegated roles and snapshot in its own file; ``timestamp.json``
unversioned), signed by the keys of a ``Keyring`` in the quantities the root
metadata demands. What differs between them (bundles and delegations; per-node
assignments) lives in their own modules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from fleet.errors import GpuwardError
from keys import hsm
from keys.durable_files import atomic_write
from keys.keyring import Keyring, LocalKey, PassphraseSource

TOP_LEVEL_ROLES = ("root", "targets", "snapshot", "timestamp")
ONLINE_ROLES = frozenset({"snapshot", "timestamp"})
DEFAULT_EXPIRY = {
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    "delegated": timedelta(days=90),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}
T = TypeVar("T", Root, Targets, Snapshot, Timestamp)
_SPEC = re.compile(r"([1-9][0-9]?)/([1-9][0-9]?)")


@dataclass(frozen=True)
class RoleSpec:
    """How many keys a role has and how many must sign: ``threshold`` of ``count``."""

    threshold: int = 1
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.threshold <= self.count <= 16:
            raise GpuwardError(f"a role needs 1 <= threshold <= keys <= 16, got {self}")

    @classmethod
    def parse(cls, text: str) -> RoleSpec:
        match = _SPEC.fullmatch(text)
        if match is None:
            raise GpuwardError(f"invalid threshold {text!r}: write THRESHOLD/KEYS, e.g. 2/3")
        return cls(int(match.group(1)), int(match.group(2)))


EXPIRY_FILE = "expiry.json"


def load_expiry(root: Path) -> dict[str, timedelta]:
    """The validity periods a repository directory chose at creation (days per role)."""
    path = root / EXPIRY_FILE
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise GpuwardError(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or not all(
        k in DEFAULT_EXPIRY and isinstance(v, int) and 1 <= v <= 3650 for k, v in doc.items()
    ):
        raise GpuwardError(f'{path}: expected days per role, e.g. {{"timestamp": 1}}')
    return {role: timedelta(days=days) for role, days in doc.items()}


def save_expiry(root: Path, days: dict[str, int]) -> None:
    for role, value in days.items():
        if role not in DEFAULT_EXPIRY or not 1 <= value <= 3650:
            raise GpuwardError(
                f"expiry for {role!r}: give days (1-3650) for one of {', '.join(DEFAULT_EXPIRY)}"
            )
    atomic_write(root / EXPIRY_FILE, json.dumps(days, indent=2).encode())


def no_passphrase() -> str:
    raise GpuwardError("an offline key was needed where only online keys should sign")


class TufRepository:
    # Roles whose keys sign unattended on the server; all others are sealed.
    online_roles: frozenset[str] = ONLINE_ROLES

    def __init__(
        self, metadata_dir: Path, keyring: Keyring, expiry: dict[str, timedelta] | None = None
    ) -> None:
        self.metadata_dir = metadata_dir
        self.keyring = keyring
        self.expiry = {**DEFAULT_EXPIRY, **(expiry or {})}

    def expires(self, role: str) -> datetime:
        kind = role if role in DEFAULT_EXPIRY else "delegated"
        return datetime.now(UTC).replace(microsecond=0) + self.expiry[kind]

    # -- creation ---------------------------------------------------------

    def create(self, specs: dict[str, RoleSpec], passphrase: str) -> None:
        """Generate keys for every top-level role and sign their first versions."""
        if (self.metadata_dir / "root.json").exists():
            raise GpuwardError(f"{self.metadata_dir} already holds a repository")
        root = Root(expires=self.expires("root"), consistent_snapshot=True)

        def secret() -> str:
            return passphrase

        for role in TOP_LEVEL_ROLES:
            spec = specs.get(role, RoleSpec())
            for key in self.new_keys(role, spec.count, secret):
                root.add_key(key.public_key, role)
            root.roles[role].threshold = spec.threshold

        root_spec = root.roles["root"]
        self.sign_and_write(
            Metadata(root), secret, authority=(list(root_spec.keyids), root_spec.threshold)
        )
        self.start_from_root(secret)

    def start_from_root(self, passphrase: PassphraseSource) -> None:
        """The first targets, snapshot and timestamp under the root already written."""
        self.sign_and_write(Metadata(Targets(expires=self.expires("targets"))), passphrase)
        self.sign_and_write(Metadata(Snapshot(expires=self.expires("snapshot"))), passphrase)
        self.sign_and_write(Metadata(Timestamp(expires=self.expires("timestamp"))), passphrase)

    def new_keys(
        self, role: str, count: int, passphrase: PassphraseSource, token: str | None = None
    ) -> list[LocalKey]:
        """``count`` new keys for ``role`` named ``ROLE-N``: sealed files (plain ones
        for online roles), or made inside PKCS#11 ``token``."""
        online = role in self.online_roles
        if token is not None and online:
            raise GpuwardError(
                f"{role} keys sign unattended on the server; only offline roles' keys "
                "(root, targets, branches) go in a token"
            )
        taken = {p.name.split(".")[0] for p in self.keyring.dir.rglob("*.pub.json")}
        if token is not None:  # a token several repositories share keeps names unique too
            taken |= hsm.key_labels(token, self.keyring.pin(token))
        keys: list[LocalKey] = []
        n = 1
        while len(keys) < count:
            name = f"{role}-{n}"
            n += 1
            if name in taken:
                continue
            if token is not None:
                keys.append(self.keyring.generate_in_token(name, token))
            else:
                keys.append(
                    self.keyring.generate(name, passphrase=None if online else passphrase())
                )
        return keys

    # -- reading ----------------------------------------------------------

    def load(self, filename: str, kind: type[T]) -> Metadata[T]:
        path = self.metadata_dir / filename
        try:
            md: Metadata[Any] = Metadata.from_bytes(path.read_bytes())
        except FileNotFoundError:
            raise GpuwardError(
                f"{self.metadata_dir} is not a gpuward repository ({filename} missing); "
                "run 'gpuward keys init' first"
            ) from None
        except DeserializationError as exc:
            raise GpuwardError(f"{path}: corrupt metadata ({exc})") from None
        if not isinstance(md.signed, kind):
            raise GpuwardError(f"{path}: expected {kind.type} metadata")
        return md

    def root_metadata(self) -> Metadata[Root]:
        return self.load("root.json", Root)

    def timestamp(self) -> Metadata[Timestamp]:
        return self.load("timestamp.json", Timestamp)

    def snapshot(self) -> Metadata[Snapshot]:
        version = self.timestamp().signed.snapshot_meta.version
        return self.load(f"{version}.snapshot.json", Snapshot)

    def targets(self, role: str = "targets") -> Metadata[Targets]:
        meta = self.snapshot().signed.meta.get(f"{role}.json")
        if meta is None:
            raise GpuwardError(f"role {role} is not in the snapshot")
        return self.load(f"{meta.version}.{role}.json", Targets)

    def role_keys(self, role: str) -> tuple[list[str], int]:
        """The keyids allowed to sign ``role`` and how many must."""
        if role in TOP_LEVEL_ROLES:
            spec = self.root_metadata().signed.roles[role]
            return list(spec.keyids), spec.threshold
        delegations = self.targets().signed.delegations
        if delegations is None or delegations.roles is None or role not in delegations.roles:
            raise GpuwardError(f"no role {role!r} is delegated in this repository")
        delegated = delegations.roles[role]
        return list(delegated.keyids), delegated.threshold

    # -- signing ----------------------------------------------------------

    def sign_and_write(
        self,
        md: Metadata[Any],
        passphrase: PassphraseSource,
        *,
        role: str | None = None,
        authority: tuple[list[str], int] | None = None,
    ) -> None:
        """Sign ``md`` with a threshold of local keys and write it.

        ``authority`` (keyids, threshold) stands in for the published metadata
        when that does not name the role's keys yet (a first root, a new
        delegation).
        """
        role = role or md.signed.type
        keyids, threshold = authority or self.role_keys(role)
        md.signatures.clear()
        for signer in self.keyring.signers(role, keyids, threshold, passphrase):
            md.sign(signer, append=True)
        self.write(md, role)

    def write(self, md: Metadata[Any], role: str) -> None:
        data = md.to_bytes(JSONSerializer(compact=False))
        if role == Timestamp.type:
            atomic_write(self.metadata_dir / "timestamp.json", data)
            return
        atomic_write(self.metadata_dir / f"{md.signed.version}.{role}.json", data)
        if role == Root.type:
            atomic_write(self.metadata_dir / "root.json", data)

    def bump(self, md: Metadata[Any], role: str) -> None:
        md.signed.version += 1
        md.signed.expires = self.expires(role)

    def publish_snapshot(self, changed: dict[str, int]) -> None:
        """A new snapshot naming the changed roles' versions, then a timestamp for it."""
        snapshot_md = self.snapshot()
        self.bump(snapshot_md, "snapshot")
        for role, version in changed.items():
            snapshot_md.signed.meta[f"{role}.json"] = MetaFile(version)
        self.sign_and_write(snapshot_md, no_passphrase)
        self.sign_timestamp(snapshot_version=snapshot_md.signed.version)

    def sign_timestamp(
        self, *, snapshot_version: int | None = None, expires: datetime | None = None
    ) -> Metadata[Timestamp]:
        """Sign the next timestamp; it expires soonest, so the server re-signs it often."""
        timestamp_md = self.timestamp()
        self.bump(timestamp_md, "timestamp")
        if snapshot_version is not None:
            timestamp_md.signed.snapshot_meta = MetaFile(snapshot_version)
        if expires is not None:
            timestamp_md.signed.expires = expires
        self.sign_and_write(timestamp_md, no_passphrase)
        return timestamp_md

    # -- rotation ---------------------------------------------------------

    def rotate(
        self,
        role: str,
        passphrase: PassphraseSource,
        *,
        only: Sequence[str] = (),
        token: str | None = None,
    ) -> list[LocalKey]:
        """Replace the keys of a top-level ``role`` this repository holds (or, with
        ``only``, those of them so named) with new ones, same threshold; in PKCS#11
        ``token`` if one is given. Keys held elsewhere stay: an air-gapped site's
        timestamp and snapshot keys (``keys.site``) survive a rotation of the
        upstream's own.
        """
        if role not in TOP_LEVEL_ROLES:
            raise GpuwardError(f"{role} is not a top-level role")
        root_md = self.root_metadata()
        old_keyids = self._replaced(role, list(root_md.signed.roles[role].keyids), only)
        old_root_signers = self._root_signers(root_md, passphrase)
        new = self.new_keys(role, len(old_keyids), passphrase, token)
        for keyid in old_keyids:
            root_md.signed.revoke_key(keyid, role)
        for key in new:
            root_md.signed.add_key(key.public_key, role)
        self._sign_next_root(root_md, old_root_signers, passphrase)
        self.keyring.retire(old_keyids)
        if role == "targets":
            targets_md = self.targets()
            self.bump(targets_md, "targets")
            self.sign_and_write(targets_md, passphrase)
            self.publish_snapshot({"targets": targets_md.signed.version})
        elif role in self.online_roles:
            self.publish_snapshot({})
        return new

    def _replaced(self, role: str, keyids: list[str], only: Sequence[str]) -> list[str]:
        """The keyids of ``role`` a rotation replaces: those held here, or of them
        the ones named in ``only``."""
        held = self.keyring.keys()
        mine = [k for k in keyids if k in held]
        if not mine:
            raise GpuwardError(
                f"this repository holds no {role} key; rotate it where its keys are held"
            )
        if not only:
            return mine
        names = {held[k].name: k for k in mine}
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise GpuwardError(
                f"{', '.join(unknown)}: not a {role} key held here (its keys here: "
                f"{', '.join(sorted(names))})"
            )
        return [names[name] for name in only]

    def add_key(
        self, role: str, passphrase: PassphraseSource, token: str, threshold: int | None = None
    ) -> LocalKey:
        """One more key for offline top-level ``role``, made inside PKCS#11 ``token``,
        in a new root; ``threshold`` sets the role's threshold at the same time."""
        if role not in ("root", "targets"):
            raise GpuwardError(f"keys are added to root or targets, not {role!r}")
        root_md = self.root_metadata()
        spec = root_md.signed.roles[role]
        if threshold is not None and not 1 <= threshold <= len(spec.keyids) + 1:
            raise GpuwardError(
                f"{role} will have {len(spec.keyids) + 1} keys: its threshold must be 1 to "
                f"{len(spec.keyids) + 1}, not {threshold}"
            )
        old_root_signers = self._root_signers(root_md, passphrase)
        [key] = self.new_keys(role, 1, passphrase, token)
        root_md.signed.add_key(key.public_key, role)
        if threshold is not None:
            spec.threshold = threshold
        self._sign_next_root(root_md, old_root_signers, passphrase)
        return key

    def _root_signers(self, root_md: Metadata[Root], passphrase: PassphraseSource) -> list[Signer]:
        """A threshold of the current root's keys: they must sign the next root."""
        spec = root_md.signed.roles["root"]
        return self.keyring.signers("root", spec.keyids, spec.threshold, passphrase)

    def _sign_next_root(
        self, root_md: Metadata[Root], old_signers: list[Signer], passphrase: PassphraseSource
    ) -> None:
        """Write ``root_md`` (changed) as the next root version, signed by a threshold
        of the previous root's keys and of its own, so clients holding any earlier
        root can follow the chain."""
        self.bump(root_md, "root")
        root_md.signatures.clear()
        for signer in [*old_signers, *self._root_signers(root_md, passphrase)]:
            if signer.public_key.keyid not in root_md.signatures:
                root_md.sign(signer, append=True)
        self.write(root_md, "root")
