"""The [firewall] config is refused unless it is exactly right; lookups fail loudly."""

from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Any

import pytest

from fleet.errors import GpuwardError, InvalidDocument
from node.firewall.policy import Allowance, Endpoint, FirewallPolicy
from node.firewall.resolve import resolve

GOOD: dict[str, Any] = {
    "mode": "nvidia-apps",
    "resolvers": ["10.0.0.53", "2001:DB8::53"],
    "ntp": ["ntp.example.org", "10.0.0.123"],
    "update_endpoints": ["Updates.Example.org:443", "[2001:db8::1]:8443"],
    "allow": [{"to": "10.20.0.0/16", "proto": "udp", "port": 4789, "comment": "vxlan"}],
    "restricted_users": ["nvidia-persistenced", 1001],
    "restricted_cgroups": ["/nvidia.slice/"],
    "log_prefix": "gpuward-drop: ",
    "log_rate_per_minute": 30,
    "resolve_interval_s": 600,
}


def test_a_full_policy_reads_canonically() -> None:
    policy = FirewallPolicy.from_dict(GOOD)
    assert policy.resolvers == ("10.0.0.53", "2001:db8::53")
    assert policy.update_endpoints == (
        Endpoint("updates.example.org", 443),
        Endpoint("2001:db8::1", 8443),
    )
    assert policy.restricted_cgroups == ("nvidia.slice",)
    assert policy.host_names() == ("ntp.example.org", "updates.example.org")
    assert policy.allowances() == (
        Allowance("dns", "10.0.0.53", "udp", 53),
        Allowance("dns", "10.0.0.53", "tcp", 53),
        Allowance("dns", "2001:db8::53", "udp", 53),
        Allowance("dns", "2001:db8::53", "tcp", 53),
        Allowance("ntp", "ntp.example.org", "udp", 123),
        Allowance("ntp", "10.0.0.123", "udp", 123),
        Allowance("update", "updates.example.org", "tcp", 443),
        Allowance("update", "2001:db8::1", "tcp", 8443),
        Allowance("allow vxlan", "10.20.0.0/16", "udp", 4789),
    )


def test_defaults_are_host_mode_with_nothing_allowed() -> None:
    policy = FirewallPolicy.from_dict({})
    assert (policy.mode, policy.allowances(), policy.log_prefix) == ("host", (), "gpuward-drop: ")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(mode="everything"), "'mode' must be one of host, nvidia-apps"),
        (lambda d: d.update(extra=1), "unknown field"),
        (lambda d: d["allow"][0].update(to="10.0.0.1/8"), "not a valid address or CIDR"),
        (lambda d: d["allow"][0].update(to="10.0.0.0/33"), "not a valid address or CIDR"),
        (lambda d: d["allow"][0].update(to="bad_name!"), "neither an address"),
        (lambda d: d["allow"][0].update(proto="icmp"), "must be one of tcp, udp"),
        (lambda d: d["allow"][0].update(port=0), "between 1 and 65535"),
        (lambda d: d["allow"][0].update(comment='x" accept'), "invalid value"),
        (lambda d: d.update(resolvers=["dns.example.org"]), "must be one IP address"),
        (lambda d: d.update(resolvers=["10.0.0.0/8"]), "must be one IP address"),
        (lambda d: d.update(update_endpoints=["updates.example.org"]), "must be host:port"),
        (lambda d: d.update(update_endpoints=["updates.example.org:70000"]), "between 1 and"),
        (lambda d: d.update(update_endpoints=["10.0.0.0/8:443"]), "one host, not a network"),
        (lambda d: d.update(log_prefix='drop" counter accept'), "invalid value"),
        (lambda d: d.update(log_prefix=""), "invalid value"),
        (lambda d: d.update(log_rate_per_minute=0), "between 1 and 10000"),
        (lambda d: d.update(resolve_interval_s=1), "between 60 and 86400"),
        (lambda d: d.update(restricted_users=[0]), "root cannot be restricted"),
        (lambda d: d.update(restricted_users=["root"]), "root cannot be restricted"),
        (lambda d: d.update(restricted_users=[True]), "must be a uid or a user name"),
        (lambda d: d.update(restricted_cgroups=["../escape"]), "cgroup path"),
        (lambda d: d.update(restricted_cgroups=['a"b']), "cgroup path"),
        (lambda d: d.update(restricted_users=[], restricted_cgroups=[]), "needs restricted"),
        (lambda d: d.update(mode="host"), "apply only in mode"),
        (lambda d: d.update(ntp="ntp.example.org"), "must be a list"),
    ],
)
def test_rejects(change: Any, message: str) -> None:
    doc = copy.deepcopy(GOOD)
    change(doc)
    with pytest.raises(InvalidDocument, match=message):
        FirewallPolicy.from_dict(doc)


def test_the_server_url_becomes_an_update_endpoint_once() -> None:
    endpoint = Endpoint.from_url("https://Updates.Example.org/v1/")
    assert endpoint == Endpoint("updates.example.org", 443)
    assert Endpoint.from_url("http://[2001:db8::1]:8080") == Endpoint("2001:db8::1", 8080)
    policy = FirewallPolicy.from_dict(GOOD)
    assert policy.with_endpoint(endpoint) == policy
    assert policy.with_endpoint(Endpoint("10.1.1.1", 80)).update_endpoints[0].host == "10.1.1.1"
    with pytest.raises(InvalidDocument, match="http"):
        Endpoint.from_url("ftp://updates.example.org")


def _lookup(name: str) -> int:
    return {"nvidia-persistenced": 998}[name]


def test_resolve_sorts_and_deduplicates(tmp_path: Path) -> None:
    (tmp_path / "nvidia.slice").mkdir()
    answers = {
        "ntp.example.org": ["10.0.0.9", "10.0.0.8", "10.0.0.9"],
        "updates.example.org": ["2001:db8::5", "10.0.0.7"],
    }
    resolution = resolve(FirewallPolicy.from_dict(GOOD), answers.__getitem__, _lookup, tmp_path)
    assert resolution.addresses == {
        "ntp.example.org": ("10.0.0.8", "10.0.0.9"),
        "updates.example.org": ("10.0.0.7", "2001:db8::5"),
    }
    assert (resolution.uids, resolution.cgroups) == ((998, 1001), ("nvidia.slice",))
    assert resolve(FirewallPolicy.from_dict(GOOD), answers.__getitem__, _lookup).cgroups == ()


def _fails(name: str) -> list[str]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.mark.parametrize(
    ("resolver", "lookup", "message"),
    [
        (_fails, _lookup, "cannot resolve 'ntp.example.org'.*the firewall was not changed"),
        (lambda name: [], _lookup, "resolves to no address"),
        (lambda name: ["not-an-address"], _lookup, "gave a non-address"),
        (lambda name: [f"10.0.{i // 256}.{i % 256}" for i in range(65)], _lookup, "65 addresses"),
        (lambda name: ["10.0.0.1"], {}.__getitem__, "no user 'nvidia-persistenced'"),
    ],
)
def test_resolve_failures_are_errors_for_people(resolver: Any, lookup: Any, message: str) -> None:
    with pytest.raises(GpuwardError, match=message):
        resolve(FirewallPolicy.from_dict(GOOD), resolver, lookup)
