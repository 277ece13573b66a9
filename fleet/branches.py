"""Known NVIDIA driver branches, from the data file shipped with the package.

A bundle or an agent naming a branch nobody has heard of is almost always a typo
(``R508``), and publishing or tracking it would silently do nothing; so names are
checked against this list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from fleet.errors import GpuwardError, InvalidDocument
from fleet.versions import parse_branch

BRANCH_TYPES = frozenset({"NFB", "PB", "LTSB"})


@dataclass(frozen=True)
class Branch:
    name: str
    type: str
    first_ga: str | None
    eol: str | None
    ended: bool

    @property
    def number(self) -> int:
        return parse_branch(self.name)


@cache
def known_branches() -> dict[str, Branch]:
    raw = json.loads(resources.files("fleet").joinpath("data/branches.json").read_text())
    if raw.get("schema") != 1:
        raise InvalidDocument("fleet/data/branches.json: unsupported schema")
    branches: dict[str, Branch] = {}
    for entry in raw["branches"]:
        branch = Branch(
            name=str(entry["name"]),
            type=str(entry["type"]),
            first_ga=entry["first_ga"],
            eol=entry["eol"],
            ended=bool(entry["ended"]),
        )
        if branch.type not in BRANCH_TYPES:
            raise InvalidDocument(f"branch {branch.name}: unknown type {branch.type}")
        parse_branch(branch.name)
        branches[branch.name] = branch
    return branches


def require_branch(name: str) -> Branch:
    """Return the branch called ``name`` or explain which names exist."""
    parse_branch(name)
    branch = known_branches().get(name)
    if branch is None:
        names = ", ".join(sorted(known_branches()))
        raise GpuwardError(f"unknown driver branch {name!r}: known branches are {names}")
    return branch
