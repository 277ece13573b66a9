"""Reading files that another, less privileged user controls, as root.

The applier reads the spool and the metadata cache of the unprivileged agent.
Opening a path there the ordinary way follows a symbolic link (to /dev/zero,
to a root-only file), blocks forever on a FIFO with no writer, and reads a
device or a sparse file without end. Here every file is opened without
following links and without blocking, checked with ``fstat`` on the open
descriptor (so it cannot be swapped after the check), bounded in size, and
read from that descriptor. Anything but a regular file or folder is refused.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from fleet.errors import GpuwardError

_CHUNK = 1024 * 1024
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class UntrustedFileRefused(GpuwardError):
    """A file under another user's control is not a plain file of a sane size."""


_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISREG, "a regular file"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "an unknown kind of file")


def _open(path: Path | str, flags: int, dir_fd: int | None, shown: Path) -> int:
    try:
        return os.open(path, flags, dir_fd=dir_fd)
    except OSError as exc:
        # A link (ELOOP, or ENOTDIR for a folder) or a socket (ENXIO): say which it is.
        try:
            mode = os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except OSError:
            mode = 0
        wanted = stat.S_ISDIR if flags & os.O_DIRECTORY else stat.S_ISREG
        if mode and not wanted(mode):
            expected = "a folder" if flags & os.O_DIRECTORY else "a regular file"
            raise UntrustedFileRefused(
                f"{shown} is {_kind(mode)}, not {expected}; refused"
            ) from None
        raise UntrustedFileRefused(f"{shown} cannot be opened ({exc.strerror})") from None


def _chunks(fd: int, max_bytes: int, shown: Path) -> Iterator[bytes]:
    """What the open regular file ``fd`` holds, refused if anything else or too big."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UntrustedFileRefused(f"{shown} is {_kind(info.st_mode)}, not a regular file; refused")
    if info.st_size > max_bytes:
        raise UntrustedFileRefused(
            f"{shown} is {info.st_size} bytes, above the limit of {max_bytes}; refused"
        )
    read = 0
    # The file may still grow while it is read: the bound holds for what is read.
    while chunk := os.read(fd, _CHUNK):
        read += len(chunk)
        if read > max_bytes:
            raise UntrustedFileRefused(f"{shown} grew above the limit of {max_bytes}; refused")
        yield chunk


def _copy_fd(fd: int, dest: Path, max_bytes: int, shown: Path) -> None:
    with dest.open("xb") as out:
        for chunk in _chunks(fd, max_bytes, shown):
            out.write(chunk)


def copy_file(source: Path, dest: Path, max_bytes: int) -> None:
    """Copy the regular file ``source`` (not a link) of at most ``max_bytes`` to the
    new file ``dest``; raise ``UntrustedFileRefused`` for anything else."""
    fd = _open(source, _FILE_FLAGS, None, source)
    try:
        _copy_fd(fd, dest, max_bytes, source)
    finally:
        os.close(fd)


def read_file(source: Path, max_bytes: int) -> bytes:
    """The content of the regular file ``source`` (not a link), at most ``max_bytes``."""
    fd = _open(source, _FILE_FLAGS, None, source)
    try:
        return b"".join(_chunks(fd, max_bytes, source))
    finally:
        os.close(fd)


def copy_tree(
    source: Path,
    dest: Path,
    max_file_bytes: int,
    max_entries: int,
    links: re.Pattern[str] | None = None,
) -> None:
    """Copy the folder ``source`` (not a link) to the new folder ``dest``: regular
    files and folders only, each file bounded, at most ``max_entries`` in all.

    A symbolic link whose target ``links`` matches in full (a path inside the
    tree) is copied as a link: it then resolves inside the copy, never outside.
    """
    left = [max_entries]

    def copy(dir_fd: int, into: Path, shown: Path) -> None:
        into.mkdir(mode=0o700)
        for name in os.listdir(dir_fd):
            left[0] -= 1
            if left[0] < 0:
                raise UntrustedFileRefused(f"{source} holds more than {max_entries} entries")
            entry = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(entry.st_mode) and links is not None:
                target = os.readlink(name, dir_fd=dir_fd)
                if links.fullmatch(target) and ".." not in target.split("/"):
                    (into / name).symlink_to(target)
                    continue
            if stat.S_ISDIR(entry.st_mode):
                sub = _open(name, _DIR_FLAGS, dir_fd, shown / name)
                try:
                    copy(sub, into / name, shown / name)
                finally:
                    os.close(sub)
                continue
            fd = _open(name, _FILE_FLAGS, dir_fd, shown / name)
            try:
                _copy_fd(fd, into / name, max_file_bytes, shown / name)
            finally:
                os.close(fd)

    top = _open(source, _DIR_FLAGS, None, source)
    try:
        copy(top, dest, source)
    finally:
        os.close(top)
