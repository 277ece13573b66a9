"""A switch enforces the bundle's signed driver settings, through nvidia-ml-py and the
fake libnvidia-ml: the modprobe file, the GPU modes, and the gate that reads them back.

As in ``test_health_gate``, each slot's payload is the fake driver's config, found
through the ``active`` link; both point at one state file, where the fake keeps the
modes NVML sets, as a GPU does across processes. The test writes the driver's
``/proc/driver/nvidia/params`` under the node's root: what the module shows once loaded.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from applier.settings import MODPROBE_CONF
from fleet.driver_settings import CDMM, DriverSettings, modprobe_options
from fleet.manifest import PAYLOAD_DIR
from node.config import load_config
from node.journal import load_journal
from tests.applier.helpers import NEW, OLD, Node
from tests.conftest import Site
from tests.nvml.fakelib import config_text, h100_host

GPUWARD = (sys.executable, "-m", "gpuward")
WATCH = "[applier]\nxid_window_s = 0\n"
OLD_SETTINGS = DriverSettings.from_dict({"module_parameters": {"NVreg_EnableStreamMemOPs": "0"}})
NEW_SETTINGS = DriverSettings.from_dict(
    {
        "module_parameters": {CDMM: "driver", "NVreg_EnableStreamMemOPs": "1"},
        "unlisted_parameters": {"NVreg_RmNvlinkBandwidthLinkCount": "2"},
        "persistence_mode": True,
        "ecc": False,
        "compute_mode": "exclusive-process",
    }
)
# As a 580 driver prints them, loaded with OLD's and with NEW's parameters.
OLD_PARAMS = 'CoherentGPUMemoryMode: ""\nEnableStreamMemOPs: 0\nRmNvlinkBandwidthLinkCount: 0\n'
NEW_PARAMS = (
    'CoherentGPUMemoryMode: "driver"\nEnableStreamMemOPs: 1\nRmNvlinkBandwidthLinkCount: 2\n'
)


class SettingsNode:
    """A node on NVML running ``OLD`` with its settings, with ``NEW`` spooled."""

    def __init__(
        self,
        site: Site,
        folder: Path,
        monkeypatch: pytest.MonkeyPatch,
        fake_nvml_libs: dict[str, Path],
        new_nvml: dict[str, Any],
    ) -> None:
        folder.mkdir()
        self.state = folder / "gpu-state"  # the GPUs' modes, as the fake keeps them
        toml = site.agent_toml(folder, extra=WATCH, mode="applier", health_backend="nvml")
        self.node = Node(toml, load_config(toml))
        monkeypatch.setenv("LD_LIBRARY_PATH", str(fake_nvml_libs["current"]))
        monkeypatch.setenv(
            "FAKE_NVML_CONFIG",
            str(self.node.config.slots_dir / "active" / PAYLOAD_DIR / "libnvidia-ml.so.1"),
        )
        old = h100_host(gpus=2, driver=OLD, state=self.state)
        site.publish(OLD, content=config_text(old).encode(), settings=OLD_SETTINGS)
        self.params(OLD_PARAMS)
        self.node.spool_newest()
        assert self.node.outcome() == "committed"
        new = {**h100_host(gpus=2, driver=NEW, state=self.state), **new_nvml}
        site.publish(NEW, content=config_text(new).encode(), settings=NEW_SETTINGS)
        self.node.spool_newest()

    def params(self, text: str) -> None:
        """What the loaded module shows; the test plays the kernel."""
        path = self.node.config.driver_params_file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    @property
    def modprobe(self) -> bytes:
        return (self.node.config.root_dir / MODPROBE_CONF).read_bytes()

    def modes(self) -> dict[str, str]:
        """The latest value of each mode the fake's GPUs were set to."""
        lines = self.state.read_text().splitlines() if self.state.exists() else []
        return dict(line.split("=", 1) for line in lines)

    def health(self) -> dict[str, Any]:
        """``gpuward agent health --json``: how the agent sees the node now."""
        done = subprocess.run(
            [*GPUWARD, "agent", "health", "--json", "--config", str(self.node.toml)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc


@pytest.fixture
def make_node(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_nvml_libs: dict[str, Path]
) -> Any:
    def make(**new_nvml: Any) -> SettingsNode:
        return SettingsNode(site, tmp_path / "node", monkeypatch, fake_nvml_libs, new_nvml)

    return make


def test_a_switch_writes_the_parameters_and_sets_the_modes(make_node: Any) -> None:
    settings = make_node()
    assert settings.modprobe == modprobe_options(OLD_SETTINGS, "a")
    settings.params(NEW_PARAMS)

    done = settings.node.apply()

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["outcome"], result["active_slot"], result["unenforced"]) == (
        "committed",
        "b",
        [],
    )
    assert settings.modprobe.decode().splitlines()[-1] == (
        f"options nvidia {CDMM}=driver NVreg_EnableStreamMemOPs=1 "
        "NVreg_RmNvlinkBandwidthLinkCount=2"
    )
    assert (settings.node.config.root_dir / MODPROBE_CONF).stat().st_mode & 0o777 == 0o644
    assert settings.modes() == {
        "gpu.0.persistence_mode": "1",
        "gpu.0.ecc.pending": "0",  # NVML applies ECC at the next reboot
        "gpu.0.compute_mode": "3",  # exclusive process
        "gpu.1.persistence_mode": "1",
        "gpu.1.ecc.pending": "0",
        "gpu.1.compute_mode": "3",
    }
    # The agent's view of the committed node: only ECC differs, pending a reboot.
    health = settings.health()
    assert [d["setting"] for d in health["settings"]["drift"]] == ["ecc", "ecc"]
    assert all(d["pending"] for d in health["settings"]["drift"])
    assert health["status"] == "degraded"
    pending = "driver setting GPU 0: ecc is 'enabled', declared 'disabled', pending a reset"
    assert f"{pending} or reboot" in health["status_reasons"]


def test_a_mode_nvml_refuses_rolls_back_and_restores_the_old_parameters(make_node: Any) -> None:
    settings = make_node(**{"gpu.1.fail.nvmlDeviceSetComputeMode": "NO_PERMISSION"})
    settings.params(NEW_PARAMS)

    done = settings.node.apply()

    assert done.returncode == 3, done.stderr
    result = json.loads(done.stdout)
    assert (result["outcome"], result["active_slot"]) == ("rolled-back", "a")
    assert (
        "driver setting GPU 1: compute_mode is 'default', declared 'exclusive-process'"
        in (result["reason"])
    )
    assert any("GPU 1: NVML: Insufficient Permissions" in u for u in result["unenforced"])
    assert settings.modprobe == modprobe_options(OLD_SETTINGS, "a")


def test_a_parameter_the_driver_does_not_show_rolls_back_naming_it(make_node: Any) -> None:
    settings = make_node()
    settings.params(NEW_PARAMS.replace('"driver"', '""'))  # a distro file overrode it, say

    done = settings.node.apply()

    assert done.returncode == 3, done.stderr
    reason = json.loads(done.stdout)["reason"]
    assert f"driver setting {CDMM} is '', declared 'driver'" in reason
    assert settings.modprobe == modprobe_options(OLD_SETTINGS, "a")
    assert load_journal(settings.node.journal_file).state == "rolled-back"


@pytest.mark.parametrize(
    ("point", "refused", "ends"),
    [
        ("settings:written", False, "committed"),
        ("slots:switch-before-fsync", False, "committed"),
        ("settings:applied", False, "committed"),
        ("gate:looked", False, "committed"),
        ("settings:applied", True, "rolled-back"),
        ("settings:restored", True, "rolled-back"),
        ("journal:rolled-back:before", True, "rolled-back"),
    ],
)
def test_a_crash_anywhere_resumes_to_one_slot_and_its_settings(
    make_node: Any, point: str, refused: bool, ends: str
) -> None:
    broken = {"gpu.*.fail.nvmlDeviceSetPersistenceMode": "NO_PERMISSION"} if refused else {}
    settings = make_node(**broken)
    settings.params(NEW_PARAMS)

    died = settings.node.apply(crash_at=point)
    assert died.returncode == -signal.SIGKILL, died.stderr
    settings.node.outcome()

    journal = load_journal(settings.node.journal_file)
    slot = "b" if ends == "committed" else "a"
    assert (journal.state, settings.node.slots.active()) == (ends, slot)
    assert settings.modprobe == modprobe_options(
        NEW_SETTINGS if slot == "b" else OLD_SETTINGS, slot
    )
    if ends == "committed":
        assert settings.modes()["gpu.1.compute_mode"] == "3"
    assert settings.node.outcome() == "nothing"


def test_every_later_start_sets_again_what_a_driver_reload_forgets(make_node: Any) -> None:
    settings = make_node()
    settings.params(NEW_PARAMS)
    assert settings.node.outcome() == "committed"
    # A reboot: the driver comes back with persistence off and the default compute mode.
    with settings.state.open("a") as state:
        state.write("gpu.0.persistence_mode=0\ngpu.0.compute_mode=0\n")

    assert settings.node.outcome() == "nothing"

    assert settings.modes()["gpu.0.persistence_mode"] == "1"
    assert settings.modes()["gpu.0.compute_mode"] == "3"
    assert settings.modes()["gpu.0.ecc.pending"] == "0"  # ECC waits for the next switch
