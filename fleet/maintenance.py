"""Maintenance windows: when a node may take a driver update while GPUs are busy.

The applier waits for the GPUs to drain; inside a window the operator has
declared (``[applier] maintenance_windows``) it goes ahead anyway, and when it
gives up waiting it says when the next window opens. Windows are written
``"<days> HH:MM-HH:MM"`` in UTC: days are ``daily``, a day (``Sat``), a list
(``Mon,Wed``) or a range (``Mon-Fri``); a window whose end is not after its
start runs past midnight into the next day (``"Fri 22:00-02:00"``). Parsing is
strict, and an error names the entry it refuses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fleet.errors import GpuwardError

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MAX_WINDOWS = 64
_WINDOW = re.compile(r"(?P<days>\S+) (?P<start>\d\d:\d\d)-(?P<end>\d\d:\d\d)")
_DAY = "|".join(DAYS)
_DAYS = re.compile(rf"daily|(?:{_DAY})(?:-(?:{_DAY}))?(?:,(?:{_DAY})(?:-(?:{_DAY}))?)*")


class InvalidWindow(GpuwardError):
    """A maintenance window that does not parse."""


@dataclass(frozen=True)
class Window:
    text: str  # as the operator wrote it
    days: frozenset[int]  # the weekdays it opens on, Monday 0
    start: timedelta  # after midnight UTC
    length: timedelta

    def opening_on(self, day: datetime) -> datetime | None:
        """When the window opens on ``day`` (midnight UTC), if it opens that day."""
        return day + self.start if day.weekday() in self.days else None


def _minutes(text: str, entry: str, *, end: bool) -> int:
    hours, minutes = int(text[:2]), int(text[3:])
    if minutes > 59 or hours > 24 or (hours == 24 and (minutes or not end)):
        raise InvalidWindow(f"maintenance window {entry!r}: {text} is not a time of day")
    return hours * 60 + minutes


def _days(text: str) -> frozenset[int]:
    if text == "daily":
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        a, b = DAYS.index(first), DAYS.index(last or first)
        # Sat-Mon wraps over the week's end, as an operator means it.
        days.update(d % 7 for d in range(a, b + 1 if b >= a else b + 8))
    return frozenset(days)


def parse_window(entry: str) -> Window:
    match = _WINDOW.fullmatch(entry)
    if match is None or not _DAYS.fullmatch(match["days"]):
        raise InvalidWindow(
            f"maintenance window {entry!r}: write it as '<days> HH:MM-HH:MM' (UTC), days "
            "being daily, Sat, Mon,Wed or Mon-Fri, e.g. 'Sat 02:00-06:00'"
        )
    start = _minutes(match["start"], entry, end=False)
    end = _minutes(match["end"], entry, end=True)
    if end == start:
        raise InvalidWindow(f"maintenance window {entry!r}: it opens and closes at the same time")
    length = end - start if end > start else end + 24 * 60 - start
    return Window(entry, _days(match["days"]), timedelta(minutes=start), timedelta(minutes=length))


def parse_windows(entries: Sequence[object]) -> tuple[Window, ...]:
    if len(entries) > MAX_WINDOWS:
        raise InvalidWindow(f"at most {MAX_WINDOWS} maintenance windows, not {len(entries)}")
    windows = []
    for entry in entries:
        if not isinstance(entry, str):
            raise InvalidWindow(f"maintenance window {entry!r}: give it as a string")
        windows.append(parse_window(entry))
    return tuple(windows)


def _midnight(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def open_window(windows: Sequence[Window], at: datetime) -> Window | None:
    """The window ``at`` falls in, if any (one opened yesterday may still run)."""
    today = _midnight(at)
    for window in windows:
        for day in (today, today - timedelta(days=1)):
            opens = window.opening_on(day)
            if opens is not None and opens <= at < opens + window.length:
                return window
    return None


def next_opening(windows: Sequence[Window], at: datetime) -> tuple[datetime, Window] | None:
    """When the next window opens after ``at``, and which; None without windows."""
    today = _midnight(at)
    openings = [
        (opens, window)
        for window in windows
        for offset in range(8)
        if (opens := window.opening_on(today + timedelta(days=offset))) is not None and opens > at
    ]
    return min(openings, key=lambda o: o[0], default=None)
