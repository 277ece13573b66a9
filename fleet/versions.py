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


_CUDA = re.compile(r"^(\d{1,2})\.(\d{1,2})(?: U(\d{1,2}))?$")


@dataclass(frozen=True, order=True)
class CudaVersion:
    """A CUDA toolkit release: ``13.0`` (the GA release) or ``13.0 U2`` (its update 2).

    NVIDIA states the minimum driver per toolkit update, so updates are part of
    the version; ``13.0`` means the GA release and sorts before ``13.0 U1``.
    """

    major: int
    minor: int
    update: int = 0

    @classmethod
    def parse(cls, text: str) -> CudaVersion:
        match = _CUDA.match(text)
        if match is None:
            raise GpuwardError(f"invalid CUDA version {text!r}: expected 13.0 or 13.0 U2")
        major, minor, update = match.groups()
        return cls(int(major), int(minor), int(update or 0))

    def __str__(self) -> str:
        base = f"{self.major}.{self.minor}"
        return f"{base} U{self.update}" if self.update else base


def parse_version_floor(text: str) -> tuple[int, ...]:
    """A driver version or bare branch number (``580``), as comparable parts.

    NVIDIA states some floors as a whole branch ("≥580"); ``(580,)`` sorts below
    every ``580.x`` release, so ``floor <= version.parts`` reads as written.
    """
    match = re.fullmatch(r"(\d{3,4})(?:\.(\d{1,3}))?(?:\.(\d{1,3}))?", text)
    if match is None:
        raise GpuwardError(f"invalid driver version floor {text!r}: expected 580 or 450.80.02")
    return tuple(int(p) for p in match.groups() if p is not None)
