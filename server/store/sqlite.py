"""The SQLite backend: one file, WAL mode, for a single server.

The schema version lives in ``PRAGMA user_version`` and migrations run in
order on open. All calls run on one worker thread (SQLite connections are not
for sharing between threads) so the event loop never blocks on disk; an
asyncio lock keeps one transaction's statements together. ``BEGIN IMMEDIATE``
takes the database's write lock up front, which is also what serialises two
processes sharing the file, so rollouts need no row lock here.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from server.store import EnrolledNode, PoolUse, RemovedNode, Retention
from server.store.migrations import SQLITE
from server.store.sql import Row, SqlStore

T = TypeVar("T")

MIGRATIONS = SQLITE.migrations()


class _SqliteTx:
    """One transaction's statements. ``begin`` runs with the first of them, in the same
    trip to the database thread: each trip costs a thread handoff, and a report's
    transactions are short. Nothing else uses the connection meanwhile (the caller
    holds the database's lock), so the transaction is what it would be had it begun
    on entry."""

    def __init__(self, db: SqliteDatabase, begin: str) -> None:
        self._db = db
        self._begin: str | None = begin

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        begin, self._begin = self._begin, None
        if begin is None:
            return await self._db.call(fn, *args)

        def begun() -> T:
            self._db.conn.execute(begin)
            return fn(*args)

        return await self._db.call(begun)

    async def execute(self, sql: str, *args: object) -> None:
        await self._call(self._db.conn.execute, sql, args)

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        return await self._call(_fetch, self._db.conn, sql, args)

    async def execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        await self._call(self._db.conn.executemany, sql, rows)

    async def fetch_many(self, sql: str, rows: Sequence[Sequence[object]]) -> list[Row]:
        def run() -> list[Row]:
            return [row for args in rows for row in _fetch(self._db.conn, sql, args)]

        return await self._call(run)


def _fetch(conn: sqlite3.Connection, sql: str, args: Sequence[object]) -> list[Row]:
    return conn.execute(sql, args).fetchall()


class SqliteDatabase:
    lock_wait = ""
    lock_skip = ""
    lock_share = ""
    dialect = SQLITE

    def __init__(self, conn: sqlite3.Connection, worker: ThreadPoolExecutor) -> None:
        self.conn = conn
        self._worker = worker
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteDatabase:
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpuward-sqlite")

        def connect() -> sqlite3.Connection:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            _migrate(conn)
            return conn

        try:
            conn = await asyncio.get_running_loop().run_in_executor(worker, connect)
        except BaseException:
            worker.shutdown()
            raise
        return cls(conn, worker)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, partial(fn, *args))

    @asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[_SqliteTx]:
        async with self._lock:
            try:
                yield _SqliteTx(self, "BEGIN IMMEDIATE" if write else "BEGIN")
            except BaseException:
                # Decided on the database thread, after whatever is still running there
                # (a cancelled first statement may yet begin the transaction); not
                # begun when no statement ran, or when BEGIN itself failed.
                await self.call(self._end, "ROLLBACK")
                raise
            await self.call(self._end, "COMMIT")

    def _end(self, how: str) -> None:
        if self.conn.in_transaction:
            self.conn.execute(how)

    async def query(self, sql: str, *args: object) -> list[Row]:
        async with self._lock:  # not inside another coroutine's transaction
            return await self.call(_fetch, self.conn, sql, args)

    def pool_use(self) -> PoolUse:
        """One connection, busy while a transaction or query holds it."""
        return PoolUse(open=1, in_use=int(self._lock.locked()), limit=1)

    async def close(self) -> None:
        await self.call(self.conn.close)
        self._worker.shutdown()


def _migrate(conn: sqlite3.Connection, upto: int = len(MIGRATIONS)) -> None:
    """Apply what is missing, reading the version under the write lock.

    Two processes opening the file at once (a server and ``gpuward server token
    create``) must not both apply a migration. SQLite's DDL is transactional, so
    a migration that fails half-way leaves the previous version intact.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        for number, script in enumerate(MIGRATIONS[version:upto], start=version + 1):
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SqliteStore(SqlStore):
    """What every node request reads, its enrollment and (for a report challenge)
    the digest of its kept event log, is kept in memory once read: the request then
    costs no trip to the database thread. Exact, because a SQLite store serves one
    server process and both change only through ``enroll``, ``remove_node``,
    ``pin_driver_key`` and ``keep_event_log`` here, which drop the node;
    PostgreSQL, shared by replicas, reads every time (batched: ``server.store.sql``).
    (A new write to either must drop the node too.)"""

    def __init__(self, db: SqliteDatabase, retention: Retention | None = None) -> None:
        super().__init__(db, retention)
        self._nodes: dict[str, EnrolledNode] = {}
        self._log_digests: dict[str, str] = {}
        self._changes = 0  # a read that overlapped a change is not kept

    @classmethod
    async def open(cls, path: Path, retention: Retention | None = None) -> SqliteStore:
        return cls(await SqliteDatabase.open(path), retention)

    async def _kept(
        self, cache: dict[str, T], node_id: str, read: Callable[[str], Awaitable[T | None]]
    ) -> T | None:
        found = cache.get(node_id)
        if found is None:
            changes = self._changes
            found = await read(node_id)
            if found is not None and changes == self._changes:
                cache[node_id] = found
        return found

    async def enrolled(self, node_id: str) -> EnrolledNode | None:
        return await self._kept(self._nodes, node_id, super().enrolled)

    async def event_log_sha256(self, node_id: str) -> str | None:
        return await self._kept(self._log_digests, node_id, super().event_log_sha256)

    async def enroll(self, node: EnrolledNode) -> tuple[EnrolledNode, bool]:
        try:
            return await super().enroll(node)
        finally:
            self._forget(node.node_id)

    async def remove_node(self, node_id: str) -> RemovedNode | None:
        try:
            return await super().remove_node(node_id)
        finally:
            self._forget(node_id)

    async def keep_event_log(self, node_id: str, log: bytes) -> None:
        try:
            await super().keep_event_log(node_id, log)
        finally:
            self._forget(node_id)

    async def pin_driver_key(self, node_id: str, public_key: bytes) -> bytes | None:
        try:
            return await super().pin_driver_key(node_id, public_key)
        finally:
            self._forget(node_id)

    def _forget(self, node_id: str) -> None:
        self._changes += 1
        self._nodes.pop(node_id, None)
        self._log_digests.pop(node_id, None)
