"""Maintenance windows: strict parsing, and when one is open or opens next (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fleet.maintenance import InvalidWindow, next_opening, open_window, parse_windows

# 2026-11-28 is a Saturday.
SAT = datetime(2026, 11, 28, tzinfo=UTC)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return SAT.replace(day=day, hour=hour, minute=minute)


@pytest.mark.parametrize(
    ("entry", "inside", "outside"),
    [
        ("Sat 02:00-06:00", [at(28, 2), at(28, 5, 59)], [at(28, 6), at(28, 1, 59), at(29, 3)]),
        ("daily 03:00-04:00", [at(28, 3), at(30, 3, 30)], [at(28, 4), at(29, 2, 59)]),
        ("Mon-Fri 22:00-02:00", [at(30, 23), at(28, 1)], [at(28, 23), at(29, 23), at(30, 1)]),
        ("Fri 22:00-02:00", [at(28, 1, 59)], [at(28, 2), at(27, 21)]),  # Friday's runs into Sat
        ("Sat,Sun 00:00-24:00", [at(28, 0), at(29, 23, 59)], [at(30, 0)]),
        ("Sat-Mon 12:00-13:00", [at(28, 12), at(30, 12, 30)], [at(27, 12)]),
    ],
)
def test_when_a_window_is_open(entry: str, inside: list[datetime], outside: list[datetime]) -> None:
    windows = parse_windows([entry])
    for moment in inside:
        assert open_window(windows, moment) == windows[0], moment
    for moment in outside:
        assert open_window(windows, moment) is None, moment


def test_the_next_opening_is_the_earliest_of_all_windows() -> None:
    windows = parse_windows(["Sat 02:00-06:00", "daily 03:00-04:00"])
    assert next_opening(windows, at(28, 1)) == (at(28, 2), windows[0])
    assert next_opening(windows, at(28, 2, 30)) == (at(28, 3), windows[1])
    assert next_opening(windows, at(28, 5)) == (at(29, 3), windows[1])
    weekly = parse_windows(["Sat 02:00-06:00"])
    assert next_opening(weekly, at(28, 2)) == (datetime(2026, 12, 5, 2, tzinfo=UTC), weekly[0])
    assert next_opening((), at(28, 2)) is None


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ("Saturday 02:00-06:00", "write it as"),
        ("sat 02:00-06:00", "write it as"),
        ("Sat 2:00-06:00", "write it as"),
        ("Sat 02:00 - 06:00", "write it as"),
        ("Sat 02:00-06:00 UTC", "write it as"),
        ("Mon,,Tue 02:00-06:00", "write it as"),
        ("Sat 25:00-06:00", "25:00 is not a time of day"),
        ("Sat 02:60-06:00", "02:60 is not a time of day"),
        ("Sat 24:00-06:00", "24:00 is not a time of day"),
        ("Sat 03:00-03:00", "opens and closes at the same time"),
    ],
)
def test_a_bad_window_is_refused_by_name(entry: str, needle: str) -> None:
    with pytest.raises(InvalidWindow, match=needle) as raised:
        parse_windows(["daily 03:00-04:00", entry])
    assert repr(entry) in str(raised.value)


def test_a_window_must_be_a_string() -> None:
    with pytest.raises(InvalidWindow, match="give it as a string"):
        parse_windows([3])
