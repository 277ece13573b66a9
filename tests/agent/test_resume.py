"""A crash at any point of an inline update resumes to a consistent slot.

Inline mode runs the applier's state machine in the agent's process; the
process dying mid-update leaves the applier's journal behind, and the next
cycle's first step is to run the applier, which resumes from it.
"""

from __future__ import annotations

import pytest

from fleet.gpu_rules import Snapshot
from gpuward.node import run_once
from node.journal import load_journal
from node.simulated_gpus import SimulatedGate
from node.slots import Slots
from tests.conftest import Site


class Crash(BaseException):
    """Stands for the process dying (power cut, OOM kill) at this point."""


def _installed(site: Site) -> None:
    site.publish("580.65.06")
    assert run_once(site.agent()).outcome.update == "committed"
    site.publish("580.82.07")


def test_crash_during_the_switch_resumes_with_the_old_slot(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    _installed(site)
    config = site.agent()

    def die(self: Slots, slot: str | None) -> None:
        raise Crash

    monkeypatch.setattr(Slots, "switch", die)
    with pytest.raises(Crash):
        run_once(config)
    monkeypatch.undo()
    assert load_journal(config.journal_file).state == "switching"
    assert Slots(config.slots_dir).active() == "a"  # the old driver still runs

    result = run_once(config)

    assert result.outcome.update == "committed"
    assert Slots(config.slots_dir).active() == "b"
    assert load_journal(config.journal_file).state == "committed"


def _dies_when_the_gate_judges(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process dies when the health gate looks after the switch (it watches XIDs
    then; the look before the switch, for the baseline, does not)."""
    look = SimulatedGate.look

    def dying(self: SimulatedGate, xid_window_s: float | None) -> Snapshot:
        if xid_window_s is not None:
            raise Crash
        return look(self, xid_window_s)

    monkeypatch.setattr(SimulatedGate, "look", dying)


def test_crash_after_the_switch_is_gated_on_restart(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    _installed(site)
    config = site.agent()

    _dies_when_the_gate_judges(monkeypatch)
    with pytest.raises(Crash):
        run_once(config)
    monkeypatch.undo()
    journal = load_journal(config.journal_file)
    assert (journal.state, journal.slot) == ("verifying", "b")
    assert Slots(config.slots_dir).active() == "b"  # switched, not yet confirmed

    result = run_once(config)

    assert result.outcome.update == "committed"
    assert load_journal(config.journal_file).boots == 2  # the restart counted


def test_crash_after_the_switch_rolls_back_if_the_driver_is_bad(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    _installed(site)
    config = site.agent(unhealthy=frozenset({"580.82.07"}))

    _dies_when_the_gate_judges(monkeypatch)
    with pytest.raises(Crash):
        run_once(config)
    monkeypatch.undo()

    result = run_once(config)

    assert result.outcome.update == "rolled-back"
    assert Slots(config.slots_dir).active() == "a"
