"""The server's part of the repositories: what the online server needs, no more.

The operator's workstation holds every key. The server holds only the keys it
signs with unattended: the image repository's snapshot and timestamp keys, the
director's targets, snapshot and timestamp keys (the director's root, like the
image repository's root, targets and branch keys, stays offline), and its own
report key, which it makes at first start. Whoever takes the server can then
re-sign what it already serves, and freeze it, but never make a node install a
bundle the offline keys did not sign.

``export`` writes that part: ``OUT/repo`` (metadata, targets, the expiry
settings, the online keys and a report key if the repository has one) and
``OUT/director`` (metadata, every node's metadata, the online keys). A key is
written only if every role trusting it is online and it is not sealed; the
export is refused unless it holds enough keys for each online role's threshold,
since a server without them cannot keep its metadata fresh. The tree is built
in a temporary folder beside OUT and moved into place whole.

Run as root into a folder a service account owns (``/var/lib/gpuward-server``),
the tree is given to that account, so the server can read and re-sign it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from securesystemslib.signer import CryptoSigner

from fleet.errors import GpuwardError
from keys.director_repo import DirectorRepository
from keys.image_repo import ImageRepository
from keys.keyring import Keyring, LocalKey
from keys.report_key import default_path, public_path
from keys.sealed import SealedFileSigner
from keys.tuf_repo import EXPIRY_FILE, TOP_LEVEL_ROLES, TufRepository


@dataclass(frozen=True)
class ExportedPart:
    keys: tuple[str, ...]  # the private keys written, as "repo/NAME" or "director/NAME"
    owner: tuple[int, int] | None  # (uid, gid) the tree was given, when run as root


def online_keys(repo: TufRepository) -> list[LocalKey]:
    """The keys of ``repo``'s keyring that only its online roles trust, unsealed.

    Refuses a keyring holding fewer of them than an online role's threshold.
    """
    root = repo.root_metadata().signed
    roles = {
        role: (root.roles[role].keyids, root.roles[role].threshold) for role in TOP_LEVEL_ROLES
    }
    delegations = repo.targets().signed.delegations
    if delegations is not None and delegations.roles is not None:
        roles |= {name: (d.keyids, d.threshold) for name, d in delegations.roles.items()}
    offline = {k for role, (ids, _t) in roles.items() if role not in repo.online_roles for k in ids}
    online = {k for role in repo.online_roles for k in roles[role][0]}
    sealed_uri = f"{SealedFileSigner.SCHEME}:"
    held = {
        keyid: key
        for keyid, key in repo.keyring.keys().items()
        if keyid in online and keyid not in offline and not key.uri.startswith(sealed_uri)
    }
    for role in sorted(repo.online_roles):
        keyids, threshold = roles[role]
        have = sum(1 for k in keyids if k in held)
        if have < threshold:
            raise GpuwardError(
                f"{repo.keyring.dir} holds {have} of the {threshold} {role} key(s) a server "
                f"signs with; export from the repository that holds the online keys"
            )
    return sorted(held.values(), key=lambda k: k.name)


def export(repo: Path, out: Path, director: Path | None = None) -> ExportedPart:
    """Write the server's part of ``repo`` (and ``director``) into ``out``, a new
    or empty folder."""
    image = ImageRepository(repo)
    sources: list[tuple[str, Path, TufRepository, tuple[str, ...]]] = [
        ("repo", repo, image, ("metadata", "targets"))
    ]
    if director is not None:
        sources.append(
            ("director", director, DirectorRepository(director).base, ("metadata", "nodes"))
        )
    chosen = {name: online_keys(tuf) for name, _root, tuf, _folders in sources}
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GpuwardError(f"{out} is not empty; export into a new or empty folder")
    parent = out if out.is_dir() else out.parent
    if not parent.is_dir():
        raise GpuwardError(f"{parent} is not a folder; create it first")
    owner = _service_owner(parent)
    staging = Path(tempfile.mkdtemp(prefix=".gpuward-export-", dir=parent))
    try:
        written: list[str] = []
        for name, root, tuf, folders in sources:
            dest = staging / name
            for folder in folders:
                if (root / folder).is_dir():
                    shutil.copytree(root / folder, dest / folder, ignore=_hidden)
            if (root / EXPIRY_FILE).is_file():
                shutil.copyfile(root / EXPIRY_FILE, dest / EXPIRY_FILE)
            keys_dir = dest / "keys"
            keys_dir.mkdir(mode=0o700)
            for key in chosen[name]:
                written += [f"{name}/{n}" for n in _copy_key(tuf.keyring, key, keys_dir)]
        _copy_report_key(repo, staging / "repo" / "keys")
        if owner is not None:
            _chown_tree(staging, owner)
        os.sync()  # the files, before the folder that names them appears
        _move_into(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportedPart(tuple(written), owner)


def _hidden(_folder: str, names: list[str]) -> list[str]:
    """Temporary files (``.NAME.tmp``, ``.NAME.partial``) are no part of a repository."""
    return [n for n in names if n.startswith(".")]


def _copy_key(keyring: Keyring, key: LocalKey, keys_dir: Path) -> list[str]:
    """The key's description, and its private file when it has one here."""
    shutil.copyfile(keyring.dir / f"{key.name}.pub.json", keys_dir / f"{key.name}.pub.json")
    if not key.uri.startswith(f"{CryptoSigner.SCHEME}:"):
        return []  # reached through its signer URI (an HSM): nothing private to copy
    source = keyring.dir / key.uri.split(":", 1)[1]
    _copy_private(source, keys_dir / source.name)
    return [key.name]


def _copy_report_key(repo: Path, keys_dir: Path) -> None:
    """The server's report key, if this repository has served before: auditors
    already hold its public half."""
    private = default_path(repo)
    if private.is_file():
        _copy_private(private, keys_dir / private.name)
        shutil.copyfile(public_path(private), keys_dir / public_path(private).name)


def _copy_private(source: Path, dest: Path) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(source.read_bytes())


def _service_owner(folder: Path) -> tuple[int, int] | None:
    """Who the tree goes to: the owner of the folder it lands in, when root runs
    this for a service account; None otherwise (the files stay the caller's)."""
    if os.geteuid() != 0:
        return None
    stat = folder.stat()
    return None if stat.st_uid == 0 else (stat.st_uid, stat.st_gid)


def _chown_tree(root: Path, owner: tuple[int, int]) -> None:
    uid, gid = owner
    os.chown(root, uid, gid, follow_symlinks=False)
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            os.chown(Path(folder) / name, uid, gid, follow_symlinks=False)


def _move_into(staging: Path, out: Path) -> None:
    if not out.exists():
        staging.rename(out)
        return
    for child in staging.iterdir():
        child.rename(out / child.name)
    staging.rmdir()
