"""A node whose driver settings drift from its bundle's signed declaration is
reported with the drift, end to end: the agent reads the fake libnvidia-ml (through
nvidia-ml-py) and the driver's params file, and the real server shows the drift on
its API and dashboard; the applier's next start sets back the modes it can."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import urllib3

from fleet.driver_settings import CDMM, DriverSettings
from node.config import load_config
from tests.conftest import Site
from tests.nvml.conftest import H100Host
from tests.nvml.fakelib import write_config
from tests.simnode import dashboard_sign_in

GPUWARD = (sys.executable, "-m", "gpuward")
DRIVER = "580.82.07"
DECLARED = DriverSettings.from_dict(
    {
        "module_parameters": {CDMM: "driver"},
        "persistence_mode": True,
        "compute_mode": "exclusive-process",
    }
)


def test_drift_from_nvml_and_the_params_file_reaches_the_server(
    site: Site, tmp_path: Path, fake_nvml_libs: dict[str, Path], h100: H100Host
) -> None:
    state = tmp_path / "gpu-state"  # where the fake keeps the modes NVML sets
    fake = write_config(tmp_path / "fake-nvml.conf", h100(gpus=2, driver=DRIVER, state=state))
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": str(fake_nvml_libs["current"]),
        "FAKE_NVML_CONFIG": str(fake),
    }
    config = site.agent_toml(tmp_path, mode="applier", health_backend="nvml")
    params = load_config(config).driver_params_file
    params.parent.mkdir(parents=True)
    params.write_text(f'CoherentGPUMemoryMode: "driver"\nResmanDebugLevel: {2**32 - 1}\n')
    site.publish(DRIVER, settings=DECLARED)

    def gpuward(*args: str) -> dict[str, Any]:
        done = subprocess.run(
            [*GPUWARD, *args, "--json", "--config", str(config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc

    gpuward("agent", "enroll")
    assert gpuward("agent", "run", "--once")["update"] == "staged"
    assert gpuward("agent", "apply")["outcome"] == "committed"
    viewer = site.server.issue_token("viewer")

    def node() -> dict[str, Any]:
        response = urllib3.request(
            "GET", f"{site.url}/v1/nodes/n1", headers={"Authorization": f"Bearer {viewer}"}
        )
        assert response.status == 200
        doc: dict[str, Any] = json.loads(response.data)
        return doc

    sent = gpuward("agent", "run", "--once")
    assert (sent["update"], sent["report_sent"]) == ("committed", True)
    shown = node()
    assert shown["settings_drift"] == []
    assert shown["report"]["settings"]["declared"] == DECLARED.to_dict()
    assert shown["report"]["health"]["status"] == "healthy"

    # The module came back without the CDMM switch (loaded by hand, say), and GPU 1
    # lost its modes in a driver reload.
    params.write_text(f'CoherentGPUMemoryMode: ""\nResmanDebugLevel: {2**32 - 1}\n')
    with state.open("a") as gpus:
        gpus.write("gpu.1.persistence_mode=0\ngpu.1.compute_mode=0\n")
    assert gpuward("agent", "run", "--once")["report_sent"]

    drifted = [
        f"{CDMM} is '', declared 'driver'",
        "GPU 1: persistence_mode is 'disabled', declared 'enabled'",
        "GPU 1: compute_mode is 'default', declared 'exclusive-process'",
    ]
    shown = node()
    assert shown["settings_drift"] == drifted
    report = shown["report"]
    assert [(d["setting"], d["gpu"], d["effective"]) for d in report["settings"]["drift"]] == [
        (CDMM, None, ""),
        ("persistence_mode", 1, "disabled"),
        ("compute_mode", 1, "default"),
    ]
    assert report["health"]["status"] == "degraded"
    assert report["health"]["reasons"] == [f"driver setting {d}" for d in drifted]
    assert site.fleet()["n1"]["settings_drift"] == drifted

    page = urllib3.request(
        "GET", f"{site.url}/nodes/n1", headers={"Cookie": dashboard_sign_in(site.url, viewer)}
    ).data.decode()
    assert 'id="settings-drift"' in page
    assert "exclusive-process" in page and "It runs otherwise, 3 time(s)" in page

    # The applier's next start (its timer) sets the GPU modes again; a module
    # parameter waits for the driver's next load.
    assert gpuward("agent", "apply")["outcome"] == "nothing"
    gpuward("agent", "run", "--once")
    assert node()["settings_drift"] == drifted[:1]
