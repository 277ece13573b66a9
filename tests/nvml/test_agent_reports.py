"""A running agent on the fake libnvidia-ml.so.1: its reports carry each GPU's
sample and findings, the node's status, and every XID exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import urllib3

from tests.conftest import Site
from tests.nvml.conftest import H100Host
from tests.nvml.fakelib import write_config

GPUWARD = (sys.executable, "-m", "gpuward")


def test_reports_carry_samples_findings_and_each_xid_once(
    site: Site, tmp_path: Path, fake_nvml_libs: dict[str, Path], h100: H100Host
) -> None:
    host = h100(gpus=2, xids="1:79,0:13,0:63", **{"gpu.0.pcie.width": 8})
    fake = write_config(tmp_path / "fake-nvml.conf", host)
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": str(fake_nvml_libs["current"]),
        "FAKE_NVML_CONFIG": str(fake),
    }
    config = site.agent_toml(tmp_path, extra="interval_s = 1\n")
    config.write_text(config.read_text().replace('"simulated"', '"nvml"'))
    enrolled = subprocess.run(
        [*GPUWARD, "agent", "enroll", "--config", str(config)], env=env, capture_output=True
    )
    assert enrolled.returncode == 0, enrolled.stderr
    viewer = site.server.issue_token("viewer")

    def reports() -> list[dict[str, Any]]:
        response = urllib3.request(
            "GET", f"{site.url}/v1/nodes/n1", headers={"Authorization": f"Bearer {viewer}"}
        )
        return [h["report"] for h in reversed(json.loads(response.data)["history"])]

    def xids(history: list[dict[str, Any]]) -> list[tuple[int, int]]:
        return [(x["gpu_index"], x["xid"]) for r in history for x in r["health"]["xids"]]

    agent = subprocess.Popen(
        [*GPUWARD, "agent", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        # Three XIDs, then one more report to show none comes back.
        while (
            len(xids(history := reports())) < 3 or len(history) < 2 or history[-1]["health"]["xids"]
        ):
            assert time.monotonic() < deadline, history
            assert agent.poll() is None
            time.sleep(0.2)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err
    assert xids(history) == [(1, 79), (0, 13), (0, 63)]

    with_79 = next(r for r in history if (1, 79) in xids([r]))
    health = with_79["health"]
    assert health["status"] == "failed"
    assert (
        "GPU 1: XID 79 (GPU has fallen off the bus): drain the node and reboot it"
        in (health["reasons"])
    )
    assert not any("XID 13" in r for r in health["reasons"])  # an application fault
    last = history[-1]["health"]
    assert last["status"] == "degraded"  # the narrow link remains; the XIDs were reported
    assert last["reasons"] == ["GPU 0: PCIe link x8 of x16"]
    assert [g["sample"]["uuid"] for g in last["gpus"]] == [
        "GPU-00000000-1111-2222-3333-444455556666",
        "GPU-00000001-1111-2222-3333-444455556666",
    ]
    assert [f["rule"] for f in last["gpus"][0]["findings"]] == ["pcie_trained_down"]
    assert last["gpus"][0]["sample"]["pcie_width"] == 8


def test_agent_health_prints_inventory_and_classification(
    site: Site, tmp_path: Path, fake_nvml_libs: dict[str, Path], h100: H100Host
) -> None:
    host = h100(gpus=2, **{"gpu.1.remap.pending": 1, "gpu.0.fail.nvmlDeviceGetSerial": 3})
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": str(fake_nvml_libs["current"]),
        "FAKE_NVML_CONFIG": str(write_config(tmp_path / "fake-nvml.conf", host)),
    }
    config = site.agent_toml(tmp_path)
    config.write_text(config.read_text().replace('"simulated"', '"nvml"'))
    done = subprocess.run(
        [*GPUWARD, "agent", "health", "--config", str(config), "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 3, done.stderr
    doc = json.loads(done.stdout)
    assert doc["reasons"] == ["no driver bundle is active"]  # nothing installed to judge yet
    inventory = doc["inventory"]
    assert inventory["driver_version"] == "580.95.05"
    assert [g["uuid"] for g in inventory["gpus"]] == [
        "GPU-00000000-1111-2222-3333-444455556666",
        "GPU-00000001-1111-2222-3333-444455556666",
    ]
    assert inventory["gpus"][0]["serial"] is None  # not supported: unknown, not an error
    assert inventory["gpus"][1]["architecture"] == "hopper"
    assert doc["status"] == "degraded"
    assert doc["status_reasons"] == ["GPU 1: a row remap is pending: reset the GPU"]
    assert doc["health"]["gpus"][1]["findings"] == [
        {
            "rule": "remap_pending",
            "severity": "warning",
            "message": "a row remap is pending: reset the GPU",
        }
    ]
