"""Writing a hostile tar's regular files, and nothing else, on Python 3.11.2.

Debian 12's ``python3.11`` (3.11.2), which the packages run on, predates the
extraction filters of PEP 706 (3.11.4), so ``extractall(filter="data")`` is not
there to lean on. Both readers of untrusted tars (bundles and mirror exports)
already refuse every member that is not a regular file or a folder before
extracting, so what remains is to write those files where their names say and
nowhere else. This module does that with the guarantees the ``data`` filter
gives, whatever the Python:

- a name is a relative path of plain components (no ``..``, no absolute path,
  no empty or ``.`` component), so it cannot leave the destination;
- folders are created here, never taken from the archive; a name that needs a
  folder where a file is (``lib`` and ``lib/x``, in either order) is refused
  from the names alone, before anything is written;
- each file is created afresh (``O_CREAT | O_EXCL | O_NOFOLLOW``) inside folders
  this function made, so nothing already present is followed or overwritten;
- modes are the data filter's: owner read and write, no set-id or sticky bits,
  no group or other write, execute only where the owner has it; owners are
  never set;
- what is written is counted, so a member cannot deliver more than it declared.

The destination must be an empty folder that only the caller can write to.
Without one, the same checks run and the same digests come back with nothing
written: the publishing side refuses what a node would refuse, for the same
reason, without unpacking gigabytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from fleet.errors import GpuwardError

_CHUNK = 1024 * 1024


class UnsafeMember(GpuwardError):
    """A tar member that cannot be written safely inside the destination."""


def safe_parts(name: str) -> tuple[str, ...]:
    """The components of ``name`` if it stays inside a folder, else raise."""
    parts = tuple(name.split("/"))
    if name.startswith("/") or not name or any(p in ("", ".", "..") for p in parts):
        raise UnsafeMember(f"{name!r}: not a plain relative path inside the archive")
    if "\\" in name or "\x00" in name:
        raise UnsafeMember(f"{name!r}: not a plain relative path inside the archive")
    return parts


def _mode(member: tarfile.TarInfo) -> int:
    mode = member.mode & 0o755 | 0o600
    return mode if mode & 0o100 else mode & ~0o011


def _prefixes(parts: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [parts[:depth] for depth in range(1, len(parts) + 1)]


class _Layout:
    """Which names the members seen so far make files and which folders."""

    def __init__(self) -> None:
        self.files: set[tuple[str, ...]] = set()
        self.folders: set[tuple[str, ...]] = set()

    def place(self, member: tarfile.TarInfo) -> tuple[str, ...]:
        """``member``'s path components, refused if it clashes with an earlier one."""
        if not (member.isreg() or member.isdir()):
            raise UnsafeMember(f"{member.name}: only regular files and folders are written")
        parts = safe_parts(member.name.rstrip("/") if member.isdir() else member.name)
        folders = _prefixes(parts) if member.isdir() else _prefixes(parts[:-1])
        for folder in folders:
            if folder in self.files:
                raise UnsafeMember(
                    f"{'/'.join(folder)}: a file in the archive where a folder must be"
                )
        if member.isreg():
            if parts in self.folders:
                raise UnsafeMember(f"{member.name}: a folder in the archive where a file must be")
            if parts in self.files:
                raise UnsafeMember(f"{member.name}: appears twice in the archive")
            self.files.add(parts)
        self.folders.update(folders)
        return parts


def _folder(dest: Path, parts: tuple[str, ...], made: set[tuple[str, ...]]) -> Path:
    """The folder for ``parts``, made here (component by component) if needed."""
    path = dest
    for depth in range(1, len(parts) + 1):
        path = path / parts[depth - 1]
        if parts[:depth] in made:
            continue
        try:
            path.mkdir(mode=0o755)
        except FileExistsError:
            if not stat.S_ISDIR(path.lstat().st_mode):
                raise UnsafeMember(
                    f"{'/'.join(parts[:depth])}: a file in the archive where a folder must be"
                ) from None
        made.add(parts[:depth])
    return path


def extract_files(
    tar: tarfile.TarFile, members: Iterable[tarfile.TarInfo], dest: Path | None
) -> dict[str, str]:
    """Write each member (regular files and folders only) under ``dest``; with
    ``dest`` None, check and read them exactly so, writing nothing.

    Returns the SHA-256 of each file, by member name, computed as the bytes were
    read, so a caller comparing against signed digests need not read them again.
    """
    layout = _Layout()
    made: set[tuple[str, ...]] = set()
    digests: dict[str, str] = {}
    for member in members:
        parts = layout.place(member)
        if member.isdir():
            if dest is not None:
                _folder(dest, parts, made)
            continue
        source = tar.extractfile(member)
        if source is None:  # pragma: no cover - isreg() members always have data
            raise UnsafeMember(f"{member.name}: no data")
        with contextlib.ExitStack() as stack:
            out = None if dest is None else stack.enter_context(_create(dest, parts, made, member))
            digest = hashlib.sha256()
            read = 0
            while chunk := source.read(_CHUNK):
                read += len(chunk)
                if read > member.size:
                    raise UnsafeMember(f"{member.name}: longer than its header says")
                digest.update(chunk)
                if out is not None:
                    out.write(chunk)
            if read != member.size:
                raise UnsafeMember(f"{member.name}: shorter than its header says (truncated?)")
        digests[member.name] = digest.hexdigest()
    return digests


def _create(
    dest: Path, parts: tuple[str, ...], made: set[tuple[str, ...]], member: tarfile.TarInfo
) -> BinaryIO:
    """A new file for ``member`` inside folders made here; nothing there is followed."""
    folder = _folder(dest, parts[:-1], made)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(folder / parts[-1], flags, _mode(member))
    except FileExistsError:
        raise UnsafeMember(f"{member.name}: appears twice in the archive") from None
    # The creating umask may have taken bits the data filter keeps.
    os.fchmod(fd, _mode(member))
    return os.fdopen(fd, "wb")
