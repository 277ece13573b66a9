"""The node's two processes joined in one, for ``[applier] mode = "inline"``.

The agent and the applier never import each other (the import contract says
so): a packaged node runs them as two units, the agent unprivileged and the
applier as root with no network. A host without the separate root unit, and
the demo, run the agent with the applier's own state machine handed to it, so
there is still exactly one way an update is installed. This module is that
hand-over and nothing more; everything it calls is the packaged code.
"""

from __future__ import annotations

import threading

import structlog

from agent.cycle import CycleResult, InlineApplier
from agent.daemon import run_forever as run_agent_forever
from agent.daemon import run_once as run_agent_once
from applier.state_machine import ApplyResult, apply_once
from node.config import AgentConfig

log = structlog.get_logger(__name__)


def inline_applier(config: AgentConfig) -> InlineApplier | None:
    """The applier for an inline agent; None where the applier is its own unit."""
    if config.applier.mode != "inline":
        return None

    def apply() -> ApplyResult:
        result = apply_once(config)
        log.info("inline_applier_done", state=result.state, outcome=result.outcome)
        return result

    return apply


def run_once(config: AgentConfig) -> CycleResult:
    """One agent cycle, with the applier in-process where the config says inline."""
    return run_agent_once(config, inline_applier(config))


def run_forever(config: AgentConfig, stop: threading.Event | None = None) -> None:
    run_agent_forever(config, stop, inline_applier(config))
