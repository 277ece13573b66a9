"""Byte progress bars for the commands that read gigabytes: ``bundle build``,
``repo add``, ``mirror export`` and ``mirror import``.

A bar goes to stderr, and only where a person watches it: stderr is a terminal
(and the command is not printing ``--json`` for a program), or ``--progress``
asks for it. Elsewhere the long mirror jobs, run unattended across air gaps,
log a progress event every twentieth of each stage instead.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import TextIO

import structlog

from keys.progress import SILENT, ByteProgress

BAR_WIDTH = 30
EVENTS_PER_STAGE = 20
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")

log = structlog.get_logger(__name__)


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action="store_true",
        help="draw progress bars on stderr even when it is not a terminal",
    )


@contextlib.contextmanager
def progress_for(args: argparse.Namespace, event: str | None = None) -> Iterator[ByteProgress]:
    """A bar when wanted; else ``event`` logged as the stages go (None: nothing).
    The bar's last line is ended on the way out, before any result or error."""
    if not (args.progress or (sys.stderr.isatty() and not args.json)):
        yield SILENT if event is None else LoggedProgress(event)
        return
    bar = TerminalBar(sys.stderr)
    try:
        yield bar
    except BaseException:
        bar.close(completed=False)
        raise
    bar.close(completed=True)


def size(count: float) -> str:
    """``count`` bytes as people read them: "1.4 GiB"."""
    unit = _UNITS[0]
    for unit in _UNITS:
        if count < 1024 or unit == _UNITS[-1]:
            break
        count /= 1024
    return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"


class TerminalBar:
    """One line per stage, redrawn in place as its bytes go, at most once per
    hundredth (a pipe's reader sees a few hundred redraws, not one per read)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._what = ""
        self._total: int | None = None
        self._done = 0
        self._shown: tuple[int, int] | None = None  # (hundredths, MiB) last drawn
        self._open = False

    def begin(self, what: str, total: int | None) -> None:
        self.close(completed=True)  # a new stage: the one before it is done
        self._what, self._total, self._done, self._shown = what, total, 0, None
        self._draw()

    def close(self, *, completed: bool) -> None:
        """End the open line, shown whole when its stage ``completed`` (a reader may
        leave a file's last padding unread)."""
        if self._open and completed and self._total is not None:
            self._done = max(self._done, self._total)
            self._draw()
        self._finish_line()

    def advance(self, count: int) -> None:
        self._done += count
        self._draw()

    def _draw(self) -> None:
        total = self._total
        if total:
            fraction = min(self._done / total, 1.0)
            key = (int(fraction * 100), 0)
            filled = int(fraction * BAR_WIDTH)
            bar = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {key[0]:3d}%"
            text = f"{self._what}: {bar} {size(self._done)} of {size(total)}"
        else:
            key = (0, self._done >> 20)
            text = f"{self._what}: {size(self._done)}"
        if key == self._shown:
            return
        self._shown = key
        self._out.write(f"\r{text}\033[K")
        self._open = True
        if total is not None and self._done >= total:
            self._finish_line()
        self._out.flush()

    def _finish_line(self) -> None:
        if self._open:
            self._out.write("\n")
            self._out.flush()
            self._open = False


class LoggedProgress:
    """``event`` logged when a stage begins and at each twentieth of its bytes."""

    def __init__(self, event: str) -> None:
        self._event = event
        self._what = ""
        self._total: int | None = None
        self._done = 0
        self._logged = -1

    def begin(self, what: str, total: int | None) -> None:
        self._what, self._total, self._done, self._logged = what, total, 0, -1
        self._log()

    def advance(self, count: int) -> None:
        self._done += count
        self._log()

    def _log(self) -> None:
        step = EVENTS_PER_STAGE * self._done // self._total if self._total else 0
        if step > self._logged:
            self._logged = step
            log.info(self._event, stage=self._what, bytes=self._done, total=self._total)
