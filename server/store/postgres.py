"""The PostgreSQL backend (asyncpg): one database shared by several replicas.

Migrations are recorded in ``schema_migrations`` and applied under a
transaction-scoped advisory lock, so replicas starting together apply each one
once. A rollout row is locked with ``SELECT ... FOR UPDATE``; the periodic
advance uses ``SKIP LOCKED``, so while one replica advances a rollout the others
pass over it instead of queueing behind it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import cache

import asyncpg

from fleet.errors import GpuwardError
from server.store import PoolUse, Retention
from server.store.migrations import POSTGRES
from server.store.sql import Row, SqlStore

_MIGRATION_LOCK = 0x67707577  # "gpuw": pg_advisory_xact_lock key for migrations

MIGRATIONS = POSTGRES.migrations()


@cache
def _numbered(sql: str) -> str:
    """``?`` placeholders as asyncpg's ``$1``, ``$2``, ... (the SQL has no ``?`` literals)."""
    count = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _m: f"${next(count)}", sql)


class _PostgresTx:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: object) -> None:
        await self._conn.execute(_numbered(sql), *args)

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        return [tuple(r) for r in await self._conn.fetch(_numbered(sql), *args)]

    async def execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        await self._conn.executemany(_numbered(sql), rows)

    async def fetch_many(self, sql: str, rows: Sequence[Sequence[object]]) -> list[Row]:
        return [tuple(r) for r in await self._conn.fetchmany(_numbered(sql), rows)]


class PostgresDatabase:
    lock_wait = " FOR UPDATE"
    lock_skip = " FOR UPDATE SKIP LOCKED"
    lock_share = " FOR KEY SHARE"
    dialect = POSTGRES

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, url: str, max_size: int = 10) -> PostgresDatabase:
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=max_size, reset=_keep_session
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise GpuwardError(f"cannot connect to PostgreSQL: {exc}") from None
        try:
            async with pool.acquire() as conn, conn.transaction():
                await _migrate(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    @asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[_PostgresTx]:
        async with self._pool.acquire() as conn, conn.transaction(readonly=not write):
            yield _PostgresTx(conn)

    async def query(self, sql: str, *args: object) -> list[Row]:
        return [tuple(r) for r in await self._pool.fetch(_numbered(sql), *args)]

    def pool_use(self) -> PoolUse:
        opened = self._pool.get_size()
        return PoolUse(
            open=opened, in_use=opened - self._pool.get_idle_size(), limit=self._pool.get_max_size()
        )

    async def close(self) -> None:
        await self._pool.close()


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """A connection back in the pool needs no ``RESET ALL`` round trip: the store
    sets no session state (no LISTEN, cursors, SET or session-level advisory locks),
    and asyncpg still rolls back a transaction left open."""


async def _migrate(conn: asyncpg.Connection, upto: int = len(MIGRATIONS)) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    version = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
    for number, script in enumerate(MIGRATIONS[version:upto], start=version + 1):
        await conn.execute(script)
        await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", number)


class PostgresStore(SqlStore):
    @classmethod
    async def connect(cls, url: str, retention: Retention | None = None) -> PostgresStore:
        return cls(await PostgresDatabase.connect(url), retention)
