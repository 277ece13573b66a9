"""Keeping online metadata fresh without a human: the server's own signing loop.

Timestamps expire within a day and snapshots within a week by design, so that
a frozen mirror is noticed quickly; the server therefore re-signs them (and
every node's director metadata) well before they lapse, with the online keys
it holds. Roles signed offline (root, targets, branch roles) cannot be renewed
here: when one nears expiry the loop logs a warning every pass so operators
run a signing ceremony in time.

A pass never raises: whatever goes wrong in one repository (a key file that is
not a key, a folder it cannot write) is noted as a problem naming the role it
was at, and the other repositories are renewed all the same; ``server.renewal``
logs, retries and shows the problems.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from tuf.api.metadata import Metadata

from fleet.errors import GpuwardError
from keys.director_repo import DirectorRepository, NodeRepository
from keys.image_repo import ImageRepository
from keys.tuf_repo import TufRepository

log = structlog.get_logger(__name__)

# Re-sign an online role once less than this share of its validity period is left.
RENEW_AT = 0.5
# Warn about offline roles this long before they expire.
WARN_BEFORE = timedelta(days=14)
MAX_REASON = 1000


@dataclass(frozen=True)
class Problem:
    """One repository's renewal that failed: the role it was at, and why."""

    role: str  # e.g. "image:timestamp", "director/gpu-7:snapshot"
    reason: str


@dataclass(frozen=True, order=True)
class Expiry:
    expires: datetime
    role: str


@dataclass(frozen=True)
class Pass:
    """What one pass over every repository did."""

    renewed: tuple[str, ...]
    problems: tuple[Problem, ...]
    # The served metadata that lapses first, as last read (a repository that could
    # not be read this pass keeps what it showed before).
    nearest_expiry: Expiry | None
    # The soonest expiry of each role of each kind of repository ("image:root",
    # "director:timestamp": the first of every node's), for the metrics.
    expiries: tuple[Expiry, ...] = ()


def reason(exc: Exception) -> str:
    """An error as an operator reads it: gpuward's own say what to do; others
    (a key file that is not one, a folder that cannot be written) name their type."""
    text = str(exc) if isinstance(exc, GpuwardError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:MAX_REASON]  # one line, as a banner shows it


class RenewalFailed(Exception):
    def __init__(self, role: str, why: str) -> None:
        super().__init__(f"{role}: {why}")
        self.problem = Problem(role, why)


@contextlib.contextmanager
def _at(role: str) -> Iterator[None]:
    """Any failure inside, named by the role being read or signed."""
    try:
        yield
    except Exception as exc:
        raise RenewalFailed(role, reason(exc)) from exc


class OnlineSigner:
    def __init__(
        self,
        image: ImageRepository,
        director: DirectorRepository | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.image = image
        self.director = director
        self.now = now
        self._expiry: dict[str, tuple[Expiry, ...]] = {}  # per repository, as last read

    def run_once(self) -> Pass:
        """Renew what is due in every repository; one that fails, for whatever
        reason, keeps none of the others from being renewed. Never raises."""
        renewed: list[str] = []
        problems: list[Problem] = []
        expiry: dict[str, tuple[Expiry, ...]] = {}
        for name, repo in self._repositories(problems):
            try:
                renewed += self._renew(repo, name)
            except RenewalFailed as failed:
                problems.append(failed.problem)
            try:
                expiry[name] = _online_expiries(repo, name)
            except Exception:  # unreadable: it shows what it showed when last read
                if name in self._expiry:
                    expiry[name] = self._expiry[name]
        try:
            with _at("offline roles"):
                expiry["offline"] = self._check_offline()
        except RenewalFailed as failed:
            problems.append(failed.problem)
        self._expiry = expiry
        every = [e for held in expiry.values() for e in held]
        return Pass(tuple(renewed), tuple(problems), min(every, default=None), _by_role(every))

    def _repositories(self, problems: list[Problem]) -> Iterator[tuple[str, TufRepository]]:
        yield "image", self.image
        if self.director is None:
            return
        try:
            with _at("director"):
                nodes = [(n, self.director.node(n)) for n in self.director.node_ids()]
        except RenewalFailed as failed:
            problems.append(failed.problem)
            return
        for node_id, repo in nodes:
            yield f"director/{node_id}", repo

    def _due(self, repo: TufRepository, md: Metadata[Any], role: str) -> bool:
        left = md.signed.expires - self.now()
        return bool(left < repo.expiry[role] * RENEW_AT)

    def _renew(self, repo: TufRepository, name: str) -> list[str]:
        """Renew one repository's online roles that are due."""
        renewed = []
        with _at(f"{name}:snapshot"):
            if self._due(repo, repo.snapshot(), "snapshot"):
                repo.publish_snapshot({})  # and a timestamp for it
                renewed.append(f"{name}:snapshot")
        with _at(f"{name}:timestamp"):
            if not renewed and self._due(repo, repo.timestamp(), "timestamp"):
                repo.sign_timestamp()
                renewed.append(f"{name}:timestamp")
        if isinstance(repo, NodeRepository):
            with _at(f"{name}:targets"):
                targets = repo.targets()
                if self._due(repo, targets, "targets"):
                    repo.bump(targets, "targets")
                    repo.sign_and_write(targets, _online)
                    repo.publish_snapshot({"targets": targets.signed.version})
                    renewed.append(f"{name}:targets")
        for item in renewed:
            log.info("metadata_renewed", role=item)
        return renewed

    def _check_offline(self) -> tuple[Expiry, ...]:
        """Warn of offline roles near expiry (the image repository's root, targets and
        branch roles, the director's root); when each expires."""
        roles: list[tuple[str, Metadata[Any]]] = [
            ("image:root", self.image.root_metadata()),
            ("image:targets", self.image.targets()),
        ]
        roles += [
            (f"image:{branch}", self.image.targets(branch)) for branch in self.image.branch_roles()
        ]
        if self.director is not None:
            roles.append(("director:root", self.director.base.root_metadata()))
        for role, md in roles:
            left = md.signed.expires - self.now()
            if left < WARN_BEFORE:
                log.warning(
                    "metadata_near_expiry",
                    role=role.partition(":")[2],
                    repository=role.partition(":")[0],
                    expires=md.signed.expires.isoformat(),
                    action="re-sign it offline: gpuward repo stage, keys sign, repo publish",
                )
        return tuple(Expiry(md.signed.expires, role) for role, md in roles)


def _online_expiries(repo: TufRepository, name: str) -> tuple[Expiry, ...]:
    """When each of the repository's online metadata, as served now, expires."""
    held: list[tuple[str, Metadata[Any]]] = [
        ("timestamp", repo.timestamp()),
        ("snapshot", repo.snapshot()),
    ]
    if isinstance(repo, NodeRepository):
        held.append(("targets", repo.targets()))
    return tuple(Expiry(md.signed.expires, f"{name}:{role}") for role, md in held)


def _by_role(expiries: list[Expiry]) -> tuple[Expiry, ...]:
    """The soonest of each role per kind of repository: every node's director
    repository ("director/gpu-7:snapshot") counts as the director's ("director:snapshot")."""
    soonest: dict[str, Expiry] = {}
    for expiry in expiries:
        repository, _, role = expiry.role.partition(":")
        key = f"{repository.partition('/')[0]}:{role}"
        if key not in soonest or expiry.expires < soonest[key].expires:
            soonest[key] = Expiry(expiry.expires, key)
    return tuple(sorted(soonest.values(), key=lambda e: e.role))


def _online() -> str:
    raise AssertionError("director targets are signed with online keys")
