"""Databases as an older server left them, for the migrations that change data."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import asyncpg


async def old_database(
    db_url: str, before: str, insert: str, rows: Sequence[tuple[object, ...]]
) -> None:
    """The database at ``db_url`` migrated up to the first migration that mentions
    ``before`` (not applied), then ``rows`` written by ``insert`` (``?`` placeholders)."""
    from server.store import postgres, sqlite

    upto = next(i for i, script in enumerate(sqlite.MIGRATIONS) if before in script)
    if db_url.startswith("sqlite://"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite://"), isolation_level=None)
        try:
            sqlite._migrate(conn, upto)
            conn.executemany(insert, rows)
        finally:
            conn.close()
        return
    pg = await asyncpg.connect(db_url)
    try:
        async with pg.transaction():
            await postgres._migrate(pg, upto)
        await pg.executemany(postgres._numbered(insert), rows)
    finally:
        await pg.close()
