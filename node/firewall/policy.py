"""The ``[firewall]`` table of the agent config, validated strictly.

A typo in a firewall policy either locks a node out of its update server or
leaves it open, so every field is checked before ``nft`` is ever run: unknown
keys, bad CIDRs (host bits set), malformed host names, out-of-range ports and
unknown modes are all refused with a message naming the field. A refused config
never touches the live ruleset.

``allowances()`` is the complete list of outbound traffic the policy permits;
the documentation of every connection the agent can make is built on it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleet.errors import InvalidDocument
from fleet.schema import Reader

MODES = frozenset({"host", "nvidia-apps"})
PROTOCOLS = frozenset({"tcp", "udp"})
MAX_ENTRIES = 256

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 1123 host names; no trailing dot, so one name has one spelling.
_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
# Text that ends up inside double quotes in an nft script (log prefix, rule
# comments, cgroup paths): a closed character set, so no quoting is needed and
# nothing can break out of the string.
_SAFE_TEXT = re.compile(r"[A-Za-z0-9 _.:@=+,/-]*")
_LOG_PREFIX = re.compile(r"[A-Za-z0-9 _.:@=+,/-]+")  # nft lists an empty prefix as none
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}\$?")
_CGROUP_PATH = re.compile(
    r"(?!.*(?:^|/)\.\.?(?:/|$))[A-Za-z0-9_.@:=+-]+(?:/[A-Za-z0-9_.@:=+-]+){0,15}"
)

DEFAULTS: dict[str, Any] = {
    "mode": "host",
    "resolvers": [],
    "ntp": [],
    "update_endpoints": [],
    "allow": [],
    "restricted_users": [],
    "restricted_cgroups": [],
    "log_prefix": "gpuward-drop: ",
    "log_rate_per_minute": 10,
    "resolve_interval_s": 3600,
    # Where gpuward-firewall.service leaves its check result for an agent without
    # CAP_NET_ADMIN, and how often it checks (its timer's OnUnitActiveSec).
    "state_file": "/run/gpuward-firewall/state.json",
    "check_interval_s": 300,
}


def is_address(target: str) -> bool:
    """True for an address or CIDR literal, False for a host name."""
    try:
        ipaddress.ip_network(target, strict=False)
    except ValueError:
        return False
    return True


_ZONE_REFUSED = (
    "{where}: {text!r} has an IPv6 zone id (%...); a firewall rule names a plain address "
    "or network: drop the %... part"
)


def zoned(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``address`` carries an IPv6 zone id (``fe80::1%eth0``): it names an
    interface, which a rule cannot, and its text is anything after the ``%``."""
    return isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None


def parse_network(text: str, where: str) -> IPNetwork:
    """An address or CIDR; host bits set (``10.0.0.1/8``) is an error, not a guess.

    Python reads ``fe80::1%eth0`` (newlines and all after the ``%``) as an
    address with a zone id; every address the firewall uses is parsed here, so
    here is where a zone id is refused.
    """
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidDocument(
            f"{where}: {text[:80]!r} is not a valid address or CIDR ({exc}); "
            "write the network address, for example 10.0.0.0/8"
        ) from None
    if zoned(network.network_address):
        raise InvalidDocument(_ZONE_REFUSED.format(where=where, text=text[:80]))
    return network


def plain(network: IPNetwork) -> IPNetwork:
    """``network`` rebuilt from its number and prefix length: what a ruleset writes
    is then a literal, whatever text it was parsed from."""
    if zoned(network.network_address):
        raise ValueError(f"{network} has a zone id, which a firewall rule cannot name")
    return type(network)((int(network.network_address), network.prefixlen))


def network_text(network: IPNetwork) -> str:
    """``10.0.0.5`` for a single host, ``10.0.0.0/8`` for a network: how nft prints them."""
    network = plain(network)
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def _target(value: object, where: str) -> str:
    """A host name, or an address/CIDR in its canonical spelling."""
    if not isinstance(value, str):
        raise InvalidDocument(f"{where}: must be a string")
    if "%" in value:  # also what ipaddress would not read as a zone id ("fe80::1%")
        raise InvalidDocument(_ZONE_REFUSED.format(where=where, text=value[:80]))
    if is_address(value) or "/" in value:
        return network_text(parse_network(value, where))
    if not _HOST_NAME.fullmatch(value):
        raise InvalidDocument(
            f"{where}: {value[:80]!r} is neither an address, a CIDR nor a host name"
        )
    return value.lower()


@dataclass(frozen=True)
class Endpoint:
    """An update server or mirror, ``host:port`` (``[v6-address]:port``)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_url(cls, url: str, where: str = "server_url") -> Endpoint:
        """The endpoint an http(s) URL connects to (the agent's server or a mirror)."""
        try:
            # Newer Pythons check a bracketed host here; 3.11.2 leaves it to parse().
            parsed = urlsplit(url)
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
        except ValueError as exc:
            raise InvalidDocument(f"{where}: {url[:200]!r}: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InvalidDocument(f"{where}: {url[:200]!r} must be an http(s) URL")
        return cls.parse(str(cls(parsed.hostname, port)), where)

    @classmethod
    def parse(cls, value: object, where: str) -> Endpoint:
        if not isinstance(value, str):
            raise InvalidDocument(f"{where}: must be a string like updates.example.org:443")
        # Brackets take anything up to "]", so an IPv6 address with a zone id
        # gets the zone id's error from _target, not a puzzling "host:port".
        match = re.fullmatch(r"\[([^\[\]]*:[^\[\]]*)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", value)
        if match is None:
            raise InvalidDocument(
                f"{where}: {value[:80]!r} must be host:port, for example updates.example.org:443"
            )
        host = match.group(1) or match.group(3)
        port = int(match.group(2) or match.group(4))
        if not 1 <= port <= 65535:
            raise InvalidDocument(f"{where}: port {port} must be between 1 and 65535")
        target = _target(host, where)
        if "/" in target:
            raise InvalidDocument(f"{where}: an endpoint is one host, not a network")
        return cls(host=target, port=port)


@dataclass(frozen=True)
class AllowEntry:
    """One explicit extra allowlist entry (``[[firewall.allow]]``)."""

    to: str  # an address, a CIDR or a host name
    proto: str
    port: int
    comment: str

    @classmethod
    def from_dict(cls, doc: object, where: str) -> AllowEntry:
        r = Reader(doc, where, allowed=frozenset({"to", "proto", "port", "comment"}))
        return cls(
            to=_target(r.text("to", max_len=253), f"{where}.to"),
            proto=r.text("proto", choices=PROTOCOLS),
            port=r.integer("port", minimum=1, maximum=65535),
            comment=r.optional_text("comment", max_len=64, pattern=_SAFE_TEXT) or "",
        )


@dataclass(frozen=True)
class Allowance:
    """One kind of outbound traffic the policy allows, before name resolution."""

    purpose: str  # shown in rule comments and in the documentation
    target: str  # an address, a CIDR or a host name
    proto: str
    port: int


@dataclass(frozen=True)
class FirewallPolicy:
    mode: str
    resolvers: tuple[str, ...]  # addresses: resolving the resolvers would need DNS first
    ntp: tuple[str, ...]
    update_endpoints: tuple[Endpoint, ...]
    allow: tuple[AllowEntry, ...]
    restricted_users: tuple[int | str, ...]
    restricted_cgroups: tuple[str, ...]
    log_prefix: str
    log_rate_per_minute: int
    resolve_interval_s: int
    state_file: Path = Path(DEFAULTS["state_file"])
    check_interval_s: int = DEFAULTS["check_interval_s"]

    def allowances(self) -> tuple[Allowance, ...]:
        """Every outbound flow the policy permits, in rule order."""
        flows: list[Allowance] = []
        for resolver in self.resolvers:
            flows.append(Allowance("dns", resolver, "udp", 53))
            flows.append(Allowance("dns", resolver, "tcp", 53))
        flows.extend(Allowance("ntp", server, "udp", 123) for server in self.ntp)
        flows.extend(
            Allowance("update", endpoint.host, "tcp", endpoint.port)
            for endpoint in self.update_endpoints
        )
        flows.extend(
            Allowance(f"allow {entry.comment}".rstrip(), entry.to, entry.proto, entry.port)
            for entry in self.allow
        )
        return tuple(flows)

    def with_endpoint(self, endpoint: Endpoint) -> FirewallPolicy:
        """This policy, also allowing ``endpoint`` (the server named elsewhere in the config)."""
        if endpoint in self.update_endpoints:
            return self
        return replace(self, update_endpoints=(endpoint, *self.update_endpoints))

    def host_names(self) -> tuple[str, ...]:
        """The names to resolve, each once, in first-use order."""
        names = (a.target for a in self.allowances() if not is_address(a.target))
        return tuple(dict.fromkeys(names))

    @classmethod
    def from_dict(cls, doc: object, where: str = "firewall") -> FirewallPolicy:
        if not isinstance(doc, Mapping):
            raise InvalidDocument(f"{where}: expected a table")
        r = Reader({**DEFAULTS, **doc}, where, allowed=frozenset(DEFAULTS))

        def strings(key: str) -> list[tuple[str, object]]:
            return [
                (r.item_where(key, i), item)
                for i, item in enumerate(r.items(key, max_items=MAX_ENTRIES))
            ]

        resolvers = []
        for at, item in strings("resolvers"):
            target = _target(item, at)
            if not is_address(target) or "/" in target:
                raise InvalidDocument(f"{at}: a resolver must be one IP address, not {item!r}")
            resolvers.append(target)
        policy = cls(
            mode=r.text("mode", choices=MODES),
            resolvers=tuple(resolvers),
            ntp=tuple(_target(item, at) for at, item in strings("ntp")),
            update_endpoints=tuple(
                Endpoint.parse(item, at) for at, item in strings("update_endpoints")
            ),
            allow=tuple(AllowEntry.from_dict(item, at) for at, item in strings("allow")),
            restricted_users=tuple(_user(item, at) for at, item in strings("restricted_users")),
            restricted_cgroups=tuple(
                _cgroup(item, at) for at, item in strings("restricted_cgroups")
            ),
            log_prefix=r.text("log_prefix", max_len=64, pattern=_LOG_PREFIX),
            log_rate_per_minute=r.integer("log_rate_per_minute", minimum=1, maximum=10_000),
            resolve_interval_s=r.integer("resolve_interval_s", minimum=60, maximum=86_400),
            state_file=Path(r.text("state_file", max_len=4096)),
            check_interval_s=r.integer("check_interval_s", minimum=10, maximum=86_400),
        )
        if not policy.state_file.is_absolute():
            raise InvalidDocument(f"{where}.state_file: must be an absolute path")
        restricts = policy.restricted_users or policy.restricted_cgroups
        if policy.mode == "host" and restricts:
            raise InvalidDocument(
                f"{where}: restricted_users and restricted_cgroups apply only in mode "
                '"nvidia-apps"; mode "host" restricts every process'
            )
        if policy.mode == "nvidia-apps" and not restricts:
            raise InvalidDocument(
                f'{where}: mode "nvidia-apps" needs restricted_users or restricted_cgroups '
                "(the NVIDIA services and containers to restrict)"
            )
        return policy


def _user(value: object, where: str) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 < value < 2**32 - 1:
            raise InvalidDocument(
                f"{where}: uid {value} is out of range (root cannot be restricted)"
            )
        return value
    if isinstance(value, str) and _USER_NAME.fullmatch(value):
        if value == "root":
            raise InvalidDocument(f'{where}: root cannot be restricted; use mode "host"')
        return value
    raise InvalidDocument(f"{where}: must be a uid or a user name, not {str(value)[:80]!r}")


def _cgroup(value: object, where: str) -> str:
    if not isinstance(value, str) or not _CGROUP_PATH.fullmatch(value.strip("/")):
        raise InvalidDocument(
            f"{where}: must be a cgroup path below the cgroup v2 root, "
            "for example system.slice/nvidia-persistenced.service"
        )
    return value.strip("/")
