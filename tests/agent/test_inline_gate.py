"""The inline mode's health gate after a switch follows the applier's rules:
an application's XID leaves the new driver in place, a node fault rolls it back."""

from __future__ import annotations

import dataclasses
import time

import pytest

from agent.config import AgentConfig
from agent.cycle import Cycle
from agent.daemon import make_probe, run_once
from agent.health import ProbeResult
from agent.slots import Slots
from fleet.gpu import XidEvent
from tests.conftest import Site

OLD, NEW = "580.65.06", "580.82.07"


class XidAfterSwitch:
    """The simulated probe, plus one XID on GPU 0 once slot b is active: what the
    NVML listener would have received after the switch."""

    def __init__(self, config: AgentConfig, xid: int) -> None:
        self.inner = make_probe(config)
        self.slots = Slots(config.slots_dir)
        self.xid = xid

    def probe(self) -> ProbeResult:
        seen = self.inner.probe()
        if self.slots.active() != "b":
            return seen
        event = XidEvent(time.time(), 0, seen.gpus[0].uuid, self.xid)
        return dataclasses.replace(seen, xids=(event,))


@pytest.mark.parametrize(
    ("xid", "outcome", "slot"), [(13, "committed", "b"), (79, "rolled-back", "a")]
)
def test_only_a_node_fault_xid_rolls_back(site: Site, xid: int, outcome: str, slot: str) -> None:
    site.publish(OLD)
    assert run_once(site.agent()).outcome.update == "committed"
    site.publish(NEW)
    config = site.agent()

    result = Cycle(config, XidAfterSwitch(config, xid)).run()

    assert result.outcome.update == outcome
    assert Slots(config.slots_dir).active() == slot
    if xid == 79:
        assert "XID 79 since the switch (GPU has fallen off the bus)" in result.outcome.reason
