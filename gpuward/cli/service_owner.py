"""Root writing a service's files writes them as the service.

The README's set-up runs some commands as root that create files a service
reads and writes later: ``gpuward agent enroll`` writes the node's key into the
agent's state folder (the agent runs as ``gpuward``), ``gpuward server token
create`` opens the server's SQLite database (the server runs as
``gpuward-server``). Created by root, those files are root's (a 0600 key, a
database and its -wal/-shm), and the service then fails on them.

So, when the effective uid is 0 and the folder a command writes into belongs
to another account, the command becomes that account before it writes
(``setgroups`` to its groups, ``setgid``, ``setuid``: irreversible for the
process, so it happens after the command has read what only root may read,
such as the config and the enrollment token). Every file it creates is then
the service's, made exactly as the service would make it (its TPM access too).
Where the folder does not exist yet, or is root's, nothing changes: the
packages create both folders for their accounts, and systemd hands a unit's
root-owned ``StateDirectory`` to its user when it starts.

A file the command would reuse that already belongs to someone else (a key or
database an earlier run as root left behind) is refused with the ``chown``
that fixes it, rather than failing later inside the service.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from fleet.errors import GpuwardError

log = structlog.get_logger(__name__)

# What --help says about it, for every command that applies it.
ROOT_NOTE = (
    "Run as root, it reads its inputs (config, token) as root, then writes as the account "
    "that owns {folder} (the service's, once the packages are installed), so the service "
    "can use what it creates; a file there that belongs to another account is refused "
    "with the chown that fixes it."
)

# The service's own UMask= is at least this strict; never looser than the caller's.
SERVICE_UMASK = 0o027


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def folder_owner(folder: Path) -> Account | None:
    """The account other than root that owns ``folder``; None if root owns it or it is missing."""
    try:
        uid = folder.stat().st_uid
    except FileNotFoundError:
        return None
    if uid == 0:
        return None
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise GpuwardError(
            f"{folder} belongs to uid {uid}, which has no account; give it to the service's "
            f"account (chown) or to root, then run again"
        ) from None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def become_folder_owner(folder: Path, reused: Sequence[Path] = ()) -> Account | None:
    """When running as root, become the account owning ``folder`` for good.

    ``reused`` are the files in it the command opens if they exist; each must
    already belong to that account. Returns the account become, or None where
    nothing changed (not root, or ``folder`` is root's or missing).
    """
    if os.geteuid() != 0:
        return None
    account = folder_owner(folder)
    if account is None:
        return None
    foreign = {path: uid for path in reused if (uid := _owner(path)) not in (None, account.uid)}
    if foreign:
        listed = " ".join(map(str, foreign))
        whose = " and ".join(sorted({f"{_name(uid)}'s" for uid in foreign.values()}))
        raise GpuwardError(
            f"{folder} is {account.name}'s, for its service, but {listed} "
            f"{'is' if len(foreign) == 1 else 'are'} {whose}: "
            f"run 'chown {account.name}: {listed}', then run again"
        )
    os.setgroups(os.getgrouplist(account.name, account.gid))
    os.setgid(account.gid)
    os.setuid(account.uid)
    os.umask(os.umask(0) | SERVICE_UMASK)
    log.info("running_as_service_account", account=account.name, folder=str(folder))
    return account


def _owner(path: Path) -> int | None:
    try:
        return path.lstat().st_uid
    except FileNotFoundError:
        return None


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
