"""bench/switch.py drives the real applier: its switch commits and its rollback rolls back
(the benchmark raises when the applier ends anywhere else)."""

from __future__ import annotations

import pytest

from bench.switch import main


def test_the_switch_benchmark_runs_a_commit_and_a_rollback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    figures = main(["--rounds", "2"])
    assert min(figures.rename_s, figures.switch_s, figures.rollback_s) > 0
    out = capsys.readouterr().out
    assert "switch, committed:" in out
    assert "rollback:" in out
