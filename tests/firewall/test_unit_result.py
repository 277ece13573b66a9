"""The packaged agent reports the firewall as gpuward-firewall.service found it.

The unit's command (``gpuward firewall apply --write-state``, run here in the
node's network namespace) enforces the table and leaves its result in the state
file; an agent cycle that cannot read nft itself reports that result: the live
table's digest, drift repaired, when it was checked. A result older than three
check intervals is reported stale, never in sync; a file anyone but root could
have written, a missing or malformed one, is not believed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.cycle import Cycle
from agent.daemon import make_probe
from fleet.firewall import FirewallReport
from gpuward.node import inline_applier
from node.firewall.policy import FirewallPolicy
from node.firewall.ruleset import digest
from node.firewall.state import STALE_AFTER_CHECKS, UnitResult, write_result
from tests.conftest import Site
from tests.firewall.conftest import BASE_POLICY, NOBODY, Net, config_text, policy

INTERVAL_S = 300
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    folder = tmp_path / "run-gpuward-firewall"
    folder.mkdir(mode=0o755)
    return folder / "state.json"


def _unit(net: Net, tmp_path: Path, state_file: Path) -> dict[str, object]:
    """One run of gpuward-firewall.service's command, as root in the node's namespace."""
    config = tmp_path / "firewall.toml"
    config.write_text(config_text({**BASE_POLICY, "state_file": str(state_file)}))
    done = subprocess.run(
        ["ip", "netns", "exec", net.node, sys.executable, "-m", "gpuward", "firewall", "apply",
         "--config", str(config), "--write-state", "--json"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_the_report_carries_the_units_result(
    site: Site, net: Net, tmp_path: Path, state_file: Path
) -> None:
    site.publish("580.65.06")
    config = dataclasses.replace(site.agent(), firewall=policy(state_file=str(state_file)))
    assert config.firewall is not None
    cycle = Cycle(
        config,
        make_probe(config),
        firewall=UnitResult(config.firewall),
        inline_applier=inline_applier(config),
    )

    _unit(net, tmp_path, state_file)
    assert state_file.stat().st_mode & 0o777 == 0o644 and state_file.stat().st_uid == 0
    live = net.nft.list_table()
    assert live is not None
    first = cycle.run().report.firewall
    assert first is not None
    assert (first.action, first.in_sync, first.digest) == ("applied", True, digest(live))
    assert first.checked_at is not None

    net.nft_cli("flush", "chain", "inet", "gpuward", "output")  # someone empties the chain
    _unit(net, tmp_path, state_file)  # the timer's next run repairs it
    second = cycle.run().report.firewall
    assert second is not None
    assert (second.action, second.digest) == ("repaired", first.digest)
    assert second.drift
    stored = site.fleet()[config.node_id]["report"]["firewall"]
    assert (stored["action"], stored["digest"]) == ("repaired", first.digest)
    assert stored["checked_at"] == second.checked_at


def _written(state_file: Path, checked_at: int) -> FirewallReport:
    report = FirewallReport("host", "ab" * 32, True, "unchanged", (), (), None)
    write_result(state_file, report, checked_at)
    return dataclasses.replace(report, checked_at=checked_at)


def _policy(state_file: Path) -> FirewallPolicy:
    return policy(state_file=str(state_file), check_interval_s=INTERVAL_S)


def test_an_old_result_is_reported_stale_not_in_sync(state_file: Path) -> None:
    written = _written(state_file, 1_800_000_000)
    limit = 1_800_000_000 + STALE_AFTER_CHECKS * INTERVAL_S
    assert UnitResult(_policy(state_file), clock=lambda: limit).cycle() == written
    stale = UnitResult(_policy(state_file), clock=lambda: limit + 1).cycle()
    assert (stale.action, stale.in_sync, stale.digest) == ("stale", False, written.digest)
    assert stale.error is not None and "gpuward-firewall.timer" in stale.error
    assert f"{STALE_AFTER_CHECKS * INTERVAL_S + 1}s old" in stale.error


@pytest.mark.parametrize(
    ("tamper", "error"),
    [
        (lambda f: os.chown(f, NOBODY, NOBODY), r"not root's alone \(owner uid 65534"),
        (lambda f: f.chmod(0o666), r"not root's alone \(owner uid 0, mode 0666\)"),
        (lambda f: f.parent.chmod(0o777), "folder .* is not root's alone"),
        (lambda f: f.unlink(), "No such file"),
        (lambda f: f.write_text("{not json"), "Expecting property name"),
        (lambda f: f.write_text('{"mode": "host"}'), "missing field"),
        (lambda f: f.write_text(" " * 300_000), "larger than"),
    ],
    ids=["other-owner", "world-writable", "open-folder", "missing", "garbage", "partial", "huge"],
)
def test_an_untrustworthy_result_is_not_believed(
    state_file: Path, tamper: Callable[[Path], object], error: str
) -> None:
    _written(state_file, 1_800_000_000)
    tamper(state_file)
    seen = UnitResult(_policy(state_file), clock=lambda: 1_800_000_000).cycle()
    assert (seen.action, seen.in_sync, seen.digest) == ("failed", False, None)
    assert seen.error is not None
    assert "is gpuward-firewall.timer enabled?" in seen.error
    assert re.search(error, seen.error), seen.error


def test_a_symlinked_result_is_not_followed(state_file: Path, tmp_path: Path) -> None:
    """A link planted where the file goes (to a result someone else controls)."""
    elsewhere = tmp_path / "elsewhere.json"
    _written(elsewhere, 1_800_000_000)
    state_file.symlink_to(elsewhere)
    seen = UnitResult(_policy(state_file), clock=lambda: 1_800_000_000).cycle()
    assert seen.action == "failed" and seen.error is not None
    assert "Too many levels of symbolic links" in seen.error
