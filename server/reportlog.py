"""Received reports logged as one summary event per interval, not a line each.

At 100,000 nodes reporting every minute a line per report would be most of the
server's work and output; problems (refused reports, failed attestation) are
still logged one by one where they happen, and each report is a debug event.
"""

from __future__ import annotations

from collections import Counter

import structlog

log = structlog.get_logger(__name__)

SUMMARY_INTERVAL_S = 60.0


class ReportTally:
    """Counts stored reports; logs ``reports_received`` once ``interval_s`` has
    passed since the first report counted in the current interval."""

    def __init__(self, interval_s: float = SUMMARY_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._since: float | None = None
        self._counts: Counter[str] = Counter()

    def count(self, now: float, healthy: bool, attested: bool | None) -> None:
        if self._since is None:
            self._since = now
        self._counts["reports"] += 1
        self._counts["unhealthy"] += not healthy
        if attested is not None:
            self._counts["attested" if attested else "attestation_failed"] += 1
        if now - self._since >= self._interval_s:
            log.info("reports_received", seconds=round(now - self._since), **self._counts)
            self._since, self._counts = None, Counter()
