"""Keeping online metadata fresh without a human: the server's own signing loop.

Timestamps expire within a day and snapshots within a week by design, so that
a frozen mirror is noticed quickly; the server therefore re-signs them (and
every node's director metadata) well before they lapse, with the online keys
it holds. Roles signed offline (root, targets, branch roles) cannot be renewed
here: when one nears expiry the loop logs a warning every pass so operators
run a signing ceremony in time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from tuf.api.metadata import Metadata

from keys.director_repo import DirectorRepository, NodeRepository
from keys.image_repo import ImageRepository
from keys.tuf_repo import TufRepository

log = structlog.get_logger(__name__)

# Re-sign an online role once less than this share of its validity period is left.
RENEW_AT = 0.5
# Warn about offline roles this long before they expire.
WARN_BEFORE = timedelta(days=14)


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

    def run_once(self) -> list[str]:
        """Renew what is due; return what was renewed (for logs and tests)."""
        renewed = self._renew(self.image, "image")
        if self.director is not None:
            for node_id in self.director.node_ids():
                renewed += self._renew(self.director.node(node_id), f"director/{node_id}")
        self._warn_offline()
        return renewed

    def _due(self, repo: TufRepository, md: Metadata[Any], role: str) -> bool:
        left = md.signed.expires - self.now()
        return bool(left < repo.expiry[role] * RENEW_AT)

    def _renew(self, repo: TufRepository, name: str) -> list[str]:
        renewed = []
        snapshot = repo.snapshot()
        if self._due(repo, snapshot, "snapshot"):
            repo.publish_snapshot({})
            renewed.append(f"{name}:snapshot")
        elif self._due(repo, repo.timestamp(), "timestamp"):
            repo.sign_timestamp()
            renewed.append(f"{name}:timestamp")
        if isinstance(repo, NodeRepository):
            targets = repo.targets()
            if self._due(repo, targets, "targets"):
                repo.bump(targets, "targets")
                repo.sign_and_write(targets, _online)
                repo.publish_snapshot({"targets": targets.signed.version})
                renewed.append(f"{name}:targets")
        for item in renewed:
            log.info("metadata_renewed", role=item)
        return renewed

    def _warn_offline(self) -> None:
        roles: list[tuple[str, Metadata[Any]]] = [
            ("root", self.image.root_metadata()),
            ("targets", self.image.targets()),
        ]
        roles += [(branch, self.image.targets(branch)) for branch in self.image.branch_roles()]
        for role, md in roles:
            left = md.signed.expires - self.now()
            if left < WARN_BEFORE:
                log.warning(
                    "metadata_near_expiry",
                    role=role,
                    expires=md.signed.expires.isoformat(),
                    action="re-sign it offline: gpuward repo stage, keys sign, repo publish",
                )


def _online() -> str:
    raise AssertionError("director targets are signed with online keys")
