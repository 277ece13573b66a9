"""The firewall unit's last check, handed to an agent that cannot make its own.

The packaged agent has no ``CAP_NET_ADMIN``, so it can neither read nor repair
table inet gpuward; ``gpuward-firewall.service`` can (root, that capability
only, on its timer). After every ``gpuward firewall apply --write-state`` it
leaves its ``FirewallReport``, stamped with the time of the check, in
``[firewall] state_file``: written atomically, owned by root, readable by all.
The agent reports that result when it cannot check nft itself.

What the agent refuses to vouch for: a result older than ``STALE_AFTER_CHECKS``
check intervals is reported as "stale", never as in sync (a stopped timer must
not leave an old "unchanged" standing for a table someone has since opened); a
missing, malformed, or not root-owned-and-protected file as "failed" (anyone
but root could have written it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from fleet.errors import InvalidDocument
from fleet.firewall import FirewallReport
from keys.durable_files import atomic_write
from node.firewall.policy import FirewallPolicy

log = structlog.get_logger("gpuward.firewall")

STALE_AFTER_CHECKS = 3
MAX_STATE_BYTES = 256 * 1024


def write_result(path: Path, report: FirewallReport, checked_at: int) -> None:
    """Leave ``report`` for the agent (run as root by the firewall unit)."""
    stamped = dataclasses.replace(report, checked_at=checked_at)
    atomic_write(path, json.dumps(stamped.to_dict(), sort_keys=True).encode(), mode=0o644)


class UnitResult:
    """The agent's view of the firewall when gpuward-firewall.service enforces it:
    used in place of an ``Enforcer``, one ``cycle`` per agent cycle."""

    def __init__(self, policy: FirewallPolicy, clock: Callable[[], float] = time.time) -> None:
        self._policy = policy
        self._clock = clock

    def cycle(self) -> FirewallReport:
        path = self._policy.state_file
        try:
            report = _read(path)
        except (OSError, ValueError, InvalidDocument) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return self._failed(
                f"no usable result from gpuward-firewall.service in {path}: {reason}; "
                "is gpuward-firewall.timer enabled?"
            )
        if report.checked_at is None:
            return self._failed(f"{path} does not say when the firewall was checked")
        age = int(self._clock()) - report.checked_at
        limit = STALE_AFTER_CHECKS * self._policy.check_interval_s
        if age > limit:
            log.warning("firewall.result_stale", path=str(path), age_s=age, limit_s=limit)
            return dataclasses.replace(
                report,
                action="stale",
                in_sync=False,
                error=(
                    f"the firewall unit's last check is {age}s old, more than "
                    f"{STALE_AFTER_CHECKS} intervals of {self._policy.check_interval_s}s: "
                    "is gpuward-firewall.timer running?"
                ),
            )
        return report

    def _failed(self, error: str) -> FirewallReport:
        log.error("firewall.result_unusable", error=error)
        return FirewallReport(
            mode=self._policy.mode,
            digest=None,
            in_sync=False,
            action="failed",
            drift=(),
            notes=(),
            error=error,
        )


def _read(path: Path) -> FirewallReport:
    """The report in ``path``, if root wrote it where only root can write."""
    _check_root_only(path.parent.stat(), f"folder {path.parent}")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        # The open file, not the path, is checked: a swap after the check changes nothing.
        _check_root_only(os.fstat(f.fileno()), "the file")
        data = f.read(MAX_STATE_BYTES + 1)
    if len(data) > MAX_STATE_BYTES:
        raise InvalidDocument(f"larger than {MAX_STATE_BYTES} bytes")
    return FirewallReport.from_dict(json.loads(data), str(path))


def _check_root_only(info: os.stat_result, what: str) -> None:
    if info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise InvalidDocument(
            f"{what} is not root's alone (owner uid {info.st_uid}, mode "
            f"{stat.S_IMODE(info.st_mode):04o}): someone else could have written it"
        )
