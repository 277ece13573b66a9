"""The firewall section of a node's report.

The agent states which outbound ruleset it enforces (its digest, the same on
every node with the same rules), whether the live table had drifted from it and
what it did about that. The server reads it from the network: ``from_dict`` is
strict and bounded like the rest of the report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fleet.errors import InvalidDocument
from fleet.wire import Boolean, Document, Field, Integer, ListOf, Text, Wire, optional

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
class FirewallReport(Wire):
    """Which outbound ruleset the node enforces, and what the agent did about drift."""

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

    WIRE = Document(
        Field("mode", Text(choices=FIREWALL_MODES)),
        optional("digest", Text(max_len=64, pattern=_SHA256), "SHA-256 of the live table"),
        Field("in_sync", Boolean(), description="the live table matches the policy"),
        Field("action", Text(choices=FIREWALL_ACTIONS)),
        Field("drift", ListOf(Text(max_len=1024), MAX_LINES)),
        Field("notes", ListOf(Text(max_len=1024), MAX_LINES)),
        optional("error", Text(max_len=1024)),
        optional("checked_at", Integer(), "when gpuward-firewall.service checked (Unix time)"),
        where="firewall",
    )
