"""The fleet's transparency log: every decision in an append-only Merkle tree.

The server appends (``TransparencyLog.append``, or ``Store.append_log`` inside
the transaction of the change itself) a ``fleet.tlog.LogEntry`` for each
bundle and metadata version it publishes, assignment, rollout step, remediation
action and compliance report. The tree's hashes live in the fleet store
(``fleet.merkle`` says which); checkpoints are signed as they are served, with
the online checkpoint key (``keys.tlog_key``), so any replica serves the same
signed tree head for the same size (Ed25519 is deterministic).

``server.tlog_api`` serves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from fleet import merkle
from fleet.errors import GpuwardError
from fleet.tlog import ConsistencyProof, InclusionProof, LogEntry, LogExport
from keys.tlog_key import NoteSigner
from server.store import Store

log = structlog.get_logger(__name__)


class LogRangeError(GpuwardError):
    """An entry or tree size the log does not have (yet)."""


@dataclass(frozen=True)
class TransparencyLog:
    store: Store
    signer: NoteSigner

    async def append(self, entries: Sequence[LogEntry]) -> int:
        first = await self.store.append_log(entries)
        for offset, entry in enumerate(entries):
            log.info(
                "tlog_appended",
                index=first + offset,
                kind=entry.kind.value,
                subject=entry.subject,
                sha256=entry.sha256,
            )
        return first

    async def _hashes(self, ranges: Sequence[merkle.Range]) -> list[bytes]:
        return merkle.proof(ranges, await self.store.log_subtrees(merkle.proof_subtrees(ranges)))

    async def root(self, size: int) -> bytes:
        return (await self._hashes([(0, size)]))[0] if size else merkle.fold([])

    async def checkpoint(self, size: int | None = None) -> tuple[int, str]:
        """The tree's size and signed checkpoint (of ``size`` leaves; None: the latest)."""
        latest = await self.store.log_size()
        size = latest if size is None else size
        if not 0 <= size <= latest:
            raise LogRangeError(f"the log has {latest} entries, not {size}")
        return size, self.signer.checkpoint(size, await self.root(size))

    async def inclusion(self, index: int, size: int | None = None) -> InclusionProof:
        size, note = await self.checkpoint(size)
        if not 0 <= index < size:
            raise LogRangeError(f"entry {index} is not in the log of {size} entries")
        ranges = merkle.inclusion_ranges(index, size)
        leaf = await self._hashes([(index, index + 1)])
        return InclusionProof(index, size, leaf[0], tuple(await self._hashes(ranges)), note)

    async def consistency(self, old: int, new: int) -> ConsistencyProof:
        latest = await self.store.log_size()
        if not 0 < old <= new <= latest:
            raise LogRangeError(
                f"no consistency proof from {old} to {new} entries: the log has {latest}"
            )
        return ConsistencyProof(
            old, new, tuple(await self._hashes(merkle.consistency_ranges(old, new)))
        )

    async def export(self) -> LogExport:
        size, note = await self.checkpoint()
        return LogExport(note, tuple(await self.store.log_entries(0, size)))
