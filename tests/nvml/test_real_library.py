"""NVIDIA's real libnvidia-ml.so.1 on a machine without the NVIDIA kernel module.

That is what a node looks like after a kernel upgrade its driver was not built
for: the library loads, ``nvmlInit`` fails with "Driver Not Loaded". The agent
must call the node failed, say why, and go on running and reporting.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import urllib3

from tests.conftest import Site
from tests.netutil import wait_for

GPUWARD = (sys.executable, "-m", "gpuward")


def nvml_agent(site: Site, folder: Path, real_nvml_lib: Path) -> tuple[Path, dict[str, str]]:
    """An agent config reading NVML, and the environment that loads the real library."""
    config = site.agent_toml(folder, extra="interval_s = 1\n")
    config.write_text(config.read_text().replace('"simulated"', '"nvml"'))
    return config, {**os.environ, "LD_LIBRARY_PATH": str(real_nvml_lib)}


def gpuward(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GPUWARD, *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def test_health_says_failed_driver_not_loaded(
    site: Site, tmp_path: Path, real_nvml_lib: Path
) -> None:
    config, env = nvml_agent(site, tmp_path, real_nvml_lib)
    done = gpuward(env, "agent", "health", "--config", str(config), "--json")
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 3, done.stderr
    doc = json.loads(done.stdout)
    assert doc["status"] == "failed"
    assert doc["healthy"] is False
    assert doc["driver_version"] is None and doc["gpus"] == []
    (reason,) = doc["status_reasons"]
    assert reason.startswith("NVML: Driver Not Loaded (nvmlInit): ")
    assert "driver not loaded" in reason.lower()
    assert doc["reasons"] == [reason]
    assert doc["health"] == {"status": "failed", "reasons": [reason], "gpus": [], "xids": []}


def test_running_agent_reports_failed_and_keeps_running(
    site: Site, tmp_path: Path, real_nvml_lib: Path
) -> None:
    config, env = nvml_agent(site, tmp_path, real_nvml_lib)
    enrolled = gpuward(env, "agent", "enroll", "--config", str(config))
    assert enrolled.returncode == 0, enrolled.stderr
    viewer = site.server.issue_token("viewer")

    def reports() -> list[dict[str, Any]]:
        response = urllib3.request(
            "GET", f"{site.url}/v1/nodes/n1", headers={"Authorization": f"Bearer {viewer}"}
        )
        assert response.status == 200, response.data
        return [h["report"] for h in json.loads(response.data)["history"]]

    agent = subprocess.Popen(
        [*GPUWARD, "--log-format", "json", "agent", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Two reports: the agent survived the first cycle and went on to the next.
        history = wait_for("two reports", lambda: len(reports()) >= 2 and reports(), 60)
        assert agent.poll() is None
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err
    assert "Traceback" not in err
    for report in history:
        assert report["driver_version"] is None and report["gpus"] == []
        assert report["health"]["status"] == "failed"
        (reason,) = report["health"]["reasons"]
        assert reason.startswith("NVML: Driver Not Loaded (nvmlInit): ")
    site_view = site.fleet()["n1"]
    assert site_view["state"] == "unhealthy"
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "xid_listener_failed" in events  # the listener could not start either, and said so
    assert events.count("cycle_done") >= 2
    assert events[-1] == "agent_stopped"
