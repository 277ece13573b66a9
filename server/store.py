"""The fleet store: every report received, and each node's latest.

SQLite in WAL mode for one server; the schema version lives in
``PRAGMA user_version`` and migrations run in order on open. Calls run in a
worker thread so the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from fleet.report import HealthReport

MIGRATIONS = (
    """
    CREATE TABLE reports (
        id INTEGER PRIMARY KEY,
        node_id TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        remote TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX reports_node ON reports (node_id, id);
    CREATE TABLE nodes (
        node_id TEXT PRIMARY KEY,
        last_report INTEGER NOT NULL REFERENCES reports (id),
        last_seen INTEGER NOT NULL
    );
    """,
)


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    last_seen: int
    report: HealthReport


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._lock:
                self._db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    def close(self) -> None:
        self._db.close()

    async def add_report(self, report: HealthReport, received_at: int, remote: str) -> None:
        await asyncio.to_thread(self._add_report, report, received_at, remote)

    def _add_report(self, report: HealthReport, received_at: int, remote: str) -> None:
        body = json.dumps(report.to_dict())
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(
                    "INSERT INTO reports (node_id, received_at, remote, body) VALUES (?, ?, ?, ?)",
                    (report.node_id, received_at, remote, body),
                )
                self._db.execute(
                    "INSERT INTO nodes (node_id, last_report, last_seen) VALUES (?, ?, ?) "
                    "ON CONFLICT (node_id) DO UPDATE SET last_report = excluded.last_report, "
                    "last_seen = excluded.last_seen",
                    (report.node_id, cursor.lastrowid, received_at),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    async def fleet(self) -> list[NodeStatus]:
        return await asyncio.to_thread(self._fleet)

    def _fleet(self) -> list[NodeStatus]:
        with self._lock:
            rows = self._db.execute(
                "SELECT n.node_id, n.last_seen, r.body FROM nodes n "
                "JOIN reports r ON r.id = n.last_report ORDER BY n.node_id"
            ).fetchall()
        return [
            NodeStatus(node_id, last_seen, HealthReport.from_dict(json.loads(body)))
            for node_id, last_seen, body in rows
        ]
