"""Air-gapped sites: fresh metadata inside, signed by keys the site holds.

Timestamps expire within a day so that a frozen mirror is noticed; a site that
receives exports on removable media every few weeks cannot rely on the
upstream server re-signing them. Instead the site creates its own online keys
for the timestamp and snapshot roles, the upstream root holders add them to
those roles with an ordinary root ceremony (same thresholds: either the
upstream key or the site key may sign), and from then on the site's server
renews timestamp and snapshot itself, exactly as the upstream server does.

Nothing else changes trust: a site key cannot sign targets, so it cannot make
an agent install a bundle the offline keys did not sign, and agents still
refuse any metadata past its expiry. Root, targets and branch roles are only
signed offline upstream; an export whose copies of those have expired is
refused at import, because no site can renew them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from securesystemslib.signer import SSlibKey
from tuf.api.metadata import Metadata, MetaFile, Root

from fleet.errors import GpuwardError
from keys.ceremony import Staged
from keys.durable_files import read_bounded
from keys.image_repo import ImageRepository
from keys.keyring import Keyring
from keys.tuf_repo import ONLINE_ROLES, TufRepository, no_passphrase

FORMAT = "gpuward-site-keys/1"
MAX_SITE_KEYS_BYTES = 64 * 1024


@dataclass(frozen=True)
class SiteKeys:
    """The public halves of a site's online keys, by role: carried out of the site."""

    site: str
    keys: dict[str, SSlibKey]  # role -> key

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT,
            "site": self.site,
            "keys": {
                role: {**key.to_dict(), "keyid": key.keyid} for role, key in self.keys.items()
            },
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode()

    @classmethod
    def read(cls, path: Path) -> SiteKeys:
        raw = read_bounded(path, MAX_SITE_KEYS_BYTES, "site keys file")
        try:
            doc = json.loads(raw)
            if doc["format"] != FORMAT:
                raise ValueError("unknown format")
            keys = {}
            for role, key_doc in doc["keys"].items():
                if role not in ONLINE_ROLES:
                    raise ValueError(f"{role} is not an online role")
                fields = dict(key_doc)
                keys[role] = SSlibKey.from_dict(fields.pop("keyid"), fields)
            if set(keys) != ONLINE_ROLES:
                raise ValueError("a key for each of timestamp and snapshot is needed")
            return cls(str(doc["site"]), keys)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise GpuwardError(f"{path}: not a gpuward site keys file ({exc})") from None


def create_site_keys(repo_root: Path, site: str) -> SiteKeys:
    """New online keys for timestamp and snapshot in the site's repository ``keys/``."""
    repo = ImageRepository(repo_root)
    created = {}
    for role in sorted(ONLINE_ROLES):
        created[role] = repo.keyring.generate(f"site-{site}-{role}", passphrase=None).public_key
    return SiteKeys(site, created)


def stage_site_keys(repo: ImageRepository, site: SiteKeys) -> Staged:
    """The next root, unsigned, with the site's keys added to timestamp and snapshot.

    Thresholds stay as they are, so the upstream server keeps signing alone and
    so does the site; the root keys' holders sign the staged file as for any
    root change (``gpuward keys sign``, then ``gpuward repo publish``).
    """
    md: Metadata[Root] = repo.root_metadata()
    for role, key in site.keys.items():
        if key.keyid in md.signed.roles[role].keyids:
            raise GpuwardError(f"site {site.site}'s {role} key is already trusted")
        md.signed.add_key(key, role)
    return _staged_root(repo, md)


def stage_site_removal(repo: ImageRepository, site: SiteKeys) -> Staged:
    """The next root, unsigned, without the site's keys: its server can no longer
    renew what its agents accept (signed as ``stage_site_keys``'s root is)."""
    md: Metadata[Root] = repo.root_metadata()
    for role, key in site.keys.items():
        roles = md.signed.roles[role]
        if key.keyid not in roles.keyids:
            raise GpuwardError(f"site {site.site}'s {role} key is not trusted; nothing to remove")
        if len(roles.keyids) <= roles.threshold:
            raise GpuwardError(
                f"removing site {site.site}'s {role} key would leave {role} fewer keys than "
                "its threshold; rotate the upstream key first ('gpuward keys rotate')"
            )
        md.signed.revoke_key(key.keyid, role)
    return _staged_root(repo, md)


def _staged_root(repo: ImageRepository, md: Metadata[Root]) -> Staged:
    repo.bump(md, "root")
    md.signatures.clear()
    keyids, threshold = repo.role_keys("root")
    return Staged("root", md, tuple(keyids), threshold)


def site_signs(root: Root, keyring: Keyring) -> bool:
    """True when ``keyring`` may sign both online roles under ``root``."""
    local = keyring.keys()
    return all(
        sum(1 for k in root.roles[role].keyids if k in local) >= root.roles[role].threshold
        for role in ONLINE_ROLES
    )


@dataclass(frozen=True)
class Versions:
    """Where a repository's online roles stand: the next ones must go higher."""

    snapshot: int
    timestamp: int

    @classmethod
    def of(cls, repo: TufRepository) -> Versions | None:
        if not (repo.metadata_dir / "timestamp.json").exists():
            return None
        timestamp = repo.timestamp().signed
        return cls(timestamp.snapshot_meta.version, timestamp.version)


def check_offline_expiry(repo: ImageRepository, now: datetime) -> None:
    """Refuse an import whose offline-signed roles (which no site can renew) expired."""
    roles: list[tuple[str, Metadata[Any]]] = [
        ("root", repo.root_metadata()),
        ("targets", repo.targets()),
    ]
    roles += [(branch, repo.targets(branch)) for branch in repo.branch_roles()]
    for role, md in roles:
        if md.signed.is_expired(now):
            raise GpuwardError(
                f"the export's {role} metadata expired at {md.signed.expires.isoformat()}; "
                "ask upstream to re-sign it offline and export again"
            )


def check_not_older(inside: ImageRepository, exported: ImageRepository) -> None:
    """Refuse an export that would take a role back to an older version than the site
    serves: agents that saw the newer one would refuse it, new agents would not."""
    if Versions.of(inside) is None:
        return
    served = inside.snapshot().signed.meta
    for name, meta in exported.snapshot().signed.meta.items():
        current = served.get(name)
        if current is not None and meta.version < current.version:
            raise GpuwardError(
                f"the export's {name.removesuffix('.json')} is version {meta.version}, older "
                f"than the {current.version} this site serves: import the newest export"
            )


def refresh(repo: TufRepository, before: Versions | None) -> Versions:
    """Re-sign snapshot and timestamp with the site's keys, above every version an
    agent may have seen from this site (``before``) or from the export."""
    imported = Versions.of(repo)
    if imported is None:
        raise GpuwardError(f"{repo.metadata_dir} has no timestamp: import an export first")
    floor = imported if before is None else before
    snapshot_md = repo.snapshot()
    snapshot_md.signed.version = max(floor.snapshot, imported.snapshot) + 1
    snapshot_md.signed.expires = repo.expires("snapshot")
    repo.sign_and_write(snapshot_md, no_passphrase)
    timestamp_md = repo.timestamp()
    timestamp_md.signed.version = max(floor.timestamp, imported.timestamp) + 1
    timestamp_md.signed.snapshot_meta = MetaFile(snapshot_md.signed.version)
    timestamp_md.signed.expires = repo.expires("timestamp")
    repo.sign_and_write(timestamp_md, no_passphrase)
    return Versions(snapshot_md.signed.version, timestamp_md.signed.version)


def check_online_expiry(repo: ImageRepository, now: datetime) -> None:
    """Without site keys, an export whose timestamp or snapshot expired is useless."""
    for role, md in (("timestamp", repo.timestamp()), ("snapshot", repo.snapshot())):
        if md.signed.is_expired(now):
            raise GpuwardError(
                f"the export's {role} expired at {md.signed.expires.isoformat()}; export "
                "again, or let this site sign its own (README: Air-gapped sites)"
            )
