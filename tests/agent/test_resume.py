"""A crash at any point of an update resumes to a consistent slot."""

from __future__ import annotations

import pytest

from agent.config import AgentConfig
from agent.cycle import Cycle
from agent.daemon import make_probe, run_once
from agent.health import ProbeResult
from agent.slots import Slots
from agent.state import load_state
from tests.conftest import Site


class Crash(BaseException):
    """Stands for the process dying (power cut, OOM kill) at this point."""


class DiesAfterSwitch:
    """The real probe, except that the process dies when the health gate looks."""

    def __init__(self, config: AgentConfig) -> None:
        self.inner = make_probe(config)
        self.slots = Slots(config.slots_dir)

    def probe(self) -> ProbeResult:
        if self.slots.active() == "b":
            raise Crash
        return self.inner.probe()


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
    assert load_state(config.state_file).pending is not None
    assert Slots(config.slots_dir).active() == "a"  # the old driver still runs

    result = run_once(config)

    assert result.outcome.update == "committed"
    assert Slots(config.slots_dir).active() == "b"
    assert load_state(config.state_file).pending is None


def test_crash_after_the_switch_is_gated_on_restart(site: Site) -> None:
    _installed(site)
    config = site.agent()

    with pytest.raises(Crash):
        Cycle(config, DiesAfterSwitch(config)).run()
    state = load_state(config.state_file)
    assert state.pending is not None and state.pending.slot == "b"
    assert Slots(config.slots_dir).active() == "b"  # switched, not yet confirmed

    result = Cycle(config, make_probe(config)).run()

    assert result.outcome.update == "committed"
    assert load_state(config.state_file).pending is None


def test_crash_after_the_switch_rolls_back_if_the_driver_is_bad(site: Site) -> None:
    _installed(site)
    config = site.agent(unhealthy=frozenset({"580.82.07"}))

    with pytest.raises(Crash):
        Cycle(config, DiesAfterSwitch(config)).run()

    result = run_once(config)

    assert result.outcome.update == "rolled-back"
    assert Slots(config.slots_dir).active() == "a"
