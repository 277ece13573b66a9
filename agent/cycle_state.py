"""What the agent remembers from one cycle to the next.

The slots say what is installed and the applier's journal what is in flight;
this file says which bundle the agent handed over, which of the applier's
outcomes it already reported, the director's release counter of the last
commit, which bundles failed or were refused on this node, so the agent
never hands over again a bundle that already broke its GPUs, and the
transparency log checkpoint it last accepted (``agent.logproof``). Written
atomically on every change.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fleet.errors import GpuwardError
from keys.durable_files import atomic_write

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Handoff:
    """The last bundle left in the spool for the applier."""

    sha256: str
    release_counter: int = 0
    # The applier journal's last outcome already reported, so it is reported once.
    reported: str = ""


@dataclass(frozen=True)
class AgentState:
    rejected: frozenset[str] = field(default_factory=frozenset)  # bundle sha256s
    release_counter: int = 0  # the director's counter of the last bundle committed
    handoff: Handoff = Handoff("")
    # The transparency log's checkpoint (signed note) this node last accepted: every
    # later one must extend it. And one it was shown that does not (a split view),
    # kept to be reported: an operator removes it once the compromise is dealt with.
    log_checkpoint: str = ""
    log_conflict: str = ""

    def with_rejected(self, sha256: str) -> AgentState:
        return replace(self, rejected=self.rejected | {sha256})

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "rejected": sorted(self.rejected),
            "release_counter": self.release_counter,
            "handoff": asdict(self.handoff),
            "log_checkpoint": self.log_checkpoint,
            "log_conflict": self.log_conflict,
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
    if pending is not None:
        # Written by an agent that switched slots itself; the applier's journal
        # knows nothing of that switch, so it would never be judged.
        raise GpuwardError(
            f"agent state {path} holds a switch to slot {pending.get('slot')} that no health "
            "gate confirmed; finish it with the gpuward version that started it, or point "
            f"slots/active at {pending.get('previous')} and remove the pending entry"
        )
    return AgentState(
        rejected=frozenset(doc.get("rejected", [])),
        release_counter=int(doc.get("release_counter", 0)),
        handoff=Handoff(**doc.get("handoff", {"sha256": ""})),
        log_checkpoint=str(doc.get("log_checkpoint", "")),
        log_conflict=str(doc.get("log_conflict", "")),
    )


def save_state(path: Path, state: AgentState) -> None:
    atomic_write(path, json.dumps(state.to_dict(), indent=2).encode() + b"\n", mode=0o600)
