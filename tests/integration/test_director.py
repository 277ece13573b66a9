"""Uptane-style targeting: the agent installs only what image and director agree on.

Each attack leaves the running slot untouched and says why in the log.
"""

from __future__ import annotations

import shutil

from structlog.testing import capture_logs
from tuf.api.metadata import TargetFile

from agent.cycle_state import load_state
from gpuward.node import run_once
from keys.director_repo import DIRECTOR_FIELD
from keys.tuf_repo import no_passphrase
from node.slots import Slots
from tests.conftest import GPU_NAME, Site


def _directed_install(site: Site) -> None:
    first = site.publish("580.65.06")
    site.assign("node-1", first, counter=1)
    assert run_once(site.agent(directed=True)).outcome.update == "committed"


def _refused(site: Site, reason: str) -> None:
    config = site.agent(directed=True)
    with capture_logs() as logs:
        result = run_once(config)
    assert result.outcome.update == "refused", result.outcome
    assert reason in result.outcome.reason, result.outcome.reason
    refused = [e for e in logs if e["event"] == "update_refused"]
    assert refused and reason in refused[0]["reason"]
    slots = Slots(config.slots_dir)
    assert slots.active() == "a"
    assert slots.content("a").manifest.driver_version == "580.65.06"  # type: ignore[union-attr]


def test_director_assignment_is_installed(site: Site) -> None:
    config = site.agent(directed=True)
    first = site.publish("580.65.06")
    second = site.publish("580.82.07")
    # Enrolling with the server created the node's (empty) director repository.
    nothing = run_once(config).outcome
    assert (nothing.update, nothing.reason) == (
        "up-to-date",
        "the director assigns no bundle to this node",
    )
    site.assign("node-1", first, counter=1)

    result = run_once(config)

    assert result.outcome.update == "committed"
    assert result.report.driver_version == "580.65.06"  # not the newest: what was assigned
    assert load_state(config.state_file).release_counter == 1
    site.assign("node-1", second, counter=2)
    assert run_once(config).outcome.update == "committed"
    assert run_once(config).outcome.update == "up-to-date"


def test_director_can_roll_a_node_back_with_a_higher_counter(site: Site) -> None:
    config = site.agent(directed=True)
    first, second = site.publish("580.65.06"), site.publish("580.82.07")
    site.assign("node-1", second, counter=1)
    run_once(config)
    site.assign("node-1", first, counter=2)  # an operator's rollback

    assert run_once(config).outcome.update == "committed"
    assert run_once(config).report.driver_version == "580.65.06"


def test_director_keys_alone_install_nothing_unsigned(site: Site) -> None:
    """A stolen director key names a bundle the image repository never signed."""
    _directed_install(site)
    evil = site.bundle("580.99.99")
    info = TargetFile.from_file("drivers/R580/evil.bundle", str(evil), ["sha256"])
    assert site.director is not None
    site.director.assign("node-1", info, GPU_NAME, 2)

    _refused(site, "which the image repository did not sign")


def test_wrong_hardware_is_refused(site: Site) -> None:
    _directed_install(site)
    site.assign("node-1", site.publish("580.82.07"), counter=2, hardware="NVIDIA B200")

    _refused(site, "is meant for NVIDIA B200")


def test_lower_release_counter_is_refused(site: Site) -> None:
    """The director's keys sign an older assignment with a lower counter: a rollback."""
    first = site.publish("580.65.06")
    second = site.publish("580.82.07")
    site.assign("node-1", first, counter=5)
    config = site.agent(directed=True)
    run_once(config)
    assert site.director is not None
    node = site.director.node("node-1")
    targets = node.targets()
    info = site.repo.targets("R580").signed.targets[second.target_path]
    forged = TargetFile(
        info.length,
        dict(info.hashes),
        info.path,
        {
            "custom": {
                **(info.custom or {}),
                DIRECTOR_FIELD: {
                    "node_id": "node-1",
                    "hardware_id": GPU_NAME,
                    "release_counter": 4,
                },
            }
        },
    )
    targets.signed.targets = {forged.path: forged}
    node.bump(targets, "targets")
    node.sign_and_write(targets, no_passphrase)
    node.publish_snapshot({"targets": targets.signed.version})

    _refused(site, "below the last installed 5")


def test_image_and_director_disagreeing_is_refused(site: Site) -> None:
    _directed_install(site)
    published = site.publish("580.82.07")
    info = site.repo.targets("R580").signed.targets[published.target_path]
    lying = TargetFile(info.length, {"sha256": "0" * 64}, info.path, dict(info.unrecognized_fields))
    assert site.director is not None
    site.director.assign("node-1", lying, GPU_NAME, 2)

    _refused(site, "disagree on the length or hashes")


def test_another_nodes_assignment_is_refused(site: Site) -> None:
    """The server (or a mirror) hands node-1 the director metadata made for node-2."""
    _directed_install(site)
    site.assign("node-2", site.publish("580.82.07"), counter=2)
    site.assign("node-2", site.publish("580.95.05"), counter=3)  # versions now ahead of node-1's
    assert site.director is not None
    mine = site.director.root / "nodes" / "node-1"
    theirs = site.director.root / "nodes" / "node-2"
    shutil.rmtree(mine)
    shutil.copytree(theirs, mine)

    _refused(site, "is meant for node-2")
