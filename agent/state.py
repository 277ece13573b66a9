"""The agent's journal: what it was doing when it last stopped.

The slots say what is installed; this file says what is in flight (a switch not
yet confirmed by the health gate) and which bundles failed on this node, so the
agent neither forgets a half-done update after a crash nor retries a bundle that
already broke its GPUs. Written atomically on every change.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fleet.errors import GpuwardError
from keys.storage import atomic_write

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PendingSwitch:
    """A switch to ``slot`` that has not passed the health gate yet."""

    slot: str
    previous: str | None
    sha256: str
    release_counter: int = 0


@dataclass(frozen=True)
class Handoff:
    """A bundle left in the spool for the applier (``[applier] mode = "applier"``)."""

    sha256: str
    release_counter: int = 0
    # The applier journal's last outcome already reported, so it is reported once.
    reported: str = ""


@dataclass(frozen=True)
class AgentState:
    pending: PendingSwitch | None = None
    rejected: frozenset[str] = field(default_factory=frozenset)  # bundle sha256s
    release_counter: int = 0  # the director's counter of the last bundle committed
    handoff: Handoff = Handoff("")

    def with_pending(self, pending: PendingSwitch | None) -> AgentState:
        return replace(self, pending=pending)

    def with_rejected(self, sha256: str) -> AgentState:
        return replace(self, rejected=self.rejected | {sha256})

    def to_dict(self) -> dict[str, Any]:
        pending = self.pending
        return {
            "schema": SCHEMA_VERSION,
            "pending": None
            if pending is None
            else {
                "slot": pending.slot,
                "previous": pending.previous,
                "sha256": pending.sha256,
                "release_counter": pending.release_counter,
            },
            "rejected": sorted(self.rejected),
            "release_counter": self.release_counter,
            "handoff": asdict(self.handoff),
        }


def load_state(path: Path) -> AgentState:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return AgentState()
    except ValueError as exc:
        raise GpuwardError(
            f"agent state {path} is corrupt ({exc}); inspect it, then move it aside "
            "to start from the slots alone"
        ) from None
    if doc.get("schema") != SCHEMA_VERSION:
        raise GpuwardError(f"agent state {path}: unsupported schema; upgrade gpuward")
    pending = doc.get("pending")
    return AgentState(
        pending=None if pending is None else PendingSwitch(**pending),
        rejected=frozenset(doc.get("rejected", [])),
        release_counter=int(doc.get("release_counter", 0)),
        handoff=Handoff(**doc.get("handoff", {"sha256": ""})),
    )


def save_state(path: Path, state: AgentState) -> None:
    atomic_write(path, json.dumps(state.to_dict(), indent=2).encode() + b"\n", mode=0o600)
