"""The report scale benchmark runs end to end at a tiny size: it fills PostgreSQL,
makes every format and counts the PDF's pages (the figures are the benchmark's to print)."""

from __future__ import annotations

from bench.report_scale import run
from server.report_render import CONTENT_TYPES


def test_the_benchmark_makes_every_format_at_a_tiny_size() -> None:
    result = run(40, routine=2)
    assert result["nodes"] == 40
    assert result["reports"] == 5 * 39  # one never reported; two changes, two routine, latest
    assert set(result["steps"]) == {"read", "judge", "render", "sign", "keep", "total"}
    assert set(result["formats"]) == set(CONTENT_TYPES)
    assert all(f["bytes"] > 0 for f in result["formats"].values())
    assert result["copy_out_bytes"] > 0
    assert 1 <= result["pdf_pages"] < 60
