"""The applier's health gate against the fake libnvidia-ml, through nvidia-ml-py.

Each slot's payload is the fake driver's config: what NVML reports once that
slot is active. ``FAKE_NVML_CONFIG`` points through the ``active`` link, and the
fake re-reads it at every first ``nvmlInit``, so the gate's look before the
switch sees the old driver and its look after sees the new one, as on a host
where the switch loads another driver.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from fleet.manifest import PAYLOAD_DIR
from node.config import load_config
from node.journal import load_journal
from tests.applier.helpers import NEW, OLD, Node
from tests.conftest import Site
from tests.nvml.fakelib import config_text, h100_host

FAKE_LIB = "libnvidia-ml.so.1"  # the payload file the bundle builder writes
HEALTHY = h100_host(gpus=2, driver=NEW)
WATCH = "[applier]\nxid_window_s = 0\n"


def _node_on_nvml(
    site: Site,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_nvml_libs: dict[str, Path],
    new_nvml: Mapping[str, object],
    applier: str = "",
) -> Node:
    """A node running ``OLD`` on two healthy GPUs, with ``NEW`` spooled."""
    folder.mkdir()
    toml = site.agent_toml(folder, extra=WATCH, mode="applier", health_backend="nvml")
    node = Node(toml, load_config(toml))
    monkeypatch.setenv("LD_LIBRARY_PATH", str(fake_nvml_libs["current"]))
    monkeypatch.setenv(
        "FAKE_NVML_CONFIG", str(node.config.slots_dir / "active" / PAYLOAD_DIR / FAKE_LIB)
    )
    site.publish(OLD, content=config_text(h100_host(gpus=2, driver=OLD)).encode())
    node.spool_newest()
    assert node.outcome() == "committed"  # a first install: nothing to compare with
    site.publish(NEW, content=config_text(new_nvml).encode())
    node.spool_newest()
    site.agent_toml(folder, extra=WATCH + applier, mode="applier", health_backend="nvml")
    return Node(toml, load_config(toml))


def test_a_healthy_driver_commits(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_nvml_libs: dict[str, Path]
) -> None:
    node = _node_on_nvml(
        site, tmp_path / "node", monkeypatch, fake_nvml_libs, HEALTHY, 'smoke_test = ["true"]\n'
    )
    assert node.outcome() == "committed"
    assert node.slots.active() == "b"


def test_an_application_xid_after_the_switch_commits(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_nvml_libs: dict[str, Path]
) -> None:
    """XID 13 is a CUDA program's own fault, not the driver's (XID 79 rolls back below)."""
    node = _node_on_nvml(
        site, tmp_path / "node", monkeypatch, fake_nvml_libs, {**HEALTHY, "xids": "1:13"}
    )
    assert node.outcome() == "committed"
    assert node.slots.active() == "b"


@pytest.mark.parametrize(
    ("new_nvml", "applier", "expected"),
    [
        pytest.param(
            h100_host(gpus=2, driver=OLD),
            "",
            f"driver {OLD} is loaded, expected {NEW}",
            id="wrong-driver",
        ),
        pytest.param(
            h100_host(gpus=1, driver=NEW),
            "",
            "1 GPUs visible, 2 before the switch (missing: GPU-00000001",
            id="gpu-missing",
        ),
        pytest.param(
            {**HEALTHY, "xids": "1:79"},
            "",
            "GPU 1 (GPU-00000001-1111-2222-3333-444455556666): XID 79 since the switch",
            id="xid-79",
        ),
        pytest.param(
            {**HEALTHY, "gpu.0.ecc.uncorrected.aggregate": 3},
            "",
            "GPU 0 (GPU-00000000-1111-2222-3333-444455556666): 3 new uncorrectable ECC",
            id="new-uncorrectable-ecc",
        ),
        pytest.param(
            HEALTHY,
            'smoke_test = ["sh", "-c", "echo vectorAdd: FAILED; exit 2"]\n',
            "smoke test sh failed (exit status 2): vectorAdd: FAILED",
            id="smoke-test-fails",
        ),
        pytest.param(
            HEALTHY,
            'smoke_test = ["sleep", "30"]\nsmoke_test_timeout_s = 1\n',
            "smoke test sleep failed (timed out after 1s)",
            id="smoke-test-hangs",
        ),
    ],
)
def test_an_unhealthy_switch_rolls_back_with_its_reason(
    site: Site,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_nvml_libs: dict[str, Path],
    new_nvml: Mapping[str, object],
    applier: str,
    expected: str,
) -> None:
    node = _node_on_nvml(site, tmp_path / "node", monkeypatch, fake_nvml_libs, new_nvml, applier)

    done = node.apply()

    assert done.returncode == 3, done.stderr
    result = json.loads(done.stdout)
    assert (result["outcome"], result["active_slot"]) == ("rolled-back", "a")
    assert result["reason"].startswith(f"driver {NEW} failed health: ")
    assert expected in result["reason"]
    journal = load_journal(node.journal_file)
    assert journal.state == "rolled-back" and expected in journal.reason
    # The baseline the gate compared with was journaled before the switch.
    assert journal.baseline is not None and len(journal.baseline["gpus"]) == 2
