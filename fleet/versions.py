"""NVIDIA driver versions and branches.

Driver versions look like ``580.95.05``; the leading number is the branch
(``R580``). Versions are compared numerically, part by part, but the original
spelling is kept because NVIDIA's zero padding (``05``) is part of the name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fleet.errors import GpuwardError

_VERSION = re.compile(r"^(\d{3,4})\.(\d{1,3})(?:\.(\d{1,3}))?$")
_BRANCH = re.compile(r"^R(\d{3,4})$")


@dataclass(frozen=True, order=True)
class DriverVersion:
    """A driver version, ordered numerically."""

    parts: tuple[int, ...]
    text: str = field(compare=False)

    @classmethod
    def parse(cls, text: str) -> DriverVersion:
        match = _VERSION.match(text)
        if match is None:
            raise GpuwardError(f"invalid driver version {text!r}: expected digits like 580.95.05")
        parts = tuple(int(p) for p in match.groups() if p is not None)
        return cls(parts=parts, text=text)

    @property
    def branch(self) -> str:
        return f"R{self.parts[0]}"

    def __str__(self) -> str:
        return self.text


def parse_branch(text: str) -> int:
    """Return the branch number of ``R580``-style names."""
    match = _BRANCH.match(text)
    if match is None:
        raise GpuwardError(f"invalid branch {text!r}: expected a name like R580")
    return int(match.group(1))
