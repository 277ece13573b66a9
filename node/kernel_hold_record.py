"""The applier's record of the kernel hold, for the agent's report.

Holding the kernel needs root (``applier.kernel_hold``); the unprivileged agent
only reports how the last hold went. The record is world-readable and, like
every file the agent reads from the applier, a bad one is logged and ignored:
it never stops a report.
"""

from __future__ import annotations

import json

import structlog

from fleet.errors import GpuwardError
from fleet.report import KernelHoldReport
from keys.durable_files import atomic_write
from node.config import AgentConfig

HOLD_RECORD = "kernel-hold.json"

log = structlog.get_logger(__name__)


def save_hold_record(config: AgentConfig, report: KernelHoldReport) -> None:
    atomic_write(
        config.applier_dir / HOLD_RECORD,
        json.dumps(report.to_dict(), indent=2).encode() + b"\n",
        mode=0o644,
    )


def load_hold_record(config: AgentConfig) -> KernelHoldReport | None:
    """The hold the applier recorded at its last commit; None before the first."""
    path = config.applier_dir / HOLD_RECORD
    try:
        return KernelHoldReport.from_dict(json.loads(path.read_bytes()), str(path))
    except FileNotFoundError:
        return None
    except (ValueError, GpuwardError) as exc:
        log.warning("kernel_hold_record_unreadable", path=str(path), reason=str(exc))
        return None
