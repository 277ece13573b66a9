"""The agent's node_exporter textfile: written after every cycle by real agents
(simulated GPUs) against the real server, and clean to promtool."""

from __future__ import annotations

import dataclasses
import stat
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from fleet.errors import GpuwardError
from gpuward.node import run_once
from node.config import AgentConfig, ApplierSettings, load_config
from tests.conftest import Site
from tests.metrics.exposition import Exposition, check_metrics


def with_textfile(config: AgentConfig, path: Path) -> AgentConfig:
    return dataclasses.replace(config, metrics_textfile=path)


def read(path: Path) -> Exposition:
    return Exposition(path.read_text())


def test_the_textfile_is_off_by_default_and_set_in_the_metrics_table(tmp_path: Path) -> None:
    base = 'node_id = "n"\nserver_url = "https://s"\ntrusted_root = "r.json"\nbranch = "R580"\n'
    path = tmp_path / "agent.toml"
    path.write_text(base)
    assert load_config(path).metrics_textfile is None
    path.write_text(base + '[metrics]\ntextfile = "metrics/gpuward.prom"\n')
    assert load_config(path).metrics_textfile == tmp_path / "metrics/gpuward.prom"
    path.write_text(base + '[metrics]\ntextfile = "gpuward.txt"\n')
    with pytest.raises(GpuwardError, match=r"only files named \*\.prom"):
        load_config(path)


def test_a_committed_update_is_written_with_the_gpus_and_the_report(
    site: Site, tmp_path: Path
) -> None:
    published = site.publish("580.65.06")
    textfile = tmp_path / "node-exporter" / "gpuward.prom"
    before = time.time()
    result = run_once(with_textfile(site.agent(), textfile))
    assert result.outcome.update == "committed" and result.report_sent

    shown = read(textfile)
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o644  # node_exporter is another user
    assert shown.value("gpuward_agent_cycle_outcome", outcome="committed") == 1
    assert sum(shown.matching("gpuward_agent_cycle_outcome").values()) == 1
    assert shown.value("gpuward_agent_report_sent") == 1
    last = shown.value("gpuward_agent_report_last_success_timestamp_seconds")
    assert before <= last <= time.time()
    (active,) = shown.matching("gpuward_agent_bundle_info", role="active")
    assert dict(active)["target"] == published.target_path
    assert shown.value("gpuward_agent_driver_info", version="580.65.06") == 1
    assert sorted(shown.matching("gpuward_agent_gpu_healthy").values()) == [1, 1]
    check_metrics(shown.text)
    assert [p.name for p in textfile.parent.iterdir()] == ["gpuward.prom"]  # no leftovers


def test_a_cycle_that_cannot_report_keeps_the_last_success(site: Site, tmp_path: Path) -> None:
    site.publish("580.65.06")
    textfile = tmp_path / "gpuward.prom"
    config = with_textfile(site.agent(), textfile)
    run_once(config)
    reported = read(textfile).value("gpuward_agent_report_last_success_timestamp_seconds")

    site.server.stop()
    result = run_once(config)
    assert not result.report_sent and result.outcome.update == "failed"
    shown = read(textfile)
    assert shown.value("gpuward_agent_cycle_outcome", outcome="failed") == 1
    assert shown.value("gpuward_agent_report_sent") == 0
    assert shown.value("gpuward_agent_report_last_success_timestamp_seconds") == reported
    check_metrics(shown.text)


def test_a_bundle_left_for_the_applier_is_shown_staged(site: Site, tmp_path: Path) -> None:
    published = site.publish("580.65.06")
    textfile = tmp_path / "gpuward.prom"
    config = dataclasses.replace(
        with_textfile(site.agent(), textfile), applier=ApplierSettings(mode="applier")
    )
    assert run_once(config).outcome.update == "staged"
    shown = read(textfile)
    assert shown.value("gpuward_agent_cycle_outcome", outcome="staged") == 1
    (staged,) = shown.matching("gpuward_agent_bundle_info")
    assert dict(staged) == {"role": "staged", "slot": "", "target": published.target_path}


def test_a_failed_cycle_says_error(site: Site, tmp_path: Path) -> None:
    textfile = tmp_path / "gpuward.prom"
    config = with_textfile(site.agent(), textfile)
    config.state_file.parent.mkdir(parents=True, exist_ok=True)
    config.state_file.write_text("{not json")
    with pytest.raises(GpuwardError, match=r"agent state .* is corrupt"):
        run_once(config)
    shown = read(textfile)
    assert shown.value("gpuward_agent_cycle_outcome", outcome="error") == 1
    assert shown.matching("gpuward_agent_gpu_healthy") == {}
    check_metrics(shown.text)


def test_a_textfile_that_cannot_be_written_never_stops_the_update(
    site: Site, tmp_path: Path
) -> None:
    site.publish("580.65.06")
    (tmp_path / "file").write_text("")
    config = with_textfile(site.agent(), tmp_path / "file" / "gpuward.prom")
    with capture_logs() as logs:
        assert run_once(config).outcome.update == "committed"
    (warned,) = [e for e in logs if e["event"] == "metrics_textfile_not_written"]
    assert "ReadWritePaths" in warned["action"]
