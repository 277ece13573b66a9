"""What the director assigns this node, as both node processes read it.

The director's targets metadata names one bundle per node, with the node's id,
its hardware id and a release counter in the target's ``custom`` field. The
agent reads it from metadata it just refreshed; the applier reads it again,
offline, from its own verified copy of the agent's cache, before it installs a
bundle older than the running one: only the director, with a release counter
above the last committed, may roll a node back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tuf.api.metadata import TargetFile

from fleet.errors import InvalidDocument
from fleet.schema import Reader
from node.channel import TufChannel, UpdateRefused

DIRECTOR_FIELD = "gpuward_director"  # the same key keys.director_repo writes
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Directive:
    target_path: str
    info: TargetFile
    node_id: str
    hardware_id: str
    release_counter: int


def read_directive(channel: TufChannel) -> Directive | None:
    """The bundle the director names for this node in ``channel``'s verified metadata."""
    names = sorted(channel.listed("drivers/"))
    if not names:
        return None
    if len(names) > 1:
        raise UpdateRefused(f"the director names {len(names)} bundles for this node, not one")
    info = channel.targetinfo(names[0])
    if info is None:
        return None
    custom: Any = info.custom
    try:
        r = Reader(
            custom.get(DIRECTOR_FIELD) if isinstance(custom, dict) else None,
            f"director target {info.path}",
            allowed=frozenset({"node_id", "hardware_id", "release_counter"}),
        )
        return Directive(
            target_path=info.path,
            info=info,
            node_id=r.text("node_id", pattern=_NODE, max_len=128),
            hardware_id=r.text("hardware_id", max_len=128),
            release_counter=r.integer("release_counter"),
        )
    except InvalidDocument as exc:
        raise UpdateRefused(str(exc)) from None
