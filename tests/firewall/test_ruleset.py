"""Rendering is pure, the digest ignores what varies between nodes, diff names what differs."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from fleet.errors import InvalidDocument
from fleet.firewall import FirewallReport
from node.firewall.nft import Nft
from node.firewall.policy import FirewallPolicy
from node.firewall.resolve import Resolution
from node.firewall.ruleset import Rule, diff, digest, render

HOST = FirewallPolicy.from_dict(
    {
        "resolvers": ["10.0.0.53"],
        "update_endpoints": ["updates.example.org:443", "10.0.0.7:443"],
        "allow": [{"to": "2001:db8::/32", "proto": "tcp", "port": 5000}],
    }
)
RESOLVED = Resolution({"updates.example.org": ("10.0.0.7", "10.0.0.8")}, (), ())


def _rules(objects: list[dict[str, Any]], chain: str) -> list[dict[str, Any]]:
    return [o["rule"] for o in objects if "rule" in o and o["rule"]["chain"] == chain]


def test_host_mode_drops_by_default_and_allows_each_address_once() -> None:
    objects = render(HOST, RESOLVED).to_json()
    output = next(o["chain"] for o in objects if o.get("chain", {}).get("name") == "output")
    assert (output["hook"], output["policy"]) == ("output", "drop")
    comments = [r["comment"] for r in _rules(objects, "restricted")]
    assert comments == [
        "dns 10.0.0.53",
        "dns 10.0.0.53",
        "update updates.example.org = 10.0.0.7",
        "update updates.example.org = 10.0.0.8",
        # 10.0.0.7:443 is listed twice in effect: one rule is enough.
        "allow 2001:db8::/32",
        "log dropped packets (rate-limited)",
        "drop everything else",
    ]
    assert _rules(objects, "output")[-1]["expr"] == [{"jump": {"target": "restricted"}}]


def test_nvidia_apps_mode_accepts_by_default_and_jumps_for_listed_uids_and_cgroups() -> None:
    policy = FirewallPolicy.from_dict(
        {"mode": "nvidia-apps", "restricted_users": [1001], "restricted_cgroups": ["a/b.scope"]}
    )
    ruleset = render(policy, Resolution({}, (1001,), ("a/b.scope",)))
    objects = ruleset.to_json()
    output = _rules(objects, "output")
    assert [r["comment"] for r in output] == [
        "loopback",
        "replies and related traffic",
        "restricted uid 1001",
        "restricted cgroup a/b.scope",
    ]
    assert next(o["chain"]["policy"] for o in objects if "chain" in o) == "accept"
    assert 'socket cgroupv2 level 2 "a/b.scope" jump restricted' in ruleset.to_text()
    assert "meta skuid 1001 jump restricted" in ruleset.to_text()


def test_the_script_replaces_the_table_in_one_transaction() -> None:
    script = Nft.script(render(HOST, RESOLVED))
    lines = script.splitlines()
    assert lines[:3] == ["table inet gpuward", "delete table inet gpuward", "table inet gpuward {"]
    assert "ip6 daddr 2001:db8::/32 tcp dport 5000 counter accept" in script


def _as_listed(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What nft -j list prints: a banner, handles, counters with values."""
    listed: list[dict[str, Any]] = [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]
    for handle, obj in enumerate(copy.deepcopy(objects), start=1):
        ((_, body),) = obj.items()
        body["handle"] = handle
        for expr in body.get("expr", []):
            if "counter" in expr:
                expr["counter"] = {"packets": handle * 7, "bytes": handle * 900}
        listed.append(obj)
    return listed


def test_digest_ignores_handles_counters_and_listing_order() -> None:
    expected = render(HOST, RESOLVED).to_json()
    listed = _as_listed(expected)
    chains_last = [o for o in listed if "chain" not in o] + [o for o in listed if "chain" in o]
    assert digest(listed) == digest(chains_last) == digest(expected)
    assert diff(expected, listed) == []


def test_digest_changes_with_the_rules() -> None:
    other = Resolution({"updates.example.org": ("10.0.0.9",)}, (), ())
    assert render(HOST, RESOLVED).digest != render(HOST, other).digest


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda rules: rules.pop(0), ["chain output: missing rule 'loopback'"]),
        (
            lambda rules: rules.insert(0, {**rules[0], "comment": "x", "expr": [{"accept": None}]}),
            ["chain output: unexpected rule 'x' [{\"accept\":null}]"],
        ),
        (lambda rules: rules.reverse(), ["chain output: rules are out of order"]),
    ],
)
def test_diff_names_each_rule_difference(tamper: Any, expected: list[str]) -> None:
    objects = render(HOST, RESOLVED).to_json()
    output = [o["rule"] for o in objects if o.get("rule", {}).get("chain") == "output"]
    tamper(output)
    live = [o for o in objects if o.get("rule", {}).get("chain") != "output"]
    live += [{"rule": r} for r in output]
    assert diff(objects, live) == expected


def test_diff_names_chain_table_and_foreign_object_differences() -> None:
    objects = render(HOST, RESOLVED).to_json()
    live = copy.deepcopy(objects)
    live[0]["table"]["flags"] = ["dormant"]
    live[1]["chain"]["policy"] = "accept"
    live.append({"chain": {"family": "inet", "table": "gpuward", "name": "extra"}})
    live.append({"set": {"family": "inet", "table": "gpuward", "name": "s", "type": "ipv4_addr"}})
    assert [line.split(":")[0] for line in diff(objects, live)] == [
        "chain output differs",
        "table attributes differ",
        "unexpected chain extra",
        'unexpected object {"set"',
    ]
    assert diff(objects, None) == ["table inet gpuward is missing"]


def test_ipv6_spelling_does_not_count_as_drift() -> None:
    objects = render(HOST, RESOLVED).to_json()
    text = json.dumps(objects).replace('"addr": "2001:db8::"', '"addr": "2001:0db8:0:0::"')
    assert text != json.dumps(objects)
    assert diff(objects, json.loads(text)) == []


def test_rule_comments_cannot_break_out_of_the_script() -> None:
    with pytest.raises(ValueError, match="unsafe rule comment"):
        Rule("output", (), 'x" accept comment "y')


def test_the_firewall_report_is_strict() -> None:
    report = FirewallReport("host", "a" * 64, True, "repaired", ("chain x",), (), None)
    assert FirewallReport.from_dict(report.to_dict()) == report
    changes: list[tuple[dict[str, Any], str]] = [
        ({"action": "ignored"}, "must be one of"),
        ({"digest": "xyz"}, "invalid value"),
        ({"drift": ["x" * 2000]}, "longer than 1024 characters"),
        ({"extra": 1}, "unknown field"),
    ]
    for change, message in changes:
        with pytest.raises(InvalidDocument, match=message):
            FirewallReport.from_dict({**report.to_dict(), **change})
