"""The PostgreSQL server the benchmarks make their throw-away databases on.

``bench/load.py`` and ``bench/retention.py`` each create databases for a run
and drop them afterwards; this is where that server is named
(``GPUWARD_BENCH_POSTGRES``) and how they talk to it.
"""

from __future__ import annotations

import os

import asyncpg

POSTGRES_ADMIN = os.environ.get(
    "GPUWARD_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def database_url(name: str) -> str:
    """The URL of database ``name`` on the same server."""
    return POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"


async def admin(sql: str) -> None:
    """One statement (CREATE or DROP DATABASE) on the server's admin database."""
    conn = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
