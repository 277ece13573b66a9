"""Kept compliance reports (``Store.keep_report`` and the rest), on SQLite and
PostgreSQL: files come back byte for byte, piece by piece, whatever their size;
ids are taken once; the newest are listed and kept; and of replicas keeping a
scheduled report for one slot, one keeps it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from dataclasses import replace

import pytest

from server.store import KEPT_CHUNK, Conflict, KeptFile, KeptReport, Store, open_store
from server.store.sql import SqlStore
from tests.store.test_store import run


def _file(fmt: str, body: bytes) -> KeptFile:
    return KeptFile(fmt, f"report.{fmt}", hashlib.sha256(body).hexdigest(), len(body),
                    b"sig:" + fmt.encode())  # fmt: skip


def _kept(
    report_id: str, at: int, bodies: dict[str, bytes], scope: str = "fleet"
) -> tuple[KeptReport, dict[str, bytes]]:
    files = tuple(_file(fmt, body) for fmt, body in bodies.items())
    subject = "fleet" if scope == "fleet" else "gpu-001"
    summary = json.dumps({"nodes": 3, "compliant": 2})
    return KeptReport(report_id, scope, subject, at, "schedule", "key-1", summary, files), bodies


async def _read(store: Store, report_id: str, fmt: str) -> tuple[bytes, int]:
    """A kept file read piece by piece, as a download streams it, and how many pieces."""
    pieces: list[bytes] = []
    while (piece := await store.kept_chunk(report_id, fmt, len(pieces))) is not None:
        pieces.append(piece)
    return b"".join(pieces), len(pieces)


def test_files_come_back_byte_for_byte_in_pieces(db_url: str) -> None:
    # Random bytes do not compress: the stored pieces are as large as the file's.
    pdf = os.urandom(2 * KEPT_CHUNK + 12_345)
    html = b"<html>" + b"compliant " * 100_000 + b"</html>"
    report, bodies = _kept("r1", 100, {"pdf": pdf, "html": html, "csv": b"", "json": b"{}"})

    async def body(store: Store) -> None:
        await store.keep_report(report, bodies)
        assert await store.kept_report("r1") == report  # files in the order given
        for fmt, sent in bodies.items():
            read, pieces = await _read(store, "r1", fmt)
            assert read == sent
            assert pieces == max(1, -(-len(sent) // KEPT_CHUNK))  # an empty file has one
        first = await store.kept_chunk("r1", "pdf", 0)
        assert first is not None and len(first) == KEPT_CHUNK
        assert await store.kept_chunk("r1", "pdf", 3) is None
        assert await store.kept_chunk("r1", "xml", 0) is None
        assert await store.kept_chunk("r2", "pdf", 0) is None
        assert await store.kept_report("r2") is None
        # Stored compressed: the HTML's one piece is a small part of it.
        assert isinstance(store, SqlStore)
        stored = await store.db.query(
            "SELECT data FROM compliance_report_chunks WHERE report_id = ? AND fmt = ?",
            "r1",
            "html",
        )
        assert len(stored) == 1 and len(stored[0][0]) < len(html) // 50

    run(db_url, body)


def test_an_id_is_kept_once_and_files_must_be_their_bodies(db_url: str) -> None:
    report, bodies = _kept("r1", 100, {"json": b'{"a": 1}', "pdf": b"%PDF-1.7"})

    async def body(store: Store) -> None:
        await store.keep_report(report, bodies)
        other, other_bodies = _kept("r1", 200, {"csv": b"node,state\n"}, scope="node")
        with pytest.raises(Conflict, match="r1"):
            await store.keep_report(other, other_bodies)
        assert await store.kept_report("r1") == report  # the first, unchanged
        assert await _read(store, "r1", "csv") == (b"", 0)
        # Bodies that are not one per file, or not the files described, keep nothing.
        refused = [
            {"json": b'{"a": 1}'},  # one missing
            {**bodies, "csv": b""},  # one more
            {"json": b'{"a": 2}', "pdf": b"%PDF-1.7"},  # another digest
            {"json": b'{"a": 1} ', "pdf": b"%PDF-1.7"},  # another size
        ]
        for wrong in refused:
            with pytest.raises(ValueError, match="r2"):
                await store.keep_report(_kept("r2", 300, bodies)[0], wrong)
        again = _kept("r2", 300, bodies)[0]
        twice = replace(again, files=again.files + again.files[:1])
        with pytest.raises(ValueError, match="one body per file"):
            await store.keep_report(twice, bodies)
        assert await store.kept_report("r2") is None
        assert [r.report_id for r in await store.kept_reports()] == ["r1"]

    run(db_url, body)


def test_the_newest_are_listed_and_kept_per_scope(db_url: str) -> None:
    async def body(store: Store) -> None:
        # Out of order, two at one time (told apart by id), in two scopes.
        made = [("f3", 300, "fleet"), ("f1", 100, "fleet"), ("n2", 250, "node"),
                ("f2b", 200, "fleet"), ("f2a", 200, "fleet"), ("n1", 150, "node")]  # fmt: skip
        for report_id, at, scope in made:
            await store.keep_report(*_kept(report_id, at, {"json": report_id.encode()}, scope))
        ids = [r.report_id for r in await store.kept_reports()]
        assert ids == ["f3", "n2", "f2b", "f2a", "n1", "f1"]
        assert [r.report_id for r in await store.kept_reports("fleet")] == [
            "f3", "f2b", "f2a", "f1",
        ]  # fmt: skip
        assert [r.report_id for r in await store.kept_reports("node", limit=1)] == ["n2"]
        assert [r.report_id for r in await store.kept_reports(limit=2)] == ["f3", "n2"]
        listed = await store.kept_reports("node")
        assert listed == [await store.kept_report("n2"), await store.kept_report("n1")]

        assert await store.forget_reports("fleet", 2) == ["f2a", "f1"]
        assert [r.report_id for r in await store.kept_reports()] == ["f3", "n2", "f2b", "n1"]
        for gone in ("f2a", "f1"):
            assert await store.kept_report(gone) is None
            assert await store.kept_chunk(gone, "json", 0) is None
        assert await store.kept_chunk("f2b", "json", 0) == b"f2b"
        assert await store.forget_reports("fleet", 2) == []
        assert await store.forget_reports("node", 0) == ["n2", "n1"]
        with pytest.raises(ValueError, match="-1"):
            await store.forget_reports("fleet", -1)
        # The files and chunks of forgotten reports are gone, not only their heads.
        assert isinstance(store, SqlStore)
        for table in ("compliance_report_files", "compliance_report_chunks"):
            rows = await store.db.query(f"SELECT DISTINCT report_id FROM {table} ORDER BY 1")
            assert [r for (r,) in rows] == ["f2b", "f3"]

    run(db_url, body)


def test_one_replica_keeps_each_slot_and_a_failed_keep_frees_it(db_url: str) -> None:
    async def main() -> None:
        # Two stores on one database, as two replicas are.
        replicas = [await open_store(db_url), await open_store(db_url)]
        try:
            first, second = replicas
            slot = "daily:2026-12-07"
            assert await first.keep_report(*_kept("a", 100, {"json": b"a"}), slot)
            assert not await first.keep_report(*_kept("b", 101, {"json": b"b"}), slot)
            assert not await second.keep_report(*_kept("c", 102, {"json": b"c"}), slot)
            assert [r.report_id for r in await second.kept_reports()] == ["a"]
            # A keep that fails (the id is taken) leaves its slot to the next try.
            with pytest.raises(Conflict):
                await second.keep_report(*_kept("a", 103, {"json": b"d"}), "daily:2026-12-08")
            assert await second.keep_report(*_kept("d", 104, {"json": b"d"}), "daily:2026-12-08")
            for day in range(9, 19):
                slot = f"daily:2026-12-{day:02}"
                kept = await asyncio.gather(
                    *(
                        r.keep_report(*_kept(f"{day}-{i}-{n}", 200, {"json": b"x"}), slot)
                        for i, r in enumerate(replicas)
                        for n in range(3)
                    )
                )
                assert kept.count(True) == 1, (slot, kept)
            assert len(await first.kept_reports(limit=1000)) == 2 + 10
        finally:
            for replica in replicas:
                await replica.close()

    asyncio.run(main())
