"""Crash-safe file writes, and bounded reads of the files gpuward is handed.

A power cut in the middle of writing metadata, a key or the agent's state must
leave either the old file or the new one, never a torn mix: write a temporary
file in the same directory, fsync it, rename it over the target, fsync the
directory so the rename itself is durable.

Every side writes state this way (keys and metadata here, the node's slots,
journal and spool, the server's repository), so it lives in the lowest layer
allowed to touch files: ``fleet`` is pure logic, and ``keys`` was its first user.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from fleet.errors import GpuwardError

if TYPE_CHECKING:
    from fleet.wire import Wire

W = TypeVar("W", bound="Wire")

# A configuration file larger than this is not one.
MAX_TOML_BYTES = 1024 * 1024


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    with atomic_writer(path, mode) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A file to write that replaces ``path`` atomically and durably once the block
    ends, for content too large to hold in memory; an exception leaves ``path`` as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as tmp_file:
            yield tmp_file
            tmp_file.flush()
            os.fchmod(tmp_file.fileno(), mode)
            os.fsync(tmp_file.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``, refusing a missing file or one over ``limit`` bytes.

    Files gpuward reads may be hostile or simply wrong (a disk image where a key
    should be); reading one byte past the limit tells "too large" without ever
    holding more than that in memory.
    """
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise GpuwardError(f"{what} {path} not found") from None
    if len(data) > limit:
        raise GpuwardError(f"{path}: {what} larger than {limit} bytes")
    return data


def read_document(path: Path, cls: type[W], limit: int, what: str) -> W:
    """The wire document ``cls`` in the JSON file ``path`` (at most ``limit`` bytes),
    strictly read; an error names the file."""
    data = read_bounded(path, limit, what)
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise GpuwardError(f"{what} {path}: not JSON ({exc})") from None
    return cls.from_dict(doc, str(path))


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file (agent.toml, server.toml), parsed; ``what`` names it in errors."""
    data = read_bounded(path, MAX_TOML_BYTES, what)
    try:
        return tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise GpuwardError(f"{what} {path}: not valid TOML ({exc})") from None
