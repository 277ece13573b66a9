"""The agent's state file is written atomically: a crash mid-write loses nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.cycle_state import AgentState, Handoff, load_state, save_state
from fleet.errors import GpuwardError
from node.kernel_hold_record import HOLD_RECORD, load_hold_record
from tests.conftest import Site


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = AgentState(handoff=Handoff("f" * 64, 7, "committed@1"), release_counter=3)
    state = state.with_rejected("e" * 64)
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
        save_state(path, old.with_rejected("f" * 64))
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


def test_a_switch_left_by_an_agent_that_switched_itself_is_not_forgotten(tmp_path: Path) -> None:
    """Before the one state machine, an inline agent switched slots itself and kept the
    unconfirmed switch here; the applier's journal knows nothing of it, so loading
    such a state must stop and say how to finish it, not silently drop it."""
    path = tmp_path / "state.json"
    pending = {"slot": "b", "previous": "a", "sha256": "f" * 64, "release_counter": 0}
    path.write_text(json.dumps({"schema": 1, "pending": pending, "rejected": []}))
    with pytest.raises(GpuwardError, match="point slots/active at a"):
        load_state(path)


def test_an_unreadable_kernel_hold_record_is_ignored_not_fatal(site: Site) -> None:
    """The agent reports the applier's last hold; a damaged record must not stop a report."""
    config = site.agent()
    record = config.applier_dir / HOLD_RECORD
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text('{"kernel": ')
    with capture_logs() as logs:
        assert load_hold_record(config) is None
    assert [e["event"] for e in logs] == ["kernel_hold_record_unreadable"]
