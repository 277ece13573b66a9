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

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from fleet import merkle
from fleet.errors import GpuwardError
from fleet.tlog import ConsistencyProof, EntryKind, InclusionProof, LogEntry, LogExport, details
from keys.image_repo import ImageRepository
from keys.tlog_key import NoteSigner
from server.store import Store

log = structlog.get_logger(__name__)


class LogRangeError(GpuwardError):
    """An entry or tree size the log does not have (yet)."""


# Checkpoints nodes reported that this log extends, by digest: most reports carry
# one of a few recent checkpoints, checked once per process instead of per report.
KNOWN_CHECKPOINTS = 4096


@dataclass(frozen=True)
class TransparencyLog:
    store: Store
    signer: NoteSigner
    notify: bool = False  # a split view is a webhook event too (webhooks are configured)
    _extended: OrderedDict[bytes, None] = field(
        default_factory=OrderedDict, compare=False, repr=False
    )

    async def append(
        self, entries: Sequence[LogEntry], *, once: bool = False
    ) -> list[tuple[int, LogEntry]]:
        """Append (``once``: what the log lacks of ``entries``, by ``LogEntry.once_key``);
        what was appended, at which index."""
        appended = await self.store.append_log(entries, once=once, notify=self.notify)
        for index, entry in appended:
            log.info(
                "tlog_appended",
                index=index,
                kind=entry.kind.value,
                subject=entry.subject,
                sha256=entry.sha256,
            )
        return appended

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

    async def record_repository(self, image: ImageRepository, now: int) -> None:
        """Log what the image repository serves that the log lacks: each bundle and
        each role's metadata version (after the operator publishes, or the server
        re-signs). The log's trouble is logged, never raised: it must not stop
        the re-signing that calls it."""
        try:
            seen = await asyncio.to_thread(repository_entries, image, now)
            await self.append(seen, once=True)
        except Exception as exc:
            log.error(
                "tlog_repository_not_recorded",
                error=f"{type(exc).__name__}: {exc}",
                action="fix the repository or the store; the next pass records what it missed",
            )

    async def check_node_checkpoint(self, node_id: str, note: str, now: int) -> bool:
        """Whether the checkpoint a node reports is one of this log's trees. One
        signed with the log's key that this log does not extend is proof that
        someone holding the key showed the node another tree: it is flagged (a
        warning, and a split-view entry in the log itself, once per checkpoint)."""
        digest = hashlib.sha256(note.encode()).digest()
        if digest in self._extended:
            self._extended.move_to_end(digest)
            return True
        try:
            checkpoint = self.signer.verifier.verify(note)
        except GpuwardError as exc:
            log.warning("tlog_node_checkpoint_unverified", node=node_id, reason=str(exc))
            return False
        size = await self.store.log_size()
        if checkpoint.size <= size and await self.root(checkpoint.size) == checkpoint.root:
            self._extended[digest] = None
            if len(self._extended) > KNOWN_CHECKPOINTS:
                self._extended.popitem(last=False)
            return True
        log.error(
            "tlog_split_view",
            node=node_id,
            size=checkpoint.size,
            log_size=size,
            action="the node was shown a tree this log does not extend, signed with the "
            "log's key: treat the online keys as compromised, rotate them, and audit the node",
        )
        entry = LogEntry(
            EntryKind.SPLIT_VIEW,
            now,
            node_id,
            digest.hex(),
            details(size=str(checkpoint.size), root=checkpoint.root.hex()),
        )
        await self.append([entry], once=True)
        return False

    async def export(self) -> LogExport:
        size, note = await self.checkpoint()
        return LogExport(note, tuple(await self.store.log_entries(0, size)))


def repository_entries(image: ImageRepository, now: int) -> list[LogEntry]:
    """An entry for each bundle the image repository publishes (its target path
    and SHA-256) and for each role's metadata file as served now (its digest)."""
    entries = [
        LogEntry(
            EntryKind.BUNDLE,
            now,
            bundle.target_path,
            bundle.sha256,
            details(length=str(bundle.length), driver=bundle.manifest.driver_version),
        )
        for bundle in image.published()
    ]
    timestamp = image.timestamp().signed
    snapshot = image.snapshot().signed
    files = {
        "root": f"{image.root_metadata().signed.version}.root.json",
        "timestamp": "timestamp.json",
        "snapshot": f"{timestamp.snapshot_meta.version}.snapshot.json",
    }
    for name, meta in snapshot.meta.items():
        role = name.removesuffix(".json")
        files[role] = f"{meta.version}.{role}.json"
    for role, filename in sorted(files.items()):
        data = (image.metadata_dir / filename).read_bytes()
        version = filename.partition(".")[0] if role != "timestamp" else str(timestamp.version)
        entries.append(
            LogEntry(
                EntryKind.METADATA,
                now,
                f"image/{role}",
                hashlib.sha256(data).hexdigest(),
                details(version=version),
            )
        )
    return entries
