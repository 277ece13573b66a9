"""The firewall against real kernel nftables and real connections.

Each test gets a fresh node / update server / internet topology (conftest).
The update server is reached by name through a fake resolver, so the tests
need no DNS and exercise the resolve step as the agent runs it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleet.report import HealthReport
from node.firewall.enforcer import Enforcer
from node.firewall.nft import Nft
from node.firewall.ruleset import digest
from tests.firewall.conftest import (
    BASE_POLICY,
    INTERNET_IP,
    NOBODY,
    NODE_IP_TOWARDS_INTERNET,
    SERVER_IP,
    UPDATE_PORT,
    CgroupSandbox,
    Net,
    config_text,
    fake_dns,
    policy,
)

DNS = fake_dns({"updates.test": [SERVER_IP]})
REPO = Path(__file__).resolve().parents[2]


def test_host_mode_allows_the_allowlist_and_drops_and_logs_the_rest(net: Net) -> None:
    by_name = policy(update_endpoints=[f"updates.test:{UPDATE_PORT}"], log_prefix="gw-test-drop: ")
    net.serve(net.server, "tcp", SERVER_IP, UPDATE_PORT)
    net.serve(net.server, "tcp", SERVER_IP, 9999)  # same host, port not allowed
    net.serve(net.server, "udp", SERVER_IP, 53)  # the configured resolver
    net.serve(net.internet, "tcp", INTERNET_IP, UPDATE_PORT)
    net.serve(net.internet, "udp", INTERNET_IP, 53)
    # Before the firewall, everything is reachable: the drops below are its doing.
    assert net.reaches("tcp", INTERNET_IP, UPDATE_PORT)
    assert net.reaches("tcp", SERVER_IP, 9999)

    report = Enforcer(by_name, net.nft, resolver=DNS).cycle()
    assert (report.action, report.in_sync, report.error) == ("applied", True, None)

    assert net.reaches("tcp", SERVER_IP, UPDATE_PORT)
    assert net.reaches("udp", SERVER_IP, 53)
    assert net.blocked("tcp", INTERNET_IP, UPDATE_PORT)
    assert net.blocked("udp", INTERNET_IP, 53)
    assert net.blocked("tcp", SERVER_IP, 9999)
    # Dropped and logged: the kernel log of a non-initial namespace is off
    # (net.netfilter.nf_log_all_netns=0), so the rate-limited log rule's own
    # counter and prefix are the evidence.
    assert net.counter("log dropped packets (rate-limited)") >= 3
    assert net.counter("drop everything else") >= 3
    assert 'log prefix "gw-test-drop: "' in net.nft_cli(
        "list", "chain", "inet", "gpuward", "restricted"
    )
    assert net.counter("update updates.test = 10.91.1.2") >= 1


def test_loopback_and_replies_to_inbound_connections_pass(net: Net) -> None:
    net.serve(net.node, "tcp", "127.0.0.1", 7000)
    net.serve(net.node, "tcp", NODE_IP_TOWARDS_INTERNET, 7001)
    Enforcer(policy(), net.nft).cycle()

    assert net.reaches("tcp", "127.0.0.1", 7000)
    # The node's SYN-ACK to the internet host is output traffic outside the
    # allowlist: only the established/related rule lets it out.
    inbound = ["ip", "netns", "exec", net.internet]
    assert net.reaches("tcp", NODE_IP_TOWARDS_INTERNET, 7001, prefix=inbound)
    # ...while the node itself still cannot open a connection to that host.
    net.serve(net.internet, "tcp", INTERNET_IP, 7002)
    assert net.blocked("tcp", INTERNET_IP, 7002)


def test_nvidia_apps_mode_restricts_the_listed_uid_only(net: Net) -> None:
    net.serve(net.server, "tcp", SERVER_IP, UPDATE_PORT)
    net.serve(net.internet, "tcp", INTERNET_IP, UPDATE_PORT)
    report = Enforcer(policy(mode="nvidia-apps", restricted_users=[NOBODY]), net.nft).cycle()
    assert report.action == "applied"

    assert net.blocked("tcp", INTERNET_IP, UPDATE_PORT, uid=NOBODY)
    assert net.reaches("tcp", SERVER_IP, UPDATE_PORT, uid=NOBODY)  # the allowlist applies
    # The agent (root here) is not restricted in this mode.
    assert net.reaches("tcp", SERVER_IP, UPDATE_PORT)
    assert net.reaches("tcp", INTERNET_IP, UPDATE_PORT)
    assert net.counter("drop everything else") >= 1


def test_nvidia_apps_mode_restricts_a_real_cgroup(net: Net, cgroup_sandbox: CgroupSandbox) -> None:
    net.serve(net.server, "tcp", SERVER_IP, UPDATE_PORT)
    net.serve(net.internet, "tcp", INTERNET_IP, UPDATE_PORT)
    nft = Nft(prefix=cgroup_sandbox.nft_prefix(net.node))
    enforcer = Enforcer(
        policy(mode="nvidia-apps", restricted_cgroups=[cgroup_sandbox.name]),
        nft,
        cgroup_root=cgroup_sandbox.cgroup_root,
    )
    report = enforcer.cycle()
    assert (report.action, report.notes) == ("applied", ())

    in_cgroup = cgroup_sandbox.inside(net.node)
    assert net.blocked("tcp", INTERNET_IP, UPDATE_PORT, prefix=in_cgroup)
    assert net.reaches("tcp", SERVER_IP, UPDATE_PORT, prefix=in_cgroup)
    assert net.reaches("tcp", INTERNET_IP, UPDATE_PORT)  # outside the cgroup
    # Read back structurally: the cgroup rule matches what was rendered.
    assert enforcer.cycle().action == "unchanged"


TAMPERING: dict[str, tuple[Callable[[Net], object], str | tuple[str, ...]]] = {
    "rule-deleted": (
        lambda net: net.nft_cli(
            "delete", "rule", "inet", "gpuward", *net.handle_of("dns 10.91.1.2")
        ),
        "chain restricted: missing rule 'dns 10.91.1.2'",
    ),
    "accept-all-added": (
        lambda net: net.nft_cli("insert", "rule", "inet", "gpuward", "restricted", "accept"),
        'chain restricted: unexpected rule [{"accept":null}]',
    ),
    "table-dormant": (
        lambda net: net.nft_cli("add", "table", "inet", "gpuward", "{ flags dormant; }"),
        # nft 1.0.6 prints broken JSON for a dormant table; later ones list the flag.
        (
            "nft -j list table inet gpuward printed JSON that does not parse",
            "table attributes differ",
        ),
    ),
    "table-deleted": (
        lambda net: net.nft_cli("delete", "table", "inet", "gpuward"),
        "table inet gpuward is missing",
    ),
}


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_drift_is_detected_reported_and_repaired(net: Net, tmp_path: Path, how: str) -> None:
    tamper, expected_drift = TAMPERING[how]
    config = tmp_path / "agent.toml"
    config.write_text(config_text(BASE_POLICY))
    enforcer = Enforcer(policy(), net.nft)
    first = enforcer.cycle()
    assert (first.action, enforcer.cycle().action) == ("applied", "unchanged")

    tamper(net)
    checked = _cli(net, "check", config)
    assert checked.returncode == 3, checked.stderr
    assert any(line.startswith(expected_drift) for line in checked.stdout.splitlines()), (
        checked.stdout
    )

    report = enforcer.cycle()
    assert report.action == "repaired"
    assert any(line.startswith(expected_drift) for line in report.drift), report.drift
    assert (report.in_sync, report.digest) == (True, first.digest)
    assert enforcer.cycle().action == "unchanged"
    assert _cli(net, "check", config).returncode == 0
    # The report carries it to the server intact.
    health = HealthReport("node-1", 0, "a", None, None, "up-to-date", "", (), firewall=report)
    assert HealthReport.from_dict(health.to_dict()).firewall == report


def test_dns_changes_are_followed_on_schedule_and_failures_keep_the_old_rules(net: Net) -> None:
    table = {"updates.test": [SERVER_IP]}
    now = [0.0]
    enforcer = Enforcer(
        policy(update_endpoints=["updates.test:443"], resolve_interval_s=60),
        net.nft,
        resolver=fake_dns(table),
        clock=lambda: now[0],
    )
    enforcer.cycle()
    table["updates.test"] = ["10.91.1.3"]
    now[0] = 59.0
    assert enforcer.cycle().action == "unchanged"  # not due yet
    now[0] = 60.0
    moved = enforcer.cycle()
    assert (moved.action, moved.drift) == ("applied", ())
    assert net.counter("update updates.test = 10.91.1.3") == 0  # raises if the rule is absent

    del table["updates.test"]
    now[0] = 200.0
    kept = enforcer.cycle()
    assert (kept.action, kept.digest) == ("unchanged", moved.digest)
    assert kept.notes[0].startswith("re-resolving failed, kept the previous addresses")


BAD_CONFIGS: dict[str, tuple[dict[str, Any], str]] = {
    "bad-cidr": (
        {"allow": [{"to": "10.0.0.1/8", "proto": "tcp", "port": 1}]},
        "firewall.allow[0].to: '10.0.0.1/8' is not a valid address or CIDR",
    ),
    "unresolvable": (
        {"update_endpoints": ["no-such-host.invalid:443"]},
        "cannot resolve 'no-such-host.invalid'",
    ),
    "unknown-mode": ({"mode": "everything"}, "firewall: 'mode' must be one of host, nvidia-apps"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_a_malformed_config_is_refused_and_the_table_stays(
    net: Net, tmp_path: Path, name: str
) -> None:
    good = tmp_path / "good.toml"
    good.write_text(config_text(BASE_POLICY))
    assert _cli(net, "apply", good).returncode == 0
    before = digest(net.nft.list_table() or [])
    fields, message = BAD_CONFIGS[name]
    bad = tmp_path / "bad.toml"
    bad.write_text(config_text({**BASE_POLICY, **fields}))

    done = _cli(net, "apply", bad)
    assert done.returncode == 1
    # One line for people, after the agent's structured log lines; no traceback.
    assert done.stderr.strip().splitlines()[-1].startswith(f"gpuward: error: {message}")
    assert "Traceback" not in done.stderr
    assert digest(net.nft.list_table() or []) == before


def test_a_ruleset_nft_rejects_leaves_the_previous_table_whole(net: Net, tmp_path: Path) -> None:
    Enforcer(policy(), net.nft).cycle()
    before = net.nft.list_table()
    # The cgroup exists where the agent looked but not where nft looks (as when
    # it vanishes between the two): nft refuses the rule, so the whole table.
    (tmp_path / "gw-test-gone.slice").mkdir()
    broken = policy(mode="nvidia-apps", restricted_cgroups=["gw-test-gone.slice"])
    report = Enforcer(broken, net.nft, cgroup_root=tmp_path).cycle()
    assert (report.action, report.in_sync) == ("failed", False)
    assert report.error is not None and "cgroupv2 path fails" in report.error
    assert net.nft.list_table() == before
    assert report.digest == digest(before or [])


def test_remove_deletes_only_the_gpuward_table(net: Net) -> None:
    net.nft_cli("add", "table", "inet", "other")
    net.nft_cli("add", "chain", "inet", "other", "out", "{ type filter hook output priority 10; }")
    Enforcer(policy(), net.nft).cycle()

    removed = _cli(net, "remove")
    assert (removed.returncode, removed.stdout.strip()) == (0, "removed table inet gpuward")
    assert net.nft.list_table() is None
    assert "chain out" in net.nft_cli("list", "table", "inet", "other")
    assert _cli(net, "remove").stdout.strip() == "no table inet gpuward to remove"


def _cli(net: Net, command: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real command line, run inside the node namespace."""
    args = [
        "ip",
        "netns",
        "exec",
        net.node,
        sys.executable,
        "-m",
        "gpuward",
        "--log-format",
        "json",
    ]
    args += ["firewall", command] + ([] if config is None else ["--config", str(config)])
    return subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=60)
