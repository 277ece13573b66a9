"""Root never follows the agent's links to its spool or metadata.

The agent's account owns its state folder, so it can replace ``spool/`` (or any
folder on the way to what the applier reads) with a symbolic link. An applier
that followed it would read, and then unlink, ``target.json`` and ``bundle`` in
any folder the link names. Here a real unprivileged account (as systemd's
``User=gpuward``) owns the state folder and makes each swap through
``runuser``; the real applier, as root, must refuse, read and remove nothing
outside the agent's own folders, and leave the node's slots as they were.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from node.journal import load_journal
from tests.applier.helpers import Node, node_with
from tests.cli.test_service_files import account, shared
from tests.conftest import Site

__all__ = ["account", "shared"]  # fixtures


def as_agent(agent: pwd.struct_passwd, script: str) -> None:
    """``script`` (sh) run as the agent's account, as a compromised agent would."""
    done = subprocess.run(
        ["runuser", "-u", agent.pw_name, "--", "sh", "-euc", script],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def give(path: Path, agent: pwd.struct_passwd) -> None:
    """``path`` and all in it to the agent, as systemd's StateDirectory= does."""
    for folder, _, files in os.walk(path):
        for name in [folder, *(os.path.join(folder, f) for f in files)]:
            os.chown(name, agent.pw_uid, agent.pw_gid, follow_symlinks=False)


def agent_node(site: Site, shared: Path, agent: pwd.struct_passwd) -> tuple[Node, dict[str, bytes]]:
    """A node with ``NEW`` spooled, its state folder the agent's; the running slot's files."""
    node, _ = node_with(site, shared / "node")
    node.spool_newest()
    give(node.config.state_dir, agent)
    return node, node.files("a")


def victim(shared: Path, node: Node) -> tuple[Path, dict[str, bytes]]:
    """A folder of root's that the attacker wants emptied: it holds a ``target.json``
    and a ``bundle`` (the genuine request, so that an applier following the link
    would accept it and unlink both)."""
    folder = shared / "root-owned" / "spool"
    shutil.copytree(node.config.spool_dir, folder)
    (folder / "keep.txt").write_text("root's\n")
    return folder, {p.name: p.read_bytes() for p in folder.iterdir()}


def refused(node: Node, running: dict[str, bytes], expected: str) -> str:
    """The applier refused with ``expected`` in its reason; the slots are untouched."""
    done = node.apply(timeout=60)
    assert done.returncode == 3, done.stderr
    result = json.loads(done.stdout)
    assert (result["outcome"], result["active_slot"]) == ("refused", "a")
    assert expected in result["reason"], result["reason"]
    journal = load_journal(node.journal_file)
    assert journal.state == "failed" and journal.reason == result["reason"]
    assert node.slots.active() == "a" and node.files("a") == running
    assert node.slots.content("b") is None
    assert sorted(p.name for p in node.slots.root.iterdir()) == ["a", "active"]
    return str(result["reason"])


def test_a_spool_swapped_for_a_link_is_refused_and_nothing_is_removed(
    site: Site, shared: Path, account: pwd.struct_passwd
) -> None:
    node, running = agent_node(site, shared, account)
    target, before = victim(shared, node)
    spool = node.config.spool_dir
    as_agent(account, f"rm -r {shlex.quote(str(spool))}; ln -s {shlex.quote(str(target))} {spool}")

    reason = refused(node, running, f"{spool} is a symbolic link, not a folder")

    assert reason.startswith(f"the spool {spool} is refused")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert spool.is_symlink()  # not even the link is removed: the agent's to fix


def test_a_folder_of_another_owner_as_the_spool_is_refused(
    site: Site, shared: Path, account: pwd.struct_passwd
) -> None:
    """The agent renames a folder root left in its state folder to ``spool``."""
    node, running = agent_node(site, shared, account)
    left = node.config.state_dir / "left-by-root"
    shutil.copytree(node.config.spool_dir, left)
    before = {p.name: p.read_bytes() for p in left.iterdir()}
    spool = node.config.spool_dir
    as_agent(account, f"rm -r {spool}; mv {left} {spool}")

    refused(node, running, f"{spool} belongs to uid 0, not to the agent's account")

    assert {p.name: p.read_bytes() for p in spool.iterdir()} == before


def test_a_metadata_folder_on_the_way_swapped_for_a_link_is_refused(
    site: Site, shared: Path, account: pwd.struct_passwd
) -> None:
    """``tuf/`` is a component above the metadata folder the applier copies."""
    node, running = agent_node(site, shared, account)
    tuf = node.config.metadata_dir.parent
    elsewhere = node.config.state_dir / "moved"
    as_agent(account, f"mkdir {elsewhere}; mv {tuf} {elsewhere}/tuf; ln -s {elsewhere}/tuf {tuf}")

    reason = refused(node, running, f"{tuf} is a symbolic link, not a folder")

    assert "cached metadata" in reason
    # The bundle is not at fault: not named, so the agent may spool it again.
    assert load_journal(node.journal_file).sha256 is None
    assert (elsewhere / "tuf/image/timestamp.json").is_file()


@pytest.mark.parametrize("swap", ["link", "folder"])
def test_a_state_folder_the_agent_can_swap_is_refused(
    site: Site, shared: Path, account: pwd.struct_passwd, swap: str
) -> None:
    """Where the folder above the state folder is the agent's too (a mistake in
    set-up), the agent can swap the state folder itself, for a link or for a folder
    of its own: the applier trusts nothing reached through that folder."""
    node, running = agent_node(site, shared, account)
    target, before = victim(shared, node)
    state = node.config.state_dir
    os.chown(state.parent, account.pw_uid, account.pw_gid)
    fake = state.with_name("fake")
    replace = (
        f"ln -s {target.parent} {state}"  # where "spool" is the victim
        if swap == "link"
        else f"mkdir -p {fake}/spool; cp {state}.old/spool/* {fake}/spool; mv {fake} {state}"
    )
    as_agent(account, f"mv {state} {state}.old; {replace}")

    reason = refused(node, running, f"{state.parent} belongs to uid {account.pw_uid}, not root")

    assert reason.startswith(f"the spool {node.config.spool_dir} is refused")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
