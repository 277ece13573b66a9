"""Times as people read them: the one format the dashboard and the command share.

Documents carry seconds since the epoch (machines compute with them); pages and
terminal tables show UTC dates, the same way everywhere, so a time read on the
dashboard can be matched with one in ``gpuward`` output or a log.
"""

from __future__ import annotations

from datetime import UTC, datetime


def when(epoch: float | None) -> str:
    """``epoch`` in UTC: "2026-12-07 04:22:14 UTC"; None: "never"."""
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
