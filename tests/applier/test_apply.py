"""The applier's verdicts: health-gate rollback, the boot counter, drain, hooks, tampering."""

from __future__ import annotations

import hashlib
import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.channel import ImageChannel
from agent.identity import enroll
from applier.drain import Drain, Drained, SimulatedActivity
from fleet.maintenance import parse_windows
from gpuward.node import run_once
from node.journal import load_journal
from node.spool import BUNDLE, TARGET, has_request, write_spool
from tests.applier.helpers import NEW, Node, node_with
from tests.conftest import Site


def test_a_healthy_update_commits_into_the_inactive_slot(site: Site, tmp_path: Path) -> None:
    node, old = node_with(site, tmp_path / "node")
    new = node.spool_newest()

    assert node.outcome() == "committed"

    journal = load_journal(node.journal_file)
    assert (journal.state, journal.slot, journal.previous, journal.sha256) == (
        "committed",
        "b",
        "a",
        new,
    )
    assert node.slots.active() == "b"
    node.assert_complete("b", new)
    node.assert_complete("a", old)  # the previous slot stays, for the next rollback
    assert not has_request(node.config.spool_dir)


def test_health_gate_failure_rolls_back(site: Site, tmp_path: Path) -> None:
    node, old = node_with(site, tmp_path / "node", f'unhealthy_drivers = ["{NEW}"]\n')
    node.spool_newest()

    done = node.apply()

    assert done.returncode == 3, done.stderr
    report = json.loads(done.stdout)
    assert report["outcome"] == "rolled-back" and report["active_slot"] == "a"
    assert "failed health" in report["reason"] and "XID 79" in report["reason"]
    assert load_journal(node.journal_file).state == "rolled-back"
    node.assert_complete("a", old)


def test_boot_counter_rolls_back_an_update_that_never_confirms(site: Site, tmp_path: Path) -> None:
    node, old = node_with(site, tmp_path / "node")
    node.spool_newest()

    # The node dies every time the gate looks (a driver that hangs the host, say).
    for start in (1, 2, 3):
        assert node.apply(crash_at="gate:before").returncode == -signal.SIGKILL
        journal = load_journal(node.journal_file)
        assert (journal.state, journal.boots, node.slots.active()) == ("verifying", start, "b")

    assert node.outcome(crash_at="gate:before") == "rolled-back"  # never reaches the gate

    journal = load_journal(node.journal_file)
    assert journal.state == "rolled-back" and "not confirmed after 3 starts" in journal.reason
    assert node.slots.active() == "a"
    node.assert_complete("a", old)


def test_drain_timeout_defers_cleanly_and_a_later_start_finishes(
    site: Site, tmp_path: Path
) -> None:
    busy = "compute_processes = 3\n[applier]\ndrain_max_wait_s = 0\n"
    node, _ = node_with(site, tmp_path / "node", busy)
    new = node.spool_newest()
    running = node.files("a")

    assert node.outcome() == "deferred"

    journal = load_journal(node.journal_file)
    assert journal.state == "staged" and "3 compute processes" in journal.reason
    assert node.slots.active() == "a" and node.files("a") == running
    node.assert_complete("b", new)  # staged, verified, waiting
    assert not has_request(node.config.spool_dir)

    node.toml.write_text(node.toml.read_text().replace("compute_processes = 3", ""))
    assert node.outcome() == "committed"
    assert node.slots.active() == "b"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Emptying:
    """GPUs whose jobs finish one poll at a time."""

    def __init__(self, polls_busy: int) -> None:
        self.left = polls_busy

    def compute_processes(self) -> int:
        self.left -= 1
        return 1 if self.left >= 0 else 0


def test_drain_waits_for_the_gpus_to_empty() -> None:
    clock = FakeClock()
    drain = Drain(Emptying(3), max_wait_s=600, poll_s=10, clock=clock, sleep=clock.sleep)
    assert drain.wait() == Drained(True, "the GPUs are idle")
    assert clock.slept == [10, 10, 10]


def test_drain_gives_up_at_the_max_wait() -> None:
    clock = FakeClock()
    drain = Drain(SimulatedActivity(2), max_wait_s=25, poll_s=10, clock=clock, sleep=clock.sleep)
    drained = drain.wait()
    assert not drained.ready and drained.reason.startswith("deferred: 2 compute processes")
    assert "maintenance window" not in drained.reason  # none configured
    assert clock.slept == [10, 10, 5]


# Saturday 2026-11-28, 01:00 UTC, on the fake clock's start.
SATURDAY_1AM = datetime(2026, 11, 28, 1, tzinfo=UTC).timestamp()
WINDOWS = parse_windows(["Sat 02:00-06:00", "daily 03:00-04:00"])


def _busy_drain(clock: FakeClock, max_wait_s: float, poll_s: float = 600) -> Drain:
    return Drain(
        SimulatedActivity(4),
        max_wait_s=max_wait_s,
        poll_s=poll_s,
        windows=WINDOWS,
        clock=clock,
        sleep=clock.sleep,
        wall=lambda: SATURDAY_1AM + clock.now - 1000.0,
    )


def test_busy_gpus_inside_a_window_go_ahead_at_once() -> None:
    clock = FakeClock()
    clock.now += 3600  # 02:00: the Saturday window opens
    drained = _busy_drain(clock, max_wait_s=0).wait()
    assert drained == Drained(
        True, "inside the maintenance window 'Sat 02:00-06:00' (4 compute processes)"
    )
    assert clock.slept == []


def test_a_window_opening_during_the_wait_ends_it() -> None:
    clock = FakeClock()
    drained = _busy_drain(clock, max_wait_s=7200).wait()
    assert drained.ready and "'Sat 02:00-06:00'" in drained.reason
    assert clock.slept == [600] * 6  # polled until 02:00


def test_outside_any_window_the_update_defers_naming_the_next_one() -> None:
    clock = FakeClock()
    clock.now += 5 * 3600  # 06:00, just after both windows closed
    drained = _busy_drain(clock, max_wait_s=1800).wait()
    assert not drained.ready
    assert drained.reason == (
        "deferred: 4 compute processes still ran after 1800s; the update stays staged until "
        "the next start; the next maintenance window ('daily 03:00-04:00') opens "
        "2026-11-29 03:00 UTC"
    )
    assert clock.slept == [600, 600, 600]


def test_inside_a_window_the_applier_updates_a_busy_node_after_the_hook(
    site: Site, tmp_path: Path
) -> None:
    log = tmp_path / "hooks.log"
    always = (
        "compute_processes = 3\n[applier]\ndrain_max_wait_s = 0\n"
        'maintenance_windows = ["daily 00:00-24:00"]\n'
        f'pre_drain = ["sh", "-c", "echo cordon >> {log}"]\n'
    )
    node, _ = node_with(site, tmp_path / "node", always)
    node.spool_newest()

    assert node.outcome() == "committed"
    assert node.slots.active() == "b"
    assert log.read_text() == "cordon\n"


def test_outside_a_window_the_deferral_names_when_the_next_opens(
    site: Site, tmp_path: Path
) -> None:
    later = datetime.now(UTC) + timedelta(days=2)  # never open now, whatever the time
    window = f"{later:%a} 03:00-04:00"
    busy = (
        "compute_processes = 3\n[applier]\ndrain_max_wait_s = 0\n"
        f'maintenance_windows = ["{window}"]\n'
    )
    node, _ = node_with(site, tmp_path / "node", busy)
    enroll(node.config)
    node.spool_newest()

    assert node.outcome() == "deferred"

    opens = f"the next maintenance window ('{window}') opens {later:%Y-%m-%d} 03:00 UTC"
    journal = load_journal(node.journal_file)
    assert journal.state == "staged" and journal.reason.startswith("deferred: 3 compute")
    assert opens in journal.reason
    reported = run_once(node.config).outcome
    assert reported.update == "staged" and "deferred" in reported.reason
    assert opens in reported.reason
    assert node.slots.active() == "a"


def test_hooks_run_around_the_update(site: Site, tmp_path: Path) -> None:
    log = tmp_path / "hooks.log"
    hooks = (
        f'pre_drain = ["sh", "-c", "echo cordon >> {log}"]\n'
        f'post_commit = ["sh", "-c", "echo uncordon >> {log}"]\n'
    )
    node, _ = node_with(site, tmp_path / "node", "[applier]\n" + hooks)
    node.spool_newest()

    assert node.outcome() == "committed"
    assert log.read_text() == "cordon\nuncordon\n"


@pytest.mark.parametrize(
    "hook", ['["false"]', '["sleep", "30"]', '["/nonexistent/cordon"]'], ids=str
)
def test_a_failing_pre_drain_hook_defers(site: Site, tmp_path: Path, hook: str) -> None:
    node, _ = node_with(
        site, tmp_path / "node", f"[applier]\nhook_timeout_s = 1\npre_drain = {hook}\n"
    )
    node.spool_newest()

    assert node.outcome() == "deferred"
    journal = load_journal(node.journal_file)
    assert journal.state == "staged" and "pre-drain hook" in journal.reason
    assert node.slots.active() == "a"


def _evil_bundle(node: Node) -> None:
    (node.config.spool_dir / BUNDLE).write_bytes(b"not the signed bundle\n" * 100)


def _edit_target_to_match(node: Node) -> None:
    """What an attacker holding the agent's uid does: make the request match the swap."""
    _evil_bundle(node)
    data = (node.config.spool_dir / BUNDLE).read_bytes()
    doc = json.loads((node.config.spool_dir / TARGET).read_text())
    doc["info"]["length"] = len(data)
    doc["info"]["hashes"] = {"sha256": hashlib.sha256(data).hexdigest()}
    (node.config.spool_dir / TARGET).write_text(json.dumps(doc))


def _flip_a_byte(node: Node) -> None:
    bundle = node.config.spool_dir / BUNDLE
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 1
    bundle.write_bytes(bytes(data))


def _rename_target(node: Node) -> None:
    doc = json.loads((node.config.spool_dir / TARGET).read_text())
    doc["path"] = doc["path"].replace(NEW, "580.99.99")
    (node.config.spool_dir / TARGET).write_text(json.dumps(doc))


def _edit_manifest(node: Node) -> None:
    doc = json.loads((node.config.spool_dir / TARGET).read_text())
    doc["info"]["custom"]["manifest"]["driver_version"] = "580.99.99"
    (node.config.spool_dir / TARGET).write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "tamper", [_flip_a_byte, _evil_bundle, _edit_target_to_match, _rename_target, _edit_manifest]
)
def test_a_spool_tampered_with_after_staging_is_refused(
    site: Site, tmp_path: Path, tamper: object
) -> None:
    node, old = node_with(site, tmp_path / "node")
    node.spool_newest()
    running = node.files("a")
    assert callable(tamper)
    tamper(node)

    done = node.apply()

    assert done.returncode == 3, done.stderr
    assert json.loads(done.stdout)["outcome"] == "refused"
    assert load_journal(node.journal_file).state == "failed"
    assert node.slots.active() == "a" and node.files("a") == running
    node.assert_complete("a", old)
    assert node.slots.content("b") is None  # nothing was installed
    assert not has_request(node.config.spool_dir)  # consumed, so the path unit stops


def test_an_older_signed_bundle_is_refused(site: Site, tmp_path: Path) -> None:
    """A compromised agent may spool any signed bundle, including an old one with a hole."""
    node, old = node_with(site, tmp_path / "node")
    node.spool_newest()
    assert node.outcome() == "committed"
    channel = ImageChannel(node.config)
    channel.refresh()
    (older,) = [c for c in channel.candidates(node.config.branch) if c.sha256 == old]
    write_spool(node.config.spool_dir, older.info, channel.fetch(older.info))

    done = node.apply()

    assert done.returncode == 3, done.stderr
    assert (
        "installs an older bundle only when the director assigns it"
        in json.loads(done.stdout)["reason"]
    )
    assert node.slots.active() == "b"
