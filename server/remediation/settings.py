"""``[remediation]`` of server.toml, read strictly into a ``RemediationConfig``.

A table in the file only (a pool's policy does not fit on a command line).
Commands are absolute paths: the server must run the operator's program, never
one an environment's PATH happens to find first. A policy naming an action no
one can carry out (reset or reboot without a hook) is refused at start, not
discovered at 3 a.m.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleet.errors import GpuwardError, InvalidDocument
from fleet.remediation import MAX_TRACKED, Action, RemediationPolicy
from fleet.rollout import POOL
from fleet.schema import Reader
from fleet.topology import DOMAINS
from server.config import RemediationConfig

SCHEDULERS = frozenset({"slurm", "none"})
HOOKED = frozenset({Action.RESET, Action.REBOOT})
_ACTIONS = frozenset(a.value for a in Action)
_KEYS = frozenset({"scheduler", "scontrol", "slurm_conf", "hooks", "timeout", "tick", "pools"})
_POLICY_KEYS = frozenset(
    {
        "on_failed",
        "on_degraded",
        "on_missing",
        "on_straggler",
        "xid",
        "budget",
        "failure_domain",
        "hold_down",
        "approval",
    }
)
MAX_POOLS = 1000


def read_remediation(table: object, where: str, base: Path) -> RemediationConfig:
    """The ``[remediation]`` table (relative paths are relative to ``base``)."""
    try:
        return _read(table, where, base)
    except InvalidDocument as exc:
        raise GpuwardError(str(exc)) from None


def _read(table: object, where: str, base: Path) -> RemediationConfig:
    r = Reader(table, where, allowed=_KEYS)
    assert isinstance(table, dict)  # the reader refused anything else
    options: dict[str, Any] = {"scheduler": r.text("scheduler", choices=SCHEDULERS)}
    if "scontrol" in table:
        options["scontrol"] = _command(r, "scontrol")
    if "slurm_conf" in table:
        options["slurm_conf"] = base / r.text("slurm_conf", max_len=4096)
    if "timeout" in table:
        options["timeout_s"] = r.number("timeout", minimum=1, maximum=600)
    if "tick" in table:
        options["tick_s"] = r.number("tick", minimum=1, maximum=3600)
    hooks: dict[str, tuple[str, ...]] = {}
    raw_hooks = r.optional_raw("hooks")
    if raw_hooks is not None:
        h = Reader(raw_hooks, f"{where}.hooks", allowed=frozenset(a.value for a in HOOKED))
        hooks = {name: _command(h, name) for name in sorted(raw_hooks)}
    options["hooks"] = hooks
    pools: dict[str, RemediationPolicy] = {}
    raw_pools = r.optional_raw("pools") or {}
    if not isinstance(raw_pools, dict) or len(raw_pools) > MAX_POOLS:
        raise GpuwardError(f"{where}.pools must be tables [remediation.pools.NAME]")
    for pool, raw in raw_pools.items():
        if not POOL.fullmatch(pool):
            raise GpuwardError(f"{where}.pools: {pool!r} is not a pool name (a-z, 0-9, . _ -)")
        pools[pool] = _policy(raw, f"{where}.pools.{pool}", hooks)
    options["pools"] = pools
    return RemediationConfig(**options)


def _command(r: Reader, key: str) -> tuple[str, ...]:
    argv = r.items(key, max_items=32)
    if not argv or not all(isinstance(a, str) and a and "\0" not in a for a in argv):
        raise GpuwardError(f"{r.where}: {key} must be a command: a list of strings")
    if not Path(argv[0]).is_absolute():
        raise GpuwardError(
            f"{r.where}: {key} must start with an absolute path (e.g. /usr/bin/scontrol), "
            "not a name looked up in PATH"
        )
    return tuple(argv)


def _action(r: Reader, table: dict[str, Any], key: str, default: Action) -> Action:
    if key not in table:
        return default
    return Action(r.text(key, choices=_ACTIONS))


def _policy(table: object, where: str, hooks: dict[str, tuple[str, ...]]) -> RemediationPolicy:
    r = Reader(table, where, allowed=_POLICY_KEYS)
    assert isinstance(table, dict)  # the reader refused anything else
    defaults = RemediationPolicy()
    xid_actions: dict[int, Action] = {}
    raw_xids = r.optional_raw("xid")
    if raw_xids is not None:
        if not isinstance(raw_xids, dict):
            raise GpuwardError(f'{where}.xid must be a table of XID = "action"')
        x = Reader(raw_xids, f"{where}.xid", allowed=frozenset(raw_xids))
        for key in raw_xids:
            if not key.isdigit() or not 0 < int(key) < 2**31:
                raise GpuwardError(f"{where}.xid: {key!r} is not an XID number")
            xid_actions[int(key)] = Action(x.text(key, choices=_ACTIONS))
    domain = r.text("failure_domain", choices=frozenset({*DOMAINS, "none"}), default="rack")
    policy = RemediationPolicy(
        on_failed=_action(r, table, "on_failed", defaults.on_failed),
        on_degraded=_action(r, table, "on_degraded", defaults.on_degraded),
        on_missing=_action(r, table, "on_missing", defaults.on_missing),
        on_straggler=_action(r, table, "on_straggler", defaults.on_straggler),
        xid_actions=xid_actions,
        budget=r.integer("budget", minimum=1, maximum=MAX_TRACKED, default=defaults.budget),
        failure_domain=None if domain == "none" else domain,
        hold_down_s=r.integer("hold_down", maximum=30 * 86_400, default=defaults.hold_down_s),
        approval=r.boolean("approval", default=defaults.approval),
    )
    unhooked = sorted(a.value for a in policy.actions & HOOKED if a.value not in hooks)
    if unhooked:
        raise GpuwardError(
            f"{where} uses {', '.join(unhooked)}, which needs the operator's program: set "
            f'[remediation.hooks] {unhooked[0]} = ["/path/to/program"]'
        )
    return policy
