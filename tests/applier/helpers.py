"""A simulated node driven the way production drives it: the agent spools, root applies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.channel import ImageChannel
from applier.measure import read_log
from applier.state_machine import apply_once
from fleet.driver_settings import DriverSettings
from fleet.driverlog import DRIVER, DriverEvent
from fleet.manifest import PAYLOAD_DIR
from keys.bundle import sha256_file
from node.attest.attestor import Attestor
from node.config import AgentConfig, load_config
from node.crash_points import CRASH_ENV
from node.slots import Slots
from node.spool import write_spool
from tests.attest.conftest import Tpm
from tests.conftest import GPU_NAME, Site

OLD, NEW = "580.65.06", "580.82.07"


@dataclass(frozen=True)
class Node:
    toml: Path
    config: AgentConfig

    @property
    def slots(self) -> Slots:
        return Slots(self.config.slots_dir)

    @property
    def journal_file(self) -> Path:
        return self.config.journal_file

    def spool_newest(self) -> str:
        """The unprivileged agent's part: refresh, verify, download, leave it in the spool."""
        channel = ImageChannel(self.config)
        channel.refresh()
        newest = max(channel.candidates(self.config.branch), key=lambda c: c.manifest.version)
        write_spool(self.config.spool_dir, newest.info, channel.fetch(newest.info))
        return newest.sha256

    def apply(
        self, crash_at: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``gpuward agent apply`` as its own process, as the systemd unit starts it;
        ``timeout`` guards a test against an applier that hangs."""
        env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
        if crash_at is not None:
            env[CRASH_ENV] = crash_at
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "gpuward",
                "agent",
                "apply",
                "--json",
                "--config",
                str(self.toml),
            ],
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )

    def outcome(self, crash_at: str | None = None) -> str:
        """Apply in a process that is not killed; what it reports."""
        done = self.apply(crash_at)
        assert done.returncode in (0, 3), done.stderr
        return str(json.loads(done.stdout)["outcome"])

    def files(self, slot: str) -> dict[str, bytes]:
        root = self.slots.path(slot)
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    def assert_complete(self, slot: str, sha256: str) -> None:
        """``slot`` holds exactly the bundle ``sha256``, every file as signed."""
        content = self.slots.content(slot)
        assert content is not None and content.sha256 == sha256
        for file in content.manifest.files:
            assert sha256_file(self.slots.path(slot) / PAYLOAD_DIR / file.name) == file.sha256


def node_with(
    site: Site,
    folder: Path,
    extra: str = "",
    tables: str = "",
    settings: tuple[DriverSettings | None, DriverSettings | None] = (None, None),
) -> tuple[Node, str]:
    """A node running ``OLD`` (installed through the applier) with ``NEW`` published.

    ``extra`` (TOML under ``[simulated]``) takes effect after ``OLD`` is installed;
    ``tables`` (more TOML tables, e.g. ``[attestation]``) from the start; ``settings``
    are the driver settings ``OLD`` and ``NEW`` declare.
    """
    folder.mkdir(parents=True)
    simulated = f'{tables}[simulated]\ncount = 2\nname = "{GPU_NAME}"\n'
    toml = site.agent_toml(folder, extra=simulated, mode="applier")
    site.publish(OLD, settings=settings[0])
    installing = Node(toml, load_config(toml))
    old = installing.spool_newest()
    assert apply_once(installing.config).outcome == "committed"
    assert installing.slots.active() == "a"
    site.agent_toml(folder, extra=simulated + extra, mode="applier")
    site.publish(NEW, settings=settings[1])
    return Node(toml, load_config(toml)), old


def attested(tpm: Tpm) -> str:
    """The ``[attestation]`` table of a node whose applier measures into ``tpm``."""
    return f'[attestation]\ntcti = "{tpm.tcti}"\nevent_log = "{tpm.state / "no-log"}"\n'


def bundles(events: tuple[DriverEvent, ...]) -> list[DriverEvent]:
    """The bundle events of a measurement log, without the boot's key event."""
    return [e for e in events if e.kind == DRIVER]


def measured(node: Node) -> tuple[tuple[DriverEvent, ...], bytes]:
    """The applier's measurement log and the driver PCR's value now."""
    attest = node.config.attestation
    assert attest is not None
    with Attestor(attest, node.config.state_dir) as attestor:
        value = attestor.read_pcr(attest.driver_pcr)
    return read_log(node.config.measurement_log), value
