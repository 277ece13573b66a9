"""The applier's journal: which step of which update the node is in.

One small JSON file, replaced atomically (write, fsync, rename, fsync of the
folder) at every transition, so that after a crash or power cut the applier
knows exactly where it stopped and which slot is the good one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fleet.errors import GpuwardError
from keys.durable_files import atomic_write
from node.crash_points import crash_point

SCHEMA_VERSION = 1
STATES = frozenset(
    {
        "idle",
        "staged",
        "draining",
        "switching",
        "verifying",
        "committed",
        "rolling-back",
        "rolled-back",
        "failed",
    }
)
# Nothing in flight: a new request may start.
TERMINAL = frozenset({"idle", "committed", "rolled-back", "failed"})


@dataclass(frozen=True)
class Journal:
    state: str = "idle"
    target_path: str | None = None
    sha256: str | None = None
    slot: str | None = None  # the slot the update installs into
    previous: str | None = None  # the slot that ran before it (None: nothing did)
    boots: int = 0  # starts in "verifying" without a commit
    reason: str = ""
    # The health gate's look at the GPUs just before the switch (applier.health_gate).
    baseline: dict[str, Any] | None = None
    # The director's release counter of the bundle in flight (0: not directed), and
    # the highest one this node committed, kept from one update to the next: only
    # a higher counter lets the director roll a node back to an older bundle.
    release_counter: int = 0
    committed_counter: int = 0

    def to(self, state: str, **changes: object) -> Journal:
        if state not in STATES:
            raise ValueError(f"unknown applier state {state!r}")
        return replace(self, state=state, **changes)  # type: ignore[arg-type]


def load_journal(path: Path) -> Journal:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return Journal()
    except ValueError as exc:
        raise GpuwardError(
            f"applier journal {path} is corrupt ({exc}); check which slot 'active' points "
            "at, then move the journal aside"
        ) from None
    if doc.pop("schema", None) != SCHEMA_VERSION or doc.get("state") not in STATES:
        raise GpuwardError(f"applier journal {path}: unsupported schema; upgrade gpuward")
    return Journal(**doc)


def save_journal(path: Path, journal: Journal) -> None:
    crash_point(f"journal:{journal.state}:before")
    doc = {"schema": SCHEMA_VERSION, **asdict(journal)}
    # Readable by all: the unprivileged agent reports the applier's progress from it.
    atomic_write(path, json.dumps(doc, indent=2).encode() + b"\n", mode=0o644)
    crash_point(f"journal:{journal.state}:after")
