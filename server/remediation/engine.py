"""Running the remediation rules every tick, against the store and the scheduler.

Each tick reads every node's latest report once, turns it into an observation
per pool with a policy (``fleet.remediation.symptom_of``), and lets
``fleet.remediation.decide`` change the pool's board under its row lock, the
audit entries in the same transaction. The steps the board then holds (drains,
resumes) run outside the lock, since a scheduler may take seconds, and each
outcome is settled under the lock again. A step decided but not yet settled
when a server dies is carried out by the next tick: every step is idempotent.
Operators approve and release through the same path, so their actions are in
the audit log too.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog

from fleet.errors import GpuwardError
from fleet.remediation import (
    Action,
    Decision,
    NodeObservation,
    NodeRemediation,
    RemediationBoard,
    Stage,
    approve,
    decide,
    release,
    settle,
    symptom_of,
)
from server.config import RemediationConfig
from server.every import every
from server.remediation.scheduler import Executor, NoScheduler, SchedulerError, SlurmScheduler
from server.store import NodeStatus, Store

log = structlog.get_logger(__name__)


class NotUnderRemediation(GpuwardError):
    """No pool's board holds the node (in the stage the command needs)."""


@dataclass(frozen=True)
class OperatorCommand:
    node_id: str
    operator: str


def executor_for(config: RemediationConfig) -> Executor:
    scheduler = (
        SlurmScheduler(config.scontrol, config.slurm_conf, config.timeout_s)
        if config.scheduler == "slurm"
        else NoScheduler()
    )
    return Executor(scheduler, config.hooks, config.timeout_s)


class RemediationEngine:
    def __init__(
        self,
        store: Store,
        config: RemediationConfig,
        clock: Callable[[], float],
        missing_after_s: int,
        notify: bool = False,
        stragglers: Callable[[], Awaitable[Mapping[str, str]]] | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._missing_after_s = missing_after_s
        self._notify = notify
        self._stragglers = stragglers
        self._executor = executor_for(config)

    @property
    def tick_s(self) -> float:
        return self._config.tick_s

    def _now(self) -> int:
        return int(self._clock())

    def _observe(
        self, statuses: list[NodeStatus], stragglers: Mapping[str, str], now: int
    ) -> dict[str, list[NodeObservation]]:
        missing_before = now - self._missing_after_s
        seen: dict[str, list[NodeObservation]] = {pool: [] for pool in self._config.pools}
        for status in statuses:
            policy = self._config.pools.get(status.node.pool)
            if policy is None:
                continue
            report = status.report
            labels = {} if report is None or report.topology is None else report.topology.labels()
            seen[status.node.pool].append(
                NodeObservation(
                    status.node.node_id,
                    symptom_of(
                        report,
                        status.last_seen,
                        missing_before,
                        stragglers.get(status.node.node_id),
                    ),
                    status.last_seen,
                    None if policy.failure_domain is None else labels.get(policy.failure_domain),
                )
            )
        return seen

    async def tick(self) -> None:
        """Decide for every pool with a policy, then carry out what its board holds."""
        if not self._config.pools:
            return
        now = self._now()
        stragglers: Mapping[str, str] = {}
        wanted = any(p.on_straggler is not Action.NONE for p in self._config.pools.values())
        if wanted and self._stragglers is not None:
            stragglers = await self._stragglers()
        statuses = await self._store.fleet()
        observed = await asyncio.to_thread(self._observe, statuses, stragglers, now)
        for pool, policy in self._config.pools.items():
            rules = functools.partial(decide, policy=policy, nodes=observed[pool], now=now)
            board = await self._store.change_remediation(pool, rules, now, notify=self._notify)
            if await self._carry_out(board):
                # A resume freed a place in the budget or a failure domain: a node
                # held back takes it now, not a tick later.
                board = await self._store.change_remediation(pool, rules, now, notify=self._notify)
                await self._carry_out(board)

    async def _carry_out(self, board: RemediationBoard) -> bool:
        """Carry out the board's pending steps; whether a node was resumed."""
        resumed = False
        for node in board.pending_steps():
            resumed |= await self._step(board.pool, node) and node.stage is Stage.RESUMING
        return resumed

    async def _step(self, pool: str, node: NodeRemediation) -> bool:
        """Carry out one step and settle it; whether it succeeded."""
        try:
            if node.stage is Stage.RESUMING:
                outcome, ok = await self._executor.resume(node), True
            else:
                outcome, ok = await self._executor.act(node), True
        except SchedulerError as exc:
            outcome, ok = str(exc), False
            log.error(
                "remediation_step_failed",
                node=node.node_id,
                action=node.action.value,
                stage=node.stage.value,
                error=outcome,
                action_needed="see the error; the step is retried every tick",
            )
        now = self._now()
        await self._store.change_remediation(
            pool, lambda b: settle(b, node.node_id, outcome, ok, now), now, notify=self._notify
        )
        return ok

    async def boards(self) -> list[RemediationBoard]:
        return await self._store.remediation_boards()

    async def _command(
        self,
        command: OperatorCommand,
        change: Callable[[RemediationBoard, str, str, int], Decision],
    ) -> RemediationBoard:
        boards = await self._store.remediation_boards()
        pool = next((b.pool for b in boards if b.node(command.node_id) is not None), None)
        if pool is None:
            raise NotUnderRemediation(f"{command.node_id} is not under remediation in any pool")
        now = self._now()
        refused: list[LookupError] = []

        def apply(board: RemediationBoard) -> Decision:
            try:
                return change(board, command.node_id, command.operator, now)
            except LookupError as exc:  # its stage moved since it was read
                refused.append(exc)
                return Decision(board, ())

        after = await self._store.change_remediation(pool, apply, now, notify=self._notify)
        if refused:
            raise NotUnderRemediation(str(refused[0]))
        await self._carry_out(after)
        # The board as the step left it (drained, resumed, or its error), not as
        # the command alone did: that is what the operator asked about.
        return next(b for b in await self._store.remediation_boards() if b.pool == pool)

    async def approve(self, command: OperatorCommand) -> RemediationBoard:
        """Approve the action waiting for the node, and carry it out now; the pool's
        board after it."""
        return await self._command(command, approve)

    async def release(self, command: OperatorCommand) -> RemediationBoard:
        """End the node's remediation: drop a waiting action, or resume it now; the
        pool's board after it."""
        return await self._command(command, release)

    async def run(self, stop: asyncio.Event) -> None:
        await every(self._config.tick_s, stop, self.tick, "remediation_tick_failed")
