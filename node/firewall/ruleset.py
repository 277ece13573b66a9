"""Rendering the ``inet gpuward`` table, and comparing it with the live one.

Pure functions only: ``render`` turns a policy and its resolution into a
``Ruleset``; the rest works on nft JSON objects.

Each statement is written twice, side by side: as the JSON that
``nft -j list table inet gpuward`` prints for it (the form drift is checked
against) and as nft syntax (the form that is applied). The JSON input parser of
nftables 1.0.6 (Debian 12) rejects ``socket cgroupv2``, which ``nvidia-apps``
mode needs, so the table is applied as an nft script; keeping both spellings
of a statement in one place, and checking every apply by reading the table
back, keeps the two from drifting apart.

The table's shape::

    chain output      (base chain, hook output; policy drop in mode "host",
                       accept in mode "nvidia-apps")
      loopback, established/related, IPv6 neighbour discovery (host mode)
      -> jump restricted   (host: everything; nvidia-apps: listed uids/cgroups)
    chain restricted
      one accept rule per allowed (address, protocol, port)
      rate-limited log with the configured prefix
      counter drop
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from node.firewall.policy import FirewallPolicy, network_text, parse_network, plain
from node.firewall.resolve import Resolution

FAMILY = "inet"
TABLE = "gpuward"
OUTPUT = "output"
RESTRICTED = "restricted"
LOG_BURST = 5
MAX_COMMENT = 128  # nftables' limit on a rule comment, in bytes

NftObject = dict[str, Any]
MISSING = f"table {FAMILY} {TABLE} is missing"


@dataclass(frozen=True)
class Stmt:
    json: NftObject  # as nft -j lists it
    text: str  # as nft syntax


def _match(left: NftObject, left_text: str, right: Any, right_text: str, op: str = "==") -> Stmt:
    return Stmt({"match": {"op": op, "left": left, "right": right}}, f"{left_text} {right_text}")


def _payload(protocol: str, field: str) -> NftObject:
    return {"payload": {"protocol": protocol, "field": field}}


def daddr(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Stmt:
    network = plain(network)
    protocol = "ip" if network.version == 4 else "ip6"
    right: Any = str(network.network_address)
    if network.prefixlen != network.max_prefixlen:
        right = {"prefix": {"addr": right, "len": network.prefixlen}}
    return _match(_payload(protocol, "daddr"), f"{protocol} daddr", right, network_text(network))


def dport(proto: str, port: int) -> Stmt:
    return _match(_payload(proto, "dport"), f"{proto} dport", port, str(port))


def _icmpv6(hoplimit: int, types: Sequence[str]) -> tuple[Stmt, Stmt]:
    # The hop limit pins these to the local link: a router never forwards
    # hop-limit-255 ND or hop-limit-1 MLD packets, so nothing leaves the link.
    return (
        _match(_payload("ip6", "hoplimit"), "ip6 hoplimit", hoplimit, str(hoplimit)),
        _match(
            _payload("icmpv6", "type"),
            "icmpv6 type",
            {"set": list(types)},
            "{ " + ", ".join(types) + " }",
        ),
    )


LOOPBACK = _match({"meta": {"key": "oifname"}}, "oifname", "lo", '"lo"')
ESTABLISHED = _match(
    {"ct": {"key": "state"}},
    "ct state",
    ["established", "related"],
    "established,related",
    op="in",
)
COUNTER = Stmt({"counter": None}, "counter")
ACCEPT = Stmt({"accept": None}, "accept")
DROP = Stmt({"drop": None}, "drop")
JUMP_RESTRICTED = Stmt({"jump": {"target": RESTRICTED}}, f"jump {RESTRICTED}")


def skuid(uid: int) -> Stmt:
    return _match({"meta": {"key": "skuid"}}, "meta skuid", uid, str(uid))


def cgroup(path: str) -> Stmt:
    # nft 1.0.6 lists neither the level nor, outside the cgroup's mount
    # namespace, the path (it prints the cgroup id instead): the level is the
    # path's depth by definition, and an id in place of the path reads as drift,
    # which is right, since it also appears when the cgroup was recreated.
    level = len(path.split("/"))
    return _match(
        {"socket": {"key": "cgroupv2"}}, f"socket cgroupv2 level {level}", path, f'"{path}"'
    )


def limit(per_minute: int) -> Stmt:
    return Stmt(
        {"limit": {"rate": per_minute, "burst": LOG_BURST, "per": "minute"}},
        f"limit rate {per_minute}/minute burst {LOG_BURST} packets",
    )


def log(prefix: str) -> Stmt:
    return Stmt({"log": {"prefix": prefix}}, f'log prefix "{prefix}"')


@dataclass(frozen=True)
class Rule:
    chain: str
    stmts: tuple[Stmt, ...]
    comment: str

    def __post_init__(self) -> None:
        # Comments come from validated config text; this guards the nft script
        # against a future caller passing something unchecked.
        if any(c in self.comment for c in '"\\\n') or len(self.comment.encode()) > MAX_COMMENT:
            raise ValueError(f"unsafe rule comment {self.comment!r}")

    def to_json(self) -> NftObject:
        return {
            "rule": {
                "family": FAMILY,
                "table": TABLE,
                "chain": self.chain,
                "comment": self.comment,
                "expr": [s.json for s in self.stmts],
            }
        }

    def to_text(self) -> str:
        return " ".join(s.text for s in self.stmts) + f' comment "{self.comment}"'


@dataclass(frozen=True)
class Chain:
    name: str
    policy: str | None = None  # set for the base chain only

    def to_json(self) -> NftObject:
        body: NftObject = {"family": FAMILY, "table": TABLE, "name": self.name}
        if self.policy is not None:
            body.update(type="filter", hook="output", prio=0, policy=self.policy)
        return {"chain": body}

    def header(self) -> str:
        if self.policy is None:
            return ""
        return f"type filter hook output priority 0; policy {self.policy};"


@dataclass(frozen=True)
class Ruleset:
    chains: tuple[Chain, ...]
    rules: tuple[Rule, ...]

    def to_json(self) -> list[NftObject]:
        """The objects ``nft -j list table inet gpuward`` should show (less handles)."""
        return [
            {"table": {"family": FAMILY, "name": TABLE}},
            *(c.to_json() for c in self.chains),
            *(r.to_json() for c in self.chains for r in self.rules if r.chain == c.name),
        ]

    def to_text(self) -> str:
        """The table in nft syntax, as one ``table`` block."""
        lines = [f"table {FAMILY} {TABLE} {{"]
        for chain in self.chains:
            lines.append(f"\tchain {chain.name} {{")
            if chain.header():
                lines.append(f"\t\t{chain.header()}")
            lines.extend(f"\t\t{r.to_text()}" for r in self.rules if r.chain == chain.name)
            lines.append("\t}")
        lines.append("}")
        return "\n".join(lines) + "\n"

    @property
    def digest(self) -> str:
        return digest(self.to_json())


def render(policy: FirewallPolicy, resolution: Resolution) -> Ruleset:
    """The table for ``policy`` on a node whose lookups gave ``resolution``."""
    host_mode = policy.mode == "host"
    output = [
        Rule(OUTPUT, (LOOPBACK, ACCEPT), "loopback"),
        Rule(OUTPUT, (ESTABLISHED, ACCEPT), "replies and related traffic"),
    ]
    if host_mode:
        output += [
            Rule(
                OUTPUT,
                (
                    *_icmpv6(
                        255, ("nd-router-solicit", "nd-neighbor-solicit", "nd-neighbor-advert")
                    ),
                    ACCEPT,
                ),
                "ipv6 neighbour discovery",
            ),
            Rule(
                OUTPUT,
                (*_icmpv6(1, ("mld-listener-report", "mld2-listener-report")), ACCEPT),
                "ipv6 multicast listener reports",
            ),
            Rule(OUTPUT, (JUMP_RESTRICTED,), "everything else: allowlist"),
        ]
    else:
        output += [
            Rule(OUTPUT, (skuid(u), JUMP_RESTRICTED), f"restricted uid {u}")
            for u in resolution.uids
        ]
        output += [
            Rule(OUTPUT, (cgroup(p), JUMP_RESTRICTED), f"restricted cgroup {p}"[:MAX_COMMENT])
            for p in resolution.cgroups
        ]
    restricted = [*_allow_rules(policy, resolution.addresses)]
    restricted += [
        Rule(
            RESTRICTED,
            (limit(policy.log_rate_per_minute), COUNTER, log(policy.log_prefix)),
            "log dropped packets (rate-limited)",
        ),
        Rule(RESTRICTED, (COUNTER, DROP), "drop everything else"),
    ]
    return Ruleset(
        chains=(Chain(OUTPUT, "drop" if host_mode else "accept"), Chain(RESTRICTED)),
        rules=(*output, *restricted),
    )


def _allow_rules(
    policy: FirewallPolicy, addresses: Mapping[str, tuple[str, ...]]
) -> Iterable[Rule]:
    seen: set[tuple[str, str, int]] = set()
    for flow in policy.allowances():
        targets = addresses.get(flow.target, (flow.target,))
        for target in targets:
            network = parse_network(target, flow.purpose)
            key = (str(network), flow.proto, flow.port)
            if key in seen:
                continue
            seen.add(key)
            comment = f"{flow.purpose} {flow.target}"
            if flow.target != target:
                comment += f" = {network_text(network)}"
            yield Rule(
                RESTRICTED,
                (daddr(network), dport(flow.proto, flow.port), COUNTER, ACCEPT),
                comment[:MAX_COMMENT],
            )


def canonical(objects: Iterable[NftObject]) -> dict[str, Any]:
    """The table with everything that varies between nodes and over time removed.

    Handles, counter values and nft's version banner go; rules stay in chain
    order (order is meaning in a firewall); chains and any other objects are
    keyed so their listing order does not matter.
    """
    table: Any = None
    chains: dict[str, Any] = {}
    rules: dict[str, list[Any]] = {}
    others: list[Any] = []
    for obj in objects:
        ((kind, body),) = obj.items()
        if kind == "metainfo":
            continue
        body = _normalise({k: v for k, v in body.items() if k != "handle"})
        if kind == "table":
            table = body
        elif kind == "chain":
            chains[body["name"]] = body
        elif kind == "rule":
            rules.setdefault(body["chain"], []).append(body)
        else:
            others.append({kind: body})
    others.sort(key=lambda o: json.dumps(o, sort_keys=True))
    return {"table": table, "chains": chains, "rules": rules, "others": others}


def _normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: None if k == "counter" else _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, str) and ":" in value:
        # IPv6 addresses have several spellings; nft and Python may differ.
        try:
            return str(ipaddress.IPv6Address(value))
        except ValueError:
            return value
    return value


def digest(objects: Iterable[NftObject]) -> str:
    """SHA-256 of the canonical table: equal on every node with the same rules."""
    text = json.dumps(canonical(objects), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def diff(expected: Iterable[NftObject], live: Iterable[NftObject] | None) -> list[str]:
    """How the live table differs from the expected one, one line per difference."""
    if live is None:
        return [MISSING]
    want, have = canonical(expected), canonical(live)
    problems = []
    if want["table"] != have["table"]:
        problems.append(f"table attributes differ: {_compact(have['table'])}")
    for name in want["chains"].keys() - have["chains"].keys():
        problems.append(f"chain {name} is missing")
    for name in have["chains"].keys() - want["chains"].keys():
        problems.append(f"unexpected chain {name}: {_compact(have['chains'][name])}")
    for name in want["chains"].keys() & have["chains"].keys():
        if want["chains"][name] != have["chains"][name]:
            problems.append(f"chain {name} differs: {_compact(have['chains'][name])}")
    for name in sorted(want["rules"].keys() | have["rules"].keys()):
        problems.extend(_rule_diff(name, want["rules"].get(name, []), have["rules"].get(name, [])))
    problems.extend(f"unexpected object {_compact(o)}" for o in have["others"])
    return sorted(problems)


def _rule_diff(chain: str, want: list[Any], have: list[Any]) -> list[str]:
    want_counts = Counter(map(_compact, want))
    have_counts = Counter(map(_compact, have))
    by_key = {_compact(r): r for r in want}
    missing = want_counts - have_counts
    unexpected = have_counts - want_counts
    problems = [
        f"chain {chain}: missing rule {by_key[key].get('comment', key)!r}"
        for key in missing.elements()
    ]
    problems += [
        f"chain {chain}: unexpected rule {_describe(json.loads(key))}"
        for key in unexpected.elements()
    ]
    if not problems and want != have:
        problems.append(f"chain {chain}: rules are out of order")
    return problems


def _describe(rule: Any) -> str:
    expr = _compact(rule.get("expr"))
    return f"{rule['comment']!r} {expr}" if rule.get("comment") else expr


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
