"""Inline mode's health gate is the applier's: an application's XID after the switch
leaves the new driver in place, a node fault rolls it back."""

from __future__ import annotations

import dataclasses
import time

import pytest

from agent.cycle import Cycle
from agent.daemon import make_probe
from applier.drain import Drain, SimulatedActivity
from applier.state_machine import Applier, ApplyResult, make_gate
from fleet.errors import GpuwardError
from fleet.gpu import XidEvent
from fleet.gpu_rules import Snapshot
from gpuward.node import run_once
from node.config import AgentConfig
from tests.conftest import Site

OLD, NEW = "580.65.06", "580.82.07"


class XidAfterSwitch:
    """The simulated gate, plus one XID on GPU 0 in the watch after the switch:
    what NVML would have raised while the gate watched."""

    def __init__(self, config: AgentConfig, xid: int) -> None:
        self.inner = make_gate(config)
        self.xid = xid

    def look(self, xid_window_s: float | None) -> Snapshot:
        seen = self.inner.look(xid_window_s)
        if xid_window_s is None:
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

    def applier() -> ApplyResult:
        drain = Drain(SimulatedActivity(0), max_wait_s=0, poll_s=0)
        return Applier(config, XidAfterSwitch(config, xid), drain).run()

    result = Cycle(config, make_probe(config), inline_applier=applier).run()

    assert result.outcome.update == outcome
    assert result.report.active_slot == slot
    if xid == 79:
        assert "XID 79 since the switch (GPU has fallen off the bus)" in result.outcome.reason


def test_an_inline_config_without_the_applier_is_refused(site: Site) -> None:
    config = site.agent()
    with pytest.raises(GpuwardError, match="gpuward agent run"):
        Cycle(config, make_probe(config))
