"""The firewall section of a node's report.

The agent states which outbound ruleset it enforces (its digest, the same on
every node with the same rules), whether the live table had drifted from it and
what it did about that. The server reads it from the network: ``from_dict`` is
strict and bounded like the rest of the report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from fleet.errors import InvalidDocument
from fleet.schema import Reader

FIREWALL_MODES = frozenset({"host", "nvidia-apps"})
FIREWALL_ACTIONS = frozenset(
    {
        "unchanged",  # the live table matched the policy
        "applied",  # the table was created, or replaced after the policy or addresses changed
        "repaired",  # someone else changed the table (or it predates the agent); drift says how
        "failed",  # the table could not be brought in line; error says why
        "stale",  # the firewall unit's last result is too old to vouch for the table
    }
)
MAX_LINES = 64
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class FirewallReport:
    mode: str
    digest: str | None  # SHA-256 of the live table after the cycle; None when there is none
    in_sync: bool  # the live table matches the policy
    action: str
    drift: tuple[str, ...]  # how the live table differed before this cycle's repair
    notes: tuple[str, ...]  # warnings: a failed re-resolution, a cgroup not present yet
    error: str | None
    # When gpuward-firewall.service checked (Unix time), for an agent that cannot
    # read the table itself; None: the agent checked in this cycle.
    checked_at: int | None = None

    def __post_init__(self) -> None:
        if self.action not in FIREWALL_ACTIONS:
            raise InvalidDocument(f"firewall: unknown action {self.action!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "digest": self.digest,
            "in_sync": self.in_sync,
            "action": self.action,
            "drift": list(self.drift),
            "notes": list(self.notes),
            "error": self.error,
            "checked_at": self.checked_at,
        }

    @classmethod
    def from_dict(cls, doc: object, where: str = "firewall") -> FirewallReport:
        r = Reader(
            doc,
            where,
            allowed=frozenset(
                {"mode", "digest", "in_sync", "action", "drift", "notes", "error", "checked_at"}
            ),
        )

        def lines(key: str) -> tuple[str, ...]:
            items = r.items(key, max_items=MAX_LINES)
            if not all(isinstance(i, str) and len(i) <= 1024 for i in items):
                raise InvalidDocument(f"{where}: {key} must be short strings")
            return tuple(items)

        return cls(
            mode=r.text("mode", choices=FIREWALL_MODES),
            digest=r.optional_text("digest", max_len=64, pattern=_SHA256),
            in_sync=r.boolean("in_sync"),
            action=r.text("action", choices=FIREWALL_ACTIONS),
            drift=lines("drift"),
            notes=lines("notes"),
            error=r.optional_text("error", max_len=1024),
            checked_at=None
            if cast(Mapping[str, Any], doc).get("checked_at") is None  # Reader: a mapping
            else r.integer("checked_at"),
        )
