"""How long the applier's slot switch and rollback take, against a bare ``rename(2)``.

The switch is the applier's own state machine (``applier.state_machine``) on a
simulated host, as the tests run it: two slots staged with the ``files`` backend,
the journal at ``switching``, then ``apply_once`` journals each step (write,
fsync, rename), flips ``slots/active``, runs the simulated health gate and
commits. A rollback is the same with the new driver listed as unhealthy: the gate
fails and the applier switches back. Loading a real driver (module unload and
load, ldconfig) is left out: it depends on the driver, not on gpuward; so is the
kernel hold after a commit, which finds no package manager on the bare root. The
reference is the floor of any switch: ``rename(2)`` of a prepared symlink over
``active``, timed in the same run (goal: a switch or a rollback under 1 s).

    .venv/bin/python bench/switch.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from applier.state_machine import apply_once
from fleet.manifest import PAYLOAD_DIR, BundleManifest
from node.config import AgentConfig, SimulatedGpus
from node.journal import Journal, save_journal
from node.slots import SlotContent, Slots

OLD, NEW = "580.65.06", "580.82.07"


@dataclass(frozen=True)
class Figures:
    rename_s: float  # median bare rename(2) of a symlink
    switch_s: float  # median switch to the other slot, committed
    rollback_s: float  # median switch that fails the gate and is rolled back


def _manifest(version: str) -> BundleManifest:
    return BundleManifest(
        driver_version=version,
        branch="R580",
        payload_kind="files",
        files=(),
        module_flavour="proprietary",
        architectures=("Hopper",),
        kernels=("6.1.0-99-amd64",),
        dkms=False,
        cuda_version="13.0",
        fabric_manager=None,
    )


def _host(base: Path) -> AgentConfig:
    """A simulated host running ``OLD`` in slot a with ``NEW`` staged in slot b."""
    config = AgentConfig(
        node_id="bench",
        server_url="http://127.0.0.1:1",  # never contacted: the applier has no network
        trusted_root=base / "root.json",
        branch="R580",
        root_dir=base / "host",
        health_backend="simulated",
        simulated=SimulatedGpus(count=8, name="NVIDIA H100 80GB HBM3"),
    )
    slots = Slots(config.slots_dir)
    for slot, version in (("a", OLD), ("b", NEW)):
        (slots.scratch(slot) / PAYLOAD_DIR).mkdir()
        bundle = _manifest(version)
        slots.commit_stage(slot, SlotContent(f"drivers/R580/{version}", "0" * 64, bundle))
    slots.switch("a")
    return config


def _switch(config: AgentConfig, expect: str) -> float:
    """One applier run from ``switching`` to the other slot; its wall time."""
    slots = Slots(config.slots_dir)
    current = slots.active()
    target = slots.inactive()
    journal = Journal().to("switching", slot=target, previous=current, target_path=target)
    save_journal(config.journal_file, journal)
    start = time.perf_counter()
    result = apply_once(config)
    took = time.perf_counter() - start
    settled = target if expect == "committed" else current
    if result.outcome != expect or slots.active() != settled:
        raise RuntimeError(
            f"expected {expect} on slot {settled}; the applier ended with {result} "
            f"and slot {slots.active()} active"
        )
    return took


def _bare_rename(folder: Path) -> float:
    link, tmp = folder / "active", folder / ".active.new"
    tmp.symlink_to("a")
    start = time.perf_counter()
    os.rename(tmp, link)  # noqa: PTH104 - the bare system call, nothing around it
    return time.perf_counter() - start


def measure(rounds: int) -> Figures:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        healthy = _host(base / "healthy")
        failing = _host(base / "failing")
        failing = replace(
            failing, simulated=replace(failing.simulated, unhealthy_drivers=frozenset({NEW}))
        )
        (base / "rename").mkdir()
        renames, switches, rollbacks = [], [], []
        for _ in range(rounds):
            # Interleaved, so that a burst of load elsewhere hits every figure alike.
            renames.append(_bare_rename(base / "rename"))
            switches.append(_switch(healthy, "committed"))
            rollbacks.append(_switch(failing, "rolled-back"))
        median: Callable[[list[float]], float] = statistics.median
        return Figures(median(renames), median(switches), median(rollbacks))


def main(argv: list[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    # The applier logs every step, and the rollback's gate failure as errors; printing
    # them would be timed too.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    figures = measure(args.rounds)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"median of {args.rounds} rounds each; load average {load}")
    print(f"rename(2) of a symlink (reference):   {figures.rename_s * 1e6:10.1f} µs")
    for name, took in (("switch, committed", figures.switch_s), ("rollback", figures.rollback_s)):
        ratio = took / figures.rename_s
        print(f"{name + ':':<38}{took * 1e3:10.2f} ms  ({ratio:,.0f}x rename; goal < 1 s)")
    return figures


if __name__ == "__main__":
    main()
