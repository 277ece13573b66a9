"""Carrying out remediation where the operator's credentials live: the scheduler.

The agent gains no privilege from remediation: the server drains and resumes
nodes through the scheduler's own command (Slurm's ``scontrol``, run as the
server's user, which the operator allows to drain nodes) and runs the operator's
own programs for a GPU reset or a reboot. Every call is idempotent (draining a
drained node, resuming one already resumed), so a step retried after a crash or
by a second replica does no harm. Arguments never pass through a shell, and the
reason a node's report shaped is made one safe line first
(``fleet.remediation.scheduler_reason``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import structlog

from fleet.errors import GpuwardError
from fleet.remediation import Action, NodeRemediation, scheduler_reason

log = structlog.get_logger(__name__)

MAX_ERROR = 500  # of a command's output, in an error


class SchedulerError(GpuwardError):
    """The scheduler or a hook could not carry out a step; it is tried again."""


class Scheduler(Protocol):
    """Drains and resumes nodes; each returns what it did, in words, for the audit log."""

    async def drain(self, node_id: str, reason: str) -> str: ...

    async def resume(self, node_id: str) -> str: ...


async def run_command(argv: Sequence[str], env: Mapping[str, str], timeout_s: float) -> str:
    """Run ``argv`` (no shell) and return its output; ``SchedulerError`` with its
    output if it fails or outlives ``timeout_s``."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **env},
        )
    except OSError as exc:
        raise SchedulerError(f"cannot run {argv[0]}: {exc.strerror}") from None
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise SchedulerError(f"{argv[0]} did not finish within {timeout_s:g} s") from None
    text = " ".join(output.decode(errors="replace").split())[-MAX_ERROR:]
    if process.returncode != 0:
        raise SchedulerError(f"{Path(argv[0]).name} exited {process.returncode}: {text}")
    return text


class SlurmScheduler:
    """Slurm through scontrol: a drained node takes no new jobs, its running job
    finishes, and its reason shows in sinfo for every Slurm user."""

    def __init__(self, scontrol: Sequence[str], slurm_conf: Path | None, timeout_s: float) -> None:
        self._scontrol = tuple(scontrol)
        self._env = {} if slurm_conf is None else {"SLURM_CONF": str(slurm_conf)}
        self._timeout_s = timeout_s

    async def _scontrol_run(self, *args: str) -> str:
        return await run_command((*self._scontrol, *args), self._env, self._timeout_s)

    async def drain(self, node_id: str, reason: str) -> str:
        try:
            await self._scontrol_run(
                "update", f"NodeName={node_id}", "State=DRAIN", f"Reason={reason}"
            )
        except SchedulerError as exc:
            raise SchedulerError(
                f"{exc} (the server's user must be allowed to drain Slurm nodes: run it as "
                "SlurmUser, or set [remediation] scontrol to a sudo rule for scontrol; and the "
                f"node must be named {node_id} in slurm.conf)"
            ) from None
        return f"drained in Slurm: {reason}"

    async def resume(self, node_id: str) -> str:
        try:
            await self._scontrol_run("update", f"NodeName={node_id}", "State=RESUME")
        except SchedulerError:
            # Slurm refuses to resume a node that is not drained or down: one an
            # operator resumed by hand is resumed, which is all this step asks.
            state = await self.state(node_id)
            if "DRAIN" in state or "DOWN" in state:
                raise
            return "already resumed in Slurm"
        return "resumed in Slurm"

    async def state(self, node_id: str) -> str:
        """The node's state as Slurm shows it (e.g. IDLE+DRAIN)."""
        shown = await self._scontrol_run("show", "node", "--oneliner", node_id)
        for word in shown.split():
            if word.startswith("State="):
                return word.removeprefix("State=")
        raise SchedulerError(f"scontrol show node {node_id} gave no State")


class NoScheduler:
    """Scheduler "none": decisions are audited and notified, nothing is drained."""

    async def drain(self, node_id: str, reason: str) -> str:
        return f"no scheduler configured: not drained ({reason})"

    async def resume(self, node_id: str) -> str:
        return "no scheduler configured: nothing to resume"


class Executor:
    """A remediation step: drain (then the operator's hook for reset or reboot),
    or resume."""

    def __init__(
        self, scheduler: Scheduler, hooks: Mapping[str, Sequence[str]], timeout_s: float
    ) -> None:
        self._scheduler = scheduler
        self._hooks = hooks
        self._timeout_s = timeout_s

    async def act(self, node: NodeRemediation) -> str:
        reason = scheduler_reason(node.action, node.symptom)
        done = await self._scheduler.drain(node.node_id, reason)
        hook = self._hooks.get(node.action.value)
        if node.action in (Action.RESET, Action.REBOOT):
            if hook is None:  # the settings refuse such a policy; a board may outlive it
                raise SchedulerError(f"no [remediation.hooks] {node.action.value} program")
            argv = (*hook, node.node_id, node.action.value, reason)
            output = await run_command(argv, {}, self._timeout_s)
            done += f"; {Path(hook[0]).name} ran" + (f": {output}" if output else "")
        log.warning("remediation_acted", node=node.node_id, action=node.action.value, done=done)
        return done

    async def resume(self, node: NodeRemediation) -> str:
        done = await self._scheduler.resume(node.node_id)
        log.info("remediation_resumed", node=node.node_id, done=done)
        return done
