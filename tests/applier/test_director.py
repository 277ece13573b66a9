"""On a directed node the root applier installs only what the director assigns.

The applier re-verifies the agent's cached director metadata offline, from the
director root installed with the package, so the director's word reaches root
without trusting the agent: an operator's rollback (an older bundle, a higher
release counter) goes through the packaged path, and an agent under an
attacker's control cannot spool a bundle the director did not assign, older or
newer, though the image repository signed it.
"""

from __future__ import annotations

import dataclasses

import pytest

from agent.channel import ImageChannel
from applier.state_machine import apply_once
from gpuward.node import run_once
from keys.image_repo import PublishedBundle
from node.config import AgentConfig, ApplierSettings
from node.journal import load_journal
from node.slots import Slots
from node.spool import write_spool
from tests.conftest import Site

OLD, NEW = "580.65.06", "580.82.07"


@pytest.fixture
def directed(site: Site) -> AgentConfig:
    """A packaged-style node (agent and applier apart) running NEW, assigned with counter 1."""
    config = dataclasses.replace(site.agent(directed=True), applier=ApplierSettings(mode="applier"))
    site.assign("node-1", site.publish(NEW), counter=1)
    assert run_once(config).outcome.update == "staged"
    assert apply_once(config).outcome == "committed"
    assert run_once(config).outcome.update == "committed"  # the agent reports it, once
    return config


def running(config: AgentConfig) -> str:
    slots = Slots(config.slots_dir)
    content = slots.content(slots.active())
    assert content is not None
    return content.manifest.driver_version


def spool_as_the_agent(config: AgentConfig, published: PublishedBundle) -> None:
    """What a subverted agent can do: spool any bundle the image repository signed."""
    channel = ImageChannel(config)
    channel.refresh()
    info = channel.targetinfo(published.target_path)
    assert info is not None
    write_spool(config.spool_dir, info, channel.fetch(info))


def test_the_director_rolls_a_packaged_node_back(site: Site, directed: AgentConfig) -> None:
    site.assign("node-1", site.publish(OLD), counter=2)  # an operator's rollback

    assert run_once(directed).outcome.update == "staged"
    result = apply_once(directed)

    assert (result.outcome, running(directed)) == ("committed", OLD)
    assert load_journal(directed.journal_file).committed_counter == 2
    assert run_once(directed).outcome.update == "committed"
    assert run_once(directed).outcome.update == "up-to-date"


def test_an_agent_cannot_roll_back_on_its_own(site: Site, directed: AgentConfig) -> None:
    older = site.publish(OLD)  # signed, but the director still assigns NEW
    spool_as_the_agent(directed, older)

    result = apply_once(directed)

    assert result.outcome == "refused"
    assert (
        "the director assigns drivers/R580/nvidia-580.82.07.bundle, not the spooled"
        in result.reason
    )
    assert running(directed) == NEW


def test_an_agent_cannot_install_a_newer_bundle_the_director_did_not_assign(
    site: Site, directed: AgentConfig
) -> None:
    site.assign("node-1", site.publish(OLD), counter=2)
    assert run_once(directed).outcome.update == "staged"
    assert apply_once(directed).outcome == "committed"
    assert run_once(directed).outcome.update == "committed"
    newest = site.publish("580.95.05")  # signed, newer than anything, never assigned

    spool_as_the_agent(directed, newest)
    result = apply_once(directed)

    assert result.outcome == "refused"
    assert "not the spooled drivers/R580/nvidia-580.95.05.bundle" in result.reason
    assert running(directed) == OLD
