"""Times as people read them: the one format the dashboard and the command share.

Documents carry seconds since the epoch (machines compute with them); pages and
terminal tables show UTC dates, the same way everywhere, so a time read on the
dashboard can be matched with one in ``gpuward`` output or a log. Spans of time
(a job's MTBF, a checkpoint interval) read in the unit that suits them, with the
seconds the documents carry alongside.
"""

from __future__ import annotations

from datetime import UTC, datetime


def when(epoch: float | None) -> str:
    """``epoch`` in UTC: "2026-12-07 04:22:14 UTC"; None: "never"."""
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float) -> str:
    """A span: "45 s", "12.5 min (750 s)", "3.25 h (11700 s)"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min ({seconds:.0f} s)"
    return f"{seconds / 3600:.2f} h ({seconds:.0f} s)"
