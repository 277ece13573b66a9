"""The agent's metrics as a node_exporter textfile (agent.toml ``[metrics] textfile``).

No port opens on the node: after every cycle the agent rewrites one file that
node_exporter's textfile collector serves with the host's other metrics. It says
how the last cycle ended, which bundle runs and which is staged, each GPU's
health and when a report last got through (``time() - ...`` is its age).
Written atomically (``keys.durable_files``), so node_exporter never reads half a
file; the temporary file's name does not end in ``.prom``, so it is never read.

A cycle that cannot report keeps the last success's time: it is carried over
from the file written before, which only this agent writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fleet.errors import GpuwardError
from fleet.gpu_rules import STATUSES
from fleet.report import UPDATE_OUTCOMES, HealthReport
from fleet.version import VERSION
from keys.durable_files import atomic_write, read_bounded
from node.config import AgentConfig
from node.journal import TERMINAL, load_journal
from node.slots import Slots
from node.spool import spooled_target

log = structlog.get_logger(__name__)

# The outcome of a cycle that ended in an error before it could report.
ERROR = "error"
OUTCOMES = (*sorted(UPDATE_OUTCOMES), ERROR)
LAST_SUCCESS = "gpuward_agent_report_last_success_timestamp_seconds"
# A textfile is a few kilobytes; reading back more than this is not ours.
MAX_BYTES = 1024 * 1024


@dataclass(frozen=True)
class CycleEnd:
    """How a cycle ended: its update outcome (or ``ERROR``), and its report if it made
    one."""

    outcome: str
    report: HealthReport | None
    report_sent: bool


def write_textfile(config: AgentConfig, end: CycleEnd, now: float | None = None) -> None:
    """Rewrite the textfile, if the config names one; a failure is logged, never raised:
    metrics must not stop updates."""
    path = config.metrics_textfile
    if path is None:
        return
    try:
        text = render(config, end, time.time() if now is None else now)
        atomic_write(path, text, mode=0o644)  # node_exporter runs as another user
    except (OSError, GpuwardError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        log.warning(
            "metrics_textfile_not_written",
            path=str(path),
            reason=reason,
            action="let the agent's user write the folder (and, packaged, add it to the "
            "unit's ReadWritePaths=), or unset [metrics] textfile",
        )


def render(config: AgentConfig, end: CycleEnd, now: float) -> bytes:
    assert config.metrics_textfile is not None
    registry = CollectorRegistry()

    def gauge(name: str, text: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, text, labels, registry=registry)

    gauge("gpuward_agent_build_info", "The agent's gpuward version.", ("version",)).labels(
        VERSION
    ).set(1)
    gauge("gpuward_agent_cycle_last_timestamp_seconds", "When the last cycle ended.").set(now)
    outcome = gauge(
        "gpuward_agent_cycle_outcome",
        "1 for how the last cycle ended (its update outcome, or error), 0 for the others.",
        ("outcome",),
    )
    for name in OUTCOMES:
        outcome.labels(name).set(float(end.outcome == name))
    gauge("gpuward_agent_report_sent", "1 if the last cycle's report reached the server.").set(
        float(end.report_sent)
    )
    last_success = now if end.report_sent else _last_success(config.metrics_textfile)
    if last_success is not None:
        gauge(
            LAST_SUCCESS, "When a report last reached the server; its age is time() minus this."
        ).set(last_success)
    bundles = gauge(
        "gpuward_agent_bundle_info",
        "The bundle the active slot runs (role active) and the one verified and on its "
        "way in (role staged), by slot and target path.",
        ("role", "slot", "target"),
    )
    for role, slot, target in _bundles(config):
        bundles.labels(role, slot, target).set(1)
    report = end.report
    if report is None:
        return generate_latest(registry)
    if report.driver_version is not None:
        gauge(
            "gpuward_agent_driver_info", "The driver version NVML sees loaded.", ("version",)
        ).labels(report.driver_version).set(1)
    gpus = gauge(
        "gpuward_agent_gpu_healthy",
        "1 if a GPU runs the expected driver with no problem found, 0 if not.",
        ("gpu", "uuid", "name"),
    )
    for gpu in report.gpus:
        gpus.labels(str(gpu.index), gpu.uuid, gpu.name).set(float(gpu.healthy))
    if report.health is not None:  # from NVML: the health rules' verdict on the node
        status = gauge(
            "gpuward_agent_health_status",
            "1 for the node's GPU health status (healthy, degraded, failed), 0 for the others.",
            ("status",),
        )
        for name in STATUSES:
            status.labels(name).set(float(report.health.status == name))
    return generate_latest(registry)


def _bundles(config: AgentConfig) -> list[tuple[str, str, str]]:
    """(role, slot, target) of the active bundle and of one on its way in."""
    found = []
    slots = Slots(config.slots_dir)
    active = slots.active()
    content = slots.content(active)
    if active is not None and content is not None:
        found.append(("active", active, content.target_path))
    journal = load_journal(config.journal_file)
    if journal.state not in TERMINAL and journal.target_path is not None:
        found.append(("staged", journal.slot or "", journal.target_path))
    elif (spooled := spooled_target(config.spool_dir)) is not None:
        found.append(("staged", "", spooled))  # the applier has not taken it yet
    return found


def _last_success(path: Path) -> float | None:
    """The last success the file written before says, if it says one."""
    try:
        text = read_bounded(path, MAX_BYTES, "metrics textfile").decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS:
                    return float(sample.value)
    except (OSError, ValueError, GpuwardError):  # none yet, or not ours: none known
        return None
    return None
