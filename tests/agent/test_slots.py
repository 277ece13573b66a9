"""The slot switch is one atomic rename: readers never see the link missing."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from fleet.errors import GpuwardError
from node.slots import Slots


def _slots(tmp_path: Path) -> Slots:
    slots = Slots(tmp_path / "slots")
    for name in ("a", "b"):
        (slots.path(name)).mkdir(parents=True)
    return slots


def test_switch_never_leaves_the_link_missing(tmp_path: Path) -> None:
    slots = _slots(tmp_path)
    slots.switch("a")
    stop = threading.Event()
    seen: list[str | None] = []

    def reader() -> None:
        while not stop.is_set():
            seen.append(slots.active())

    thread = threading.Thread(target=reader)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave the threads as finely as the GIL allows
    thread.start()
    try:
        for i in range(500):
            slots.switch("ab"[i % 2])
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert seen, "the reader never ran"
    assert None not in seen
    assert set(seen) <= {"a", "b"}


def test_switch_replaces_the_link_inode_by_rename(tmp_path: Path) -> None:
    slots = _slots(tmp_path)
    slots.switch("a")
    link = slots.root / "active"
    before = link.lstat().st_ino
    slots.switch("b")
    assert link.is_symlink()
    assert link.readlink() == Path("b")
    assert link.lstat().st_ino != before  # a new link renamed over, not edited in place
    assert not (slots.root / ".active.new").exists()


def test_running_slot_is_never_staged_into(tmp_path: Path) -> None:
    slots = _slots(tmp_path)
    slots.switch("a")
    with pytest.raises(GpuwardError, match="running slot"):
        slots.scratch("a")


def test_switch_to_an_empty_slot_is_refused(tmp_path: Path) -> None:
    slots = Slots(tmp_path / "slots")
    slots.root.mkdir()
    with pytest.raises(GpuwardError, match="holds nothing"):
        slots.switch("b")


def test_link_pointing_elsewhere_is_an_error(tmp_path: Path) -> None:
    slots = _slots(tmp_path)
    (slots.root / "active").symlink_to("/etc")
    with pytest.raises(GpuwardError, match="expected 'a' or 'b'"):
        slots.active()
