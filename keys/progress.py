"""Byte progress of the long file work an operator waits on: building, publishing
and mirroring bundles of gigabytes.

The work reports and its caller decides how to show it (the command line draws a
bar on a terminal, ``gpuward.cli.progress``), so nothing below the command line
prints. Work goes in stages, each over a number of bytes known when it begins
(None when it is not: a folder copied as it is walked).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import BinaryIO, Protocol


class ByteProgress(Protocol):
    def begin(self, what: str, total: int | None) -> None:
        """A stage over ``total`` bytes begins (ending the one before)."""

    def advance(self, count: int) -> None:
        """``count`` more bytes of the stage are done."""


class _Silent:
    def begin(self, what: str, total: int | None) -> None:
        return None

    def advance(self, count: int) -> None:
        return None


SILENT: ByteProgress = _Silent()


class TrackedReader:
    """A binary file whose reads advance ``progress``: by how far they take the
    position past the furthest point read before, so a reader that seeks back
    (tarfile does) or to the end (to learn the length) counts each byte once."""

    def __init__(self, raw: BinaryIO, progress: ByteProgress) -> None:
        self._raw = raw
        self._progress = progress
        self._furthest = raw.tell()
        self.name = getattr(raw, "name", None)  # tarfile names the archive by it

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        position = self._raw.tell()
        if position > self._furthest:
            self._progress.advance(position - self._furthest)
            self._furthest = position
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def write(self, _data: bytes) -> int:
        raise io.UnsupportedOperation("a tracked reader only reads")

    def close(self) -> None:
        self._raw.close()


def copy_tracked(source: Path, dest: Path, progress: ByteProgress) -> None:
    """Copy the file ``source`` to ``dest`` (created or replaced), advancing ``progress``."""
    with source.open("rb") as raw, dest.open("wb") as out:
        shutil.copyfileobj(TrackedReader(raw, progress), out)
