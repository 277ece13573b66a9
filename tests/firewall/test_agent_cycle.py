"""The agent cycle keeps the firewall enforced and reports its digest to the server."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

from agent.cycle import Cycle
from agent.daemon import make_probe
from gpuward.node import inline_applier
from node.firewall.enforcer import Enforcer
from tests.conftest import Site
from tests.firewall.conftest import Net, policy


def test_each_cycle_enforces_and_reports_the_firewall(site: Site, net: Net) -> None:
    site.publish("580.65.06")
    config = dataclasses.replace(site.agent(), firewall=policy())
    assert config.firewall is not None
    cycle = Cycle(
        config,
        make_probe(config),
        firewall=Enforcer(config.firewall, net.nft),
        inline_applier=inline_applier(config),
    )

    first = cycle.run()
    assert first.report.firewall is not None and first.report.firewall.action == "applied"
    net.nft_cli("flush", "chain", "inet", "gpuward", "output")  # someone empties the chain
    second = cycle.run()

    assert second.report.firewall is not None
    assert second.report.firewall.action == "repaired"
    stored = site.fleet()[config.node_id]  # /v1/fleet wants an operator token
    assert stored["report"]["firewall"]["action"] == "repaired"
    assert stored["report"]["firewall"]["digest"] == first.report.firewall.digest


def test_an_agent_without_cap_net_admin_leaves_the_firewall_to_its_unit(tmp_path: Path) -> None:
    """As packaged, the agent cannot change nftables: it must not try every cycle."""
    check = "from agent.cycle import can_admin_network as c; print(c())"
    as_root = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    unprivileged = subprocess.run(
        ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps=-all",
         sys.executable, "-c", check],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert as_root.stdout.strip() == "True", as_root.stderr
    assert unprivileged.stdout.strip() == "False", unprivileged.stderr
