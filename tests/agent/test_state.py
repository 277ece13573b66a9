"""The agent's state file is written atomically: a crash mid-write loses nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.state import AgentState, PendingSwitch, load_state, save_state
from fleet.errors import GpuwardError


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = AgentState().with_pending(PendingSwitch("b", "a", "f" * 64)).with_rejected("e" * 64)
    save_state(path, state)
    assert load_state(path) == state
    assert path.stat().st_mode & 0o777 == 0o600


def test_crash_before_rename_keeps_the_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    old = AgentState().with_rejected("e" * 64)
    save_state(path, old)

    def power_cut(_fd: int) -> None:
        raise OSError("simulated power cut during fsync")

    monkeypatch.setattr(os, "fsync", power_cut)
    with pytest.raises(OSError, match="power cut"):
        save_state(path, old.with_pending(PendingSwitch("b", "a", "f" * 64)))
    monkeypatch.undo()

    assert load_state(path) == old
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left


def test_write_goes_through_fsync_and_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, Path.replace

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def replace(self: Path, target: Path) -> Path:
        calls.append("rename")
        return real_replace(self, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "replace", replace)
    save_state(tmp_path / "state.json", AgentState())
    # file data durable before the rename, the rename durable after it (directory fsync)
    assert calls == ["fsync", "rename", "fsync"]


def test_corrupt_state_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"schema": 1, "pend')
    with pytest.raises(GpuwardError, match="move it aside"):
        load_state(path)
