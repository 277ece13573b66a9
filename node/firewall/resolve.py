"""Everything the ruleset depends on that is not in the config.

Host names become addresses, user names become uids, and cgroup paths are
checked for existence (nft refuses a rule naming a cgroup that does not exist,
and would fail the whole transaction). Doing this in one place, through
injectable lookups, keeps rendering pure: the same policy and the same
``Resolution`` always give the same ruleset, so tests need no DNS.
"""

from __future__ import annotations

import ipaddress
import pwd
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import GpuwardError
from node.firewall.policy import FirewallPolicy, zoned

MAX_ADDRESSES_PER_NAME = 64
CGROUP_ROOT = Path("/sys/fs/cgroup")

Resolver = Callable[[str], Sequence[str]]
UserLookup = Callable[[str], int]


@dataclass(frozen=True)
class Resolution:
    addresses: Mapping[str, tuple[str, ...]]  # host name -> sorted addresses
    uids: tuple[int, ...]
    cgroups: tuple[str, ...]  # the restricted cgroups that exist now


def system_resolver(name: str) -> list[str]:
    """The node's own resolver (getaddrinfo: /etc/hosts, then DNS)."""
    infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def system_user_lookup(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def resolve(
    policy: FirewallPolicy,
    resolver: Resolver = system_resolver,
    user_lookup: UserLookup = system_user_lookup,
    cgroup_root: Path = CGROUP_ROOT,
) -> Resolution:
    """Look everything up; any failure raises before a ruleset is built."""
    addresses = {name: _addresses(name, resolver) for name in policy.host_names()}
    uids = []
    for user in policy.restricted_users:
        if isinstance(user, int):
            uids.append(user)
            continue
        try:
            uids.append(user_lookup(user))
        except KeyError:
            raise GpuwardError(
                f"firewall.restricted_users: no user {user!r} on this node; "
                "create it or remove it from the config (the firewall was not changed)"
            ) from None
    return Resolution(
        addresses=addresses,
        uids=tuple(dict.fromkeys(uids)),
        cgroups=present_cgroups(policy, cgroup_root)[0],
    )


def present_cgroups(
    policy: FirewallPolicy, cgroup_root: Path = CGROUP_ROOT
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The restricted cgroups that exist now, and those that do not."""
    present = tuple(p for p in policy.restricted_cgroups if (cgroup_root / p).is_dir())
    return present, tuple(p for p in policy.restricted_cgroups if p not in present)


def _addresses(name: str, resolver: Resolver) -> tuple[str, ...]:
    try:
        found = resolver(name)
    except (OSError, UnicodeError) as exc:
        raise GpuwardError(
            f"cannot resolve {name!r} ({exc}): check the name in [firewall] and the node's "
            "DNS (the firewall was not changed)"
        ) from None
    try:
        parsed = {ipaddress.ip_address(a) for a in found}
    except ValueError as exc:
        raise GpuwardError(f"resolving {name!r} gave a non-address: {exc}") from None
    # A scoped link-local answer ("fe80::1%eth0", from /etc/hosts say) names an
    # interface, which a rule cannot; the name's other addresses still count.
    unique = sorted((a for a in parsed if not zoned(a)), key=lambda a: (a.version, a))
    if not unique:
        raise GpuwardError(
            f"{name!r} resolves to no address: check the name in [firewall] and the node's "
            "DNS (the firewall was not changed)"
        )
    if len(unique) > MAX_ADDRESSES_PER_NAME:
        raise GpuwardError(
            f"{name!r} resolves to {len(unique)} addresses, more than {MAX_ADDRESSES_PER_NAME}: "
            "allow its network as a CIDR in [[firewall.allow]] instead"
        )
    return tuple(str(a) for a in unique)
