"""The migrations, written once, give each database the schema its releases made.

Databases in the field were made by earlier releases, each migration written out
per database then: ``schema_v14/`` holds the schema those wrote at version 14
(``sqlite_master``; PostgreSQL's catalog), and rendering the one list for either
database must give it again. At the newest version, the two databases must have
the same tables, columns, keys and indexes, types aside.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from server.store import postgres, sqlite
from server.store.migrations import SQLITE

SHIPPED = 14  # the version the last release of twice-written migrations reached
SNAPSHOT = Path(__file__).with_name(f"schema_v{SHIPPED}")


def _sqlite_catalog(path: Path, upto: int) -> list[str]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        sqlite._migrate(conn, upto)
        rows = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    finally:
        conn.close()
    return [f"version {version}", *(" | ".join(map(str, row)) for row in rows)]


async def _postgres_catalog(url: str, upto: int) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await postgres._migrate(conn, upto)
        columns = await conn.fetch(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, "
            "is_identity, identity_generation FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
        )
        indexes = await conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname"
        )
        constraints = await conn.fetch(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
            "FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2"
        )
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    return [
        f"versions {[v for (v,) in versions]}",
        *(" | ".join(map(str, row)) for row in columns),
        *(index for (index,) in indexes),
        *(" | ".join(row) for row in constraints),
    ]


def _lines(catalog: list[str]) -> list[str]:
    """One entry a line (a table's SQL spans several), as the snapshot files hold them."""
    return "\n".join(catalog).splitlines()


def _snapshot(backend: str) -> list[str]:
    return (SNAPSHOT / f"{backend}.txt").read_text().splitlines()


def test_sqlite_gets_the_schema_its_releases_made(tmp_path: Path) -> None:
    assert _lines(_sqlite_catalog(tmp_path / "fleet.db", SHIPPED)) == _snapshot("sqlite")


def test_postgres_gets_the_schema_its_releases_made(postgres_url: str) -> None:
    catalog = asyncio.run(_postgres_catalog(postgres_url, SHIPPED))
    assert _lines(catalog) == _snapshot("postgresql")


# Each table's columns (name, nullable, part of the primary key) and indexes (name,
# unique, columns), in words both databases share.
Shape = dict[str, tuple[list[tuple[str, bool, bool]], list[tuple[str, bool, list[str]]]]]


def _sqlite_shape(path: Path) -> Shape:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        sqlite._migrate(conn)
        tables = [
            name for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
        ]
        shape: Shape = {}
        for table in tables:
            columns = [
                # SQLite lets a key column hold NULL; PostgreSQL's never does.
                (name, not (notnull or pk), bool(pk))
                for _cid, name, _type, notnull, _default, pk in conn.execute(
                    f"PRAGMA table_info({table})"
                )
            ]
            indexes = [
                (
                    name,
                    bool(unique),
                    [c for _seq, _cid, c in conn.execute(f"PRAGMA index_info({name})")],
                )
                for _seq, name, unique, origin, _partial in conn.execute(
                    f"PRAGMA index_list({table})"
                )
                if origin == "c"  # created by CREATE INDEX, not by a key
            ]
            shape[table] = (columns, sorted(indexes))
    finally:
        conn.close()
    return shape


async def _postgres_shape(url: str) -> Shape:
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await postgres._migrate(conn)
        columns = await conn.fetch(
            "SELECT c.table_name, c.column_name, c.is_nullable = 'YES', k.column_name IS NOT NULL "
            "FROM information_schema.columns c LEFT JOIN ("
            "  SELECT u.table_name, u.column_name FROM information_schema.table_constraints t"
            "  JOIN information_schema.key_column_usage u USING (constraint_name, table_name)"
            "  WHERE t.constraint_type = 'PRIMARY KEY'"
            ") k USING (table_name, column_name) "
            "WHERE c.table_schema = 'public' AND c.table_name <> 'schema_migrations' "
            "ORDER BY c.table_name, c.ordinal_position"
        )
        indexes = await conn.fetch(
            "SELECT t.relname, i.relname, x.indisunique, "
            "  array(SELECT a.attname FROM unnest(x.indkey) WITH ORDINALITY k(n, o) "
            "        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.n ORDER BY k.o) "
            "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "JOIN pg_class t ON t.oid = x.indrelid "
            "JOIN pg_namespace s ON s.oid = t.relnamespace AND s.nspname = 'public' "
            "WHERE NOT x.indisprimary"
        )
    finally:
        await conn.close()
    shape: Shape = {}
    for table, column, nullable, key in columns:
        shape.setdefault(table, ([], []))[0].append((column, nullable, key))
    for table, name, unique, names in indexes:
        shape[table][1].append((name, unique, list(names)))
    return {table: (cols, sorted(idx)) for table, (cols, idx) in shape.items()}


def test_both_databases_get_one_schema(tmp_path: Path, postgres_url: str) -> None:
    assert _sqlite_shape(tmp_path / "fleet.db") == asyncio.run(_postgres_shape(postgres_url))


def test_a_placeholder_no_dialect_spells_is_named() -> None:
    with pytest.raises(ValueError, match=r"\{uuid\} is none of"):
        SQLITE.render("ALTER TABLE nodes ADD COLUMN tag {uuid};")
