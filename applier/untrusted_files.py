"""Reading files that another, less privileged user controls, as root.

The applier reads the spool and the metadata cache of the unprivileged agent.
Opening a path there the ordinary way follows a symbolic link (to /dev/zero,
to a root-only file), blocks forever on a FIFO with no writer, and reads a
device or a sparse file without end. Here every file is opened without
following links and without blocking, checked with ``fstat`` on the open
descriptor (so it cannot be swapped after the check), bounded in size, and
read from that descriptor. Anything but a regular file or folder is refused.

``O_NOFOLLOW`` guards only a path's last component, so the agent's folders are
not reached by path at all: ``AgentFolder.open`` walks from ``/`` one component
at a time, each opened relative to the one above without following a link. The
folders above the agent's state folder must be root's and changeable by root
alone; the state folder's owner is the agent's account, and each folder below
it must be that account's too. Every file is then read and removed through the
open folder (``dir_fd``), so a link the agent puts anywhere on the way is
refused, never followed: root never reads or unlinks outside the agent's own
folders.
"""

from __future__ import annotations

import contextlib
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


def _trusted_above(fd: int, shown: Path) -> None:
    """Refuse a folder above the agent's state folder that the agent could change."""
    info = os.fstat(fd)
    # Root's, or the applier's own where it does not run as root (a demo).
    if info.st_uid not in (0, os.geteuid()):
        raise UntrustedFileRefused(
            f"{shown} belongs to uid {info.st_uid}, not root; the applier reaches the "
            "agent's state folder only through folders root alone can change"
        )
    # A sticky folder (/tmp) lets nobody replace an entry that is not theirs.
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise UntrustedFileRefused(
            f"{shown} is writable by others than root (mode {stat.S_IMODE(info.st_mode):o}); "
            "the applier reaches the agent's state folder only through folders root alone "
            "can change"
        )


def _folder_in(dir_fd: int, name: str, shown: Path) -> int:
    """The folder ``name`` in ``dir_fd``, opened without following a link; raise
    ``FileNotFoundError`` when there is none."""
    os.stat(name, dir_fd=dir_fd, follow_symlinks=False)  # FileNotFoundError: absent
    return _open(name, _DIR_FLAGS, dir_fd, shown)


class AgentFolder:
    """A folder of the agent's, held open: every file in it is reached through the
    descriptor, never by a path the agent could redirect."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path  # for messages only

    @classmethod
    def open(cls, state_dir: Path, *below: str) -> AgentFolder:
        """``state_dir/below...``, reached as the module docstring says; raise
        ``FileNotFoundError`` if a folder on the way is missing, and
        ``UntrustedFileRefused`` for a link, a file, or a folder of another owner."""
        # Lexically: no link is resolved, each component below is opened as named.
        state_dir = Path(os.path.normpath(Path.cwd() / state_dir))
        shown = Path("/")
        fd = os.open("/", _DIR_FLAGS)
        try:
            _trusted_above(fd, shown)
            for name in state_dir.parts[1:]:
                shown = shown / name
                inner = _folder_in(fd, name, shown)
                os.close(fd)
                fd = inner
                if shown != state_dir:
                    _trusted_above(fd, shown)
            agent = os.fstat(fd).st_uid
            for name in below:
                shown = shown / name
                inner = _folder_in(fd, name, shown)
                os.close(fd)
                fd = inner
                owner = os.fstat(fd).st_uid
                if owner != agent:
                    raise UntrustedFileRefused(
                        f"{shown} belongs to uid {owner}, not to the agent's account (uid "
                        f"{agent}, the owner of {state_dir}); refused"
                    )
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, shown)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> AgentFolder:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def holds(self, name: str) -> bool:
        """Whether ``name`` is there, whatever it is (a link is not followed)."""
        try:
            os.stat(name, dir_fd=self._fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def read_file(self, name: str, max_bytes: int) -> bytes:
        """The content of the regular file ``name`` (not a link), at most ``max_bytes``."""
        fd = _open(name, _FILE_FLAGS, self._fd, self.path / name)
        try:
            return b"".join(_chunks(fd, max_bytes, self.path / name))
        finally:
            os.close(fd)

    def copy_file(self, name: str, dest: Path, max_bytes: int) -> None:
        """Copy the regular file ``name`` (not a link) of at most ``max_bytes`` to the
        new file ``dest``; raise ``UntrustedFileRefused`` for anything else."""
        fd = _open(name, _FILE_FLAGS, self._fd, self.path / name)
        try:
            _copy_fd(fd, dest, max_bytes, self.path / name)
        finally:
            os.close(fd)

    def remove(self, name: str) -> None:
        """Unlink the entry ``name`` here (a link itself, never what it points at)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self._fd)

    def copy_tree(
        self,
        dest: Path,
        max_file_bytes: int,
        max_entries: int,
        links: re.Pattern[str] | None = None,
    ) -> None:
        """Copy this folder to the new folder ``dest``: regular files and folders
        only, each file bounded, at most ``max_entries`` in all.

        A symbolic link whose target ``links`` matches in full (a path inside the
        tree) is copied as a link: it then resolves inside the copy, never outside.
        """
        left = [max_entries]

        def copy(dir_fd: int, into: Path, shown: Path) -> None:
            into.mkdir(mode=0o700)
            for name in os.listdir(dir_fd):
                left[0] -= 1
                if left[0] < 0:
                    raise UntrustedFileRefused(f"{self.path} holds more than {max_entries} entries")
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

        copy(self._fd, dest, self.path)
