"""SIGKILL at every step boundary and around every fsync, then a restart.

Each time the node must end on exactly one complete slot, old or new, with a
journal that names it and the module parameters that slot declares, and the
running slot must never have been written.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from applier.settings import MODPROBE_CONF
from fleet.driver_settings import DriverSettings, modprobe_options
from fleet.driverlog import replay
from node.crash_points import CRASH_POINTS, REFUSAL_PATH, ROLLBACK_PATH
from node.journal import load_journal
from node.spool import BUNDLE, has_request
from tests.applier.helpers import NEW, attested, measured, node_with
from tests.attest.conftest import Tpm
from tests.conftest import Site

# Each bundle declares its own module parameters: the file must follow the slot.
SETTINGS = (
    DriverSettings.from_dict({"module_parameters": {"NVreg_EnableStreamMemOPs": "0"}}),
    DriverSettings.from_dict(
        {"module_parameters": {"NVreg_EnableStreamMemOPs": "1", "NVreg_NvLinkDisable": "1"}}
    ),
)


def test_the_crash_points_cover_every_step() -> None:
    assert len(CRASH_POINTS) >= 32  # issue #18: the one state machine keeps every point
    assert len(set(CRASH_POINTS)) == len(CRASH_POINTS)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_then_restart_ends_on_one_complete_slot(
    site: Site, tmp_path: Path, point: str, tpm: Tpm
) -> None:
    """Every node measures its driver into a TPM, so the measuring steps are
    covered too; after each restart the measurement log still replays to the PCR."""
    rollback, refused = point in ROLLBACK_PATH, point in REFUSAL_PATH
    extra = f'unhealthy_drivers = ["{NEW}"]\n' if rollback else ""
    node, old = node_with(site, tmp_path / "node", extra, tables=attested(tpm), settings=SETTINGS)
    new = node.spool_newest()
    if refused:
        bundle = node.config.spool_dir / BUNDLE
        bundle.write_bytes(bundle.read_bytes()[:-1] + b"X")
    running = node.files("a")

    died = node.apply(crash_at=point)
    assert died.returncode == -signal.SIGKILL, died.stderr
    node.outcome()

    journal = load_journal(node.journal_file)
    if rollback or refused:
        assert (journal.state, node.slots.active()) == (
            "rolled-back" if rollback else "failed",
            "a",
        )
    else:
        assert (journal.state, journal.slot, node.slots.active()) == ("committed", "b", "b")
        node.assert_complete("b", new)
    active = node.slots.active()
    assert active is not None
    declared = SETTINGS[0] if active == "a" else SETTINGS[1]
    modprobe = node.config.root_dir / MODPROBE_CONF
    assert modprobe.read_bytes() == modprobe_options(declared, active)
    events, pcr = measured(node)
    assert replay(events, 15) == pcr
    assert events[-1].sha256 == (old if rollback or refused else new)
    node.assert_complete("a", old)
    assert node.files("a") == running  # the running slot was never written
    assert not has_request(node.config.spool_dir)
    # Nothing is left in flight: a further start changes nothing.
    assert node.outcome() == "nothing"
    assert load_journal(node.journal_file) == journal
