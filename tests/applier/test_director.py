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
import json
import re
import shutil

import pytest
from tuf.api.metadata import TargetFile

from agent.channel import ImageChannel
from applier.state_machine import apply_once
from gpuward.node import run_once
from keys.image_repo import PublishedBundle
from node.channel import UpdateRefused
from node.config import AgentConfig, ApplierSettings
from node.director import read_directive
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


def test_a_replayed_older_assignment_is_refused(site: Site, directed: AgentConfig) -> None:
    """The agent keeps the director metadata that assigned NEW (counter 1); after the
    director rolls the node back to OLD (counter 2) it puts that metadata back and
    spools NEW again. Both still verify offline; the counter the applier committed
    says no."""
    kept = directed.state_dir / "kept-director"
    shutil.copytree(directed.director_metadata_dir, kept)
    site.assign("node-1", site.publish(OLD), counter=2)
    assert run_once(directed).outcome.update == "staged"
    assert apply_once(directed).outcome == "committed"
    assert run_once(directed).outcome.update == "committed"

    shutil.rmtree(directed.director_metadata_dir)
    shutil.copytree(kept, directed.director_metadata_dir)
    spool_as_the_agent(directed, site.publish(NEW))
    result = apply_once(directed)

    assert result.outcome == "refused"
    assert "release counter 1 of drivers/R580/nvidia-580.82.07.bundle is below" in result.reason
    assert running(directed) == OLD


def test_tampered_director_metadata_is_not_believed_nor_blamed_on_the_bundle(
    site: Site, directed: AgentConfig
) -> None:
    older = site.publish(OLD)
    site.assign("node-1", older, counter=2)
    assert run_once(directed).outcome.update == "staged"
    targets = directed.director_metadata_dir / "targets.json"
    doc = json.loads(targets.read_bytes())
    doc["signed"]["targets"][older.target_path]["custom"]["gpuward_director"]["release_counter"] = 9
    targets.write_text(json.dumps(doc))

    result = apply_once(directed)

    assert result.outcome == "refused"
    assert "cached director metadata does not verify offline" in result.reason
    assert load_journal(directed.journal_file).sha256 is None  # the agent may hand it over again
    assert running(directed) == NEW


class CachedDirector:
    """A verified director repository as ``read_directive`` sees it: its listing and
    target infos (the offline verification itself is tested above, end to end)."""

    def __init__(self, *targets: TargetFile, lost: bool = False) -> None:
        self.targets = {t.path: t for t in targets}
        self.lost = lost

    def listed(self, prefix: str) -> set[str]:
        return {p for p in self.targets if p.startswith(prefix)}

    def targetinfo(self, path: str) -> TargetFile | None:
        return None if self.lost else self.targets.get(path)


def director_target(path: str, director: object) -> TargetFile:
    return TargetFile(1, {"sha256": "0" * 64}, path, {"custom": {"gpuward_director": director}})


ASSIGNED = {"node_id": "node-1", "hardware_id": "NVIDIA H100", "release_counter": 3}


def test_a_directive_is_read_from_the_one_target_named() -> None:
    directive = read_directive(CachedDirector(director_target("drivers/R580/a", ASSIGNED)))  # type: ignore[arg-type]
    assert directive is not None
    assert (directive.node_id, directive.release_counter) == ("node-1", 3)
    assert read_directive(CachedDirector()) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("director", "refusal"),
    [
        (
            CachedDirector(
                director_target("drivers/R580/a", ASSIGNED),
                director_target("drivers/R580/b", ASSIGNED),
            ),
            "names 2 bundles for this node, not one",
        ),
        (
            CachedDirector(director_target("drivers/R580/a", {**ASSIGNED, "node_id": "../x"})),
            "'node_id'",
        ),
        (
            CachedDirector(director_target("drivers/R580/a", {**ASSIGNED, "extra": 1})),
            "unknown field(s) extra",
        ),
        (CachedDirector(director_target("drivers/R580/a", "counter 3")), "expected a JSON object"),
    ],
    ids=["two-bundles", "bad-node-id", "unknown-field", "not-an-object"],
)
def test_a_directive_that_is_not_one_is_refused(director: CachedDirector, refusal: str) -> None:
    with pytest.raises(UpdateRefused, match=re.escape(refusal)):
        read_directive(director)  # type: ignore[arg-type]


def test_a_listed_target_without_verified_info_assigns_nothing() -> None:
    lost = CachedDirector(director_target("drivers/R580/a", ASSIGNED), lost=True)
    assert read_directive(lost) is None  # type: ignore[arg-type]
