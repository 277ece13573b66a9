"""The packaged update path end to end: the server assigns, the unprivileged
agent verifies and spools, ``gpuward agent apply`` (its own process, as the
root oneshot runs it) installs, and the agent's next report says what happened.
"""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

from agent.identity import enroll
from gpuward.node import run_once
from keys.image_repo import PublishedBundle
from node.config import load_config
from node.journal import load_journal
from node.spool import has_request
from tests.applier.helpers import NEW, OLD, Node
from tests.conftest import GPU_NAME, Site


def _node(site: Site, folder: Path, unhealthy: str = "") -> Node:
    folder.mkdir()
    director = f'[director]\ntrusted_root = "{site.base / "director-root.json"}"\n'
    simulated = f'[simulated]\ncount = 2\nname = "{GPU_NAME}"\nunhealthy_drivers = [{unhealthy}]\n'
    toml = site.agent_toml(folder, extra=director + simulated, mode="applier")
    config = load_config(toml)
    enroll(config)
    return Node(toml, config)


def _new_assigned_and_spooled(site: Site, node: Node) -> tuple[PublishedBundle, PublishedBundle]:
    """``node`` runs ``OLD`` through the applier; ``NEW`` is assigned and spooled."""
    old = site.publish(OLD)
    site.assign("n1", old, 1)
    run_once(node.config)
    assert node.outcome() == "committed"
    run_once(node.config)
    new = site.publish(NEW)
    site.assign("n1", new, 2)
    assert run_once(node.config).outcome.update == "staged"
    return old, new


def _reported(site: Site) -> dict[str, object]:
    report: dict[str, object] = site.fleet()["n1"]["report"]
    return report


def test_assigned_bundle_goes_through_the_applier_and_is_reported(
    site: Site, tmp_path: Path
) -> None:
    node = _node(site, tmp_path / "node")
    old = site.publish(OLD)
    site.assign("n1", old, 1)

    staged = run_once(node.config)
    assert staged.outcome.update == "staged" and staged.report_sent
    assert has_request(node.config.spool_dir)
    assert node.slots.active() is None  # the agent installed nothing itself
    assert _reported(site)["update"] == "staged"
    # While the applier has not run, the agent spools nothing more.
    assert run_once(node.config).outcome.update == "staged"

    assert node.outcome() == "committed"

    committed = run_once(node.config)
    assert committed.outcome.update == "committed"
    shown = _reported(site)
    assert (shown["update"], shown["bundle"], shown["driver_version"]) == (
        "committed",
        old.target_path,
        OLD,
    )
    assert "healthy" in str(shown["reason"])
    # Reported once: the next cycle finds the node on its assignment.
    again = run_once(node.config)
    assert again.outcome.update == "up-to-date" and "running the assigned" in again.outcome.reason

    # The slots and the journal are root's, outside the folder the agent owns.
    applier = node.config.applier_dir
    assert not applier.is_relative_to(node.config.state_dir)
    for folder in (applier, node.config.slots_dir, node.slots.path("a")):
        mode = folder.stat()
        assert mode.st_uid == 0 and not mode.st_mode & (stat.S_IWGRP | stat.S_IWOTH), folder
    assert not node.journal_file.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def test_an_unhealthy_bundle_is_rolled_back_and_the_report_says_why(
    site: Site, tmp_path: Path
) -> None:
    node = _node(site, tmp_path / "node", unhealthy=f'"{NEW}"')
    old, _ = _new_assigned_and_spooled(site, node)
    done = node.apply()
    assert done.returncode == 3, done.stderr
    assert json.loads(done.stdout)["outcome"] == "rolled-back"

    rolled = run_once(node.config)
    assert rolled.outcome.update == "rolled-back"
    shown = _reported(site)
    assert (shown["update"], shown["active_slot"], shown["bundle"]) == (
        "rolled-back",
        "a",
        old.target_path,
    )
    assert f"driver {NEW} failed health" in str(shown["reason"])
    assert "XID 79" in str(shown["reason"])
    # The agent remembers: it does not hand the same bundle over again.
    after = run_once(node.config)
    assert after.outcome.update == "up-to-date" and "failed or was refused here before" in (
        after.outcome.reason
    )
    assert not has_request(node.config.spool_dir)


def test_missing_cached_metadata_is_a_clear_refusal(site: Site, tmp_path: Path) -> None:
    node = _node(site, tmp_path / "node")
    site.assign("n1", site.publish(OLD), 1)
    run_once(node.config)
    shutil.rmtree(node.config.metadata_dir)

    done = node.apply()

    assert done.returncode == 3, done.stderr
    reason = json.loads(done.stdout)["reason"]
    assert "cached metadata" in reason and "gpuward agent run --once" in reason
    assert load_journal(node.journal_file).state == "failed"
    refused = run_once(node.config)
    assert refused.outcome.update == "refused" and "cached metadata" in refused.outcome.reason
    # The bundle was not at fault: with fresh metadata the agent hands it over again.
    assert load_journal(node.journal_file).sha256 is None
    assert run_once(node.config).outcome.update == "staged"
    assert node.outcome() == "committed"


def test_a_refused_bundle_is_reported_once_and_not_spooled_again(
    site: Site, tmp_path: Path
) -> None:
    node = _node(site, tmp_path / "node")
    _, new = _new_assigned_and_spooled(site, node)
    bundle = node.config.spool_dir / "bundle"
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 1  # as the unprivileged user could
    bundle.write_bytes(bytes(data))

    assert node.outcome() == "refused"
    assert load_journal(node.journal_file).sha256 == new.sha256

    refused = run_once(node.config)
    assert refused.outcome.update == "refused" and "changed after staging" in (
        refused.outcome.reason
    )
    assert _reported(site)["update"] == "refused"
    again = run_once(node.config)  # reported once, and not handed over again
    assert again.outcome.update == "up-to-date"
    assert "failed or was refused here before" in again.outcome.reason
    assert not has_request(node.config.spool_dir)
    assert _reported(site)["update"] == "up-to-date"

    # Another bundle assigned later is spooled and installed as usual.
    site.assign("n1", site.publish("580.95.05"), 3)
    assert run_once(node.config).outcome.update == "staged"
    assert node.outcome() == "committed"
    assert run_once(node.config).outcome.update == "committed"
    assert node.slots.active() == "b"
