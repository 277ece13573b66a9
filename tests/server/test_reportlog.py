"""Reports are logged as one summary per interval, with what went wrong counted."""

from __future__ import annotations

from structlog.testing import capture_logs

from server.reportlog import ReportTally


def test_one_summary_event_per_interval() -> None:
    tally = ReportTally(interval_s=60)
    with capture_logs() as logs:
        tally.count(1000.0, healthy=True, attested=True)
        tally.count(1030.0, healthy=False, attested=False)
        assert logs == []
        tally.count(1060.0, healthy=True, attested=None)
        tally.count(1061.0, healthy=True, attested=True)
    assert [e["event"] for e in logs] == ["reports_received"]
    summary = logs[0]
    assert (summary["seconds"], summary["reports"], summary["unhealthy"]) == (60, 3, 1)
    assert (summary["attested"], summary["attestation_failed"]) == (1, 1)
