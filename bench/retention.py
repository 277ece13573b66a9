"""Store size under report retention: a fleet reporting every 60 s for 30 days.

Every report goes through the store's own write path (``Store.add_report``:
group commit, the node's GPU samples, the latest-report row, trimming to the
retention policy as it arrives) on simulated time, and the hourly sweep runs
every 60 simulated minutes, as the server's duty worker runs it. The reports
are what an NVML agent on an 8-GPU host sends (each GPU's health sample, from
``bench.fleetsim``) with a passing attestation verdict.

Three measurements, each in its own store, in one run:

* the reference: the fleet's first hour of reports without retention, every
  node once a minute (a store without retention only grows, by the same amount
  each hour);
* the fleet with the policy, up to the plateau every node reaches once it holds
  its count (plus the count/16 it may hold between trims) and an hour past it:
  from there each report stored deletes one;
* a sample of the fleet's nodes for all 30 days, every report stored, trimmed
  and swept: the store at the end of each day, against its size at the plateau,
  shows whether it stays there (SQLite reuses the pages a delete frees;
  PostgreSQL reuses them once VACUUM has run: autovacuum's naptime is in real
  time, which runs slower than this simulation's, so the benchmark runs VACUUM
  itself when autovacuum's default threshold would, once a fifth of the rows
  are dead, i.e. every count/5 rounds at the plateau).

The bound for 1,000 nodes over 30 days is the fleet's plateau times the largest
day-end ratio of the sample. Sizes: SQLite, the database file after a WAL
checkpoint (free pages included); PostgreSQL, the tables with their TOAST and
indexes. Figures are ratios against the reference measured in the same run.

    PYTHONPATH=. .venv/bin/python bench/retention.py                 # SQLite, 1,000 nodes
    PYTHONPATH=. .venv/bin/python bench/retention.py --backend postgresql

Target (issue 17): the store of 1,000 nodes reporting every 60 s for 30 days
stays under a stated size; without retention it held every report (62.6 KB each
as the review stored them, 5.4 GB a day for one node at its allowed 1/s).

Last measured (2026-12-07 02:22-02:37 UTC, the 2-core dev VM shared with other
work; defaults: 1,000 nodes x 8 GPUs, a 6.4 KiB report every 60 s, 500 reports
and 30 days a node, a 10-node sample for 30 days; 306 s and 297 s):

                  reference hour   fleet at plateau          30 days, at most
    SQLite        508.6 MiB        4,231 MiB = 8.32x         4,232 MiB = 8.32x
    PostgreSQL    140.9 MiB          965 MiB = 6.85x         1,048 MiB = 7.44x

So the store of 1,000 nodes stays under 4.2 GiB on SQLite and 1.05 GiB on
PostgreSQL (TOAST compresses the reports: 2.4 KiB a report stored against 8.7),
0.35 and 0.31 of one day's reports without retention, against 358 GiB and 99 GiB
for 30 days without it. The sample stayed at its plateau every day on SQLite
(1.000x) and within 1.086x of it on PostgreSQL (dead rows between VACUUMs).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bench.fleetsim import FleetSim
from bench.postgres_admin import admin, database_url
from fleet.attestation_verdict import AttestationVerdict
from fleet.report import GpuHealth, GpuReport, HealthReport, NodeHealth
from server.config import DAY_S, ServerConfig
from server.store import EnrolledNode, Retention, Store, open_store
from server.store.sql import SqlStore, _slack

INTERVAL_S = 60
HOUR_ROUNDS = 3600 // INTERVAL_S
DAY_ROUNDS = DAY_S // INTERVAL_S
START = 1_800_000_000
KEY = bytes(32)
VERDICT = AttestationVerdict(True, 7, "ab" * 32, "default", (), secure_boot=True)
MIB = 1024 * 1024


def fleet_reports(nodes: int, gpus: int) -> list[HealthReport]:
    """One report per node, as its agent sends it (each node's own GPUs' samples)."""
    sim = FleetSim(nodes, gpus, interval_s=INTERVAL_S)
    reports = []
    for name, _at, samples in sim.step():
        driver = "580.95.05"
        health = NodeHealth("healthy", (), tuple(GpuReport(s, ()) for s in samples), ())
        cards = tuple(
            GpuHealth(s.index, "NVIDIA H100 80GB HBM3", s.uuid or "", driver, True, ())
            for s in samples
        )
        bundle = "drivers/R580/nvidia-580.95.05.bundle"
        reports.append(
            HealthReport(
                name,
                START,
                "a",
                driver,
                bundle,
                "up-to-date",
                "nothing newer",
                cards,
                health=health,
            )
        )
    return reports


@dataclass
class Backend:
    """Fresh stores of one kind, and how big one is."""

    name: str
    work: Path
    databases: list[str]

    async def open(self, retention: Retention | None) -> Store:
        if self.name == "sqlite":
            url = f"sqlite://{self.work / f'store-{secrets.token_hex(4)}.db'}"
        else:
            database = f"gpuward_bench_{secrets.token_hex(4)}"
            await admin(f"CREATE DATABASE {database}")
            self.databases.append(database)
            url = database_url(database)
        return await open_store(url, retention)

    async def vacuum(self, store: Store) -> None:
        """What autovacuum does for PostgreSQL; SQLite reuses free pages by itself."""
        assert isinstance(store, SqlStore)
        if self.name == "postgresql":
            await store.db.query("VACUUM")

    async def size(self, store: Store) -> int:
        assert isinstance(store, SqlStore)
        if self.name == "sqlite":
            await store.db.query("PRAGMA wal_checkpoint(TRUNCATE)")
            (pages,) = (await store.db.query("PRAGMA page_count"))[0]
            (page,) = (await store.db.query("PRAGMA page_size"))[0]
            return int(pages) * int(page)
        rows = await store.db.query(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r'"
        )
        return int(rows[0][0])

    def drop(self) -> None:
        for database in self.databases:
            asyncio.run(admin(f"DROP DATABASE {database} WITH (FORCE)"))


async def _enroll(store: Store, reports: list[HealthReport]) -> None:
    for r in reports:
        await store.enroll(EnrolledNode(r.node_id, KEY, "bench", True, "tpm2", START))


async def _rounds(
    backend: Backend,
    store: Store,
    reports: list[HealthReport],
    rounds: range,
    vacuum_every: int,
    at_round_end: Callable[[int], Awaitable[None]] | None = None,
) -> None:
    """Each node reports once a round (a minute), together, as a fleet does; the
    sweep runs every simulated hour."""
    for n in rounds:
        now = START + n * INTERVAL_S
        answers = await asyncio.gather(
            *(store.add_report(r, now, "10.0.0.1", f"{n:08x}{i:06x}", VERDICT, KEY)
              for i, r in enumerate(reports))
        )  # fmt: skip
        assert all(answers), "a report was not stored"
        if (n + 1) % HOUR_ROUNDS == 0:
            await store.enforce_retention(now)
        if (n + 1) % vacuum_every == 0:
            await backend.vacuum(store)
        if at_round_end is not None:
            await at_round_end(n)


def _vacuum_every(policy: Retention) -> int:
    """Rounds until a fifth of the reports are dead at the plateau (one per node a round)."""
    return max(1, policy.count // 5)


async def reference(backend: Backend, reports: list[HealthReport]) -> int:
    store = await backend.open(None)
    try:
        await _enroll(store, reports)
        await _rounds(backend, store, reports, range(HOUR_ROUNDS), HOUR_ROUNDS)
        return await backend.size(store)
    finally:
        await store.close()


async def plateau(backend: Backend, reports: list[HealthReport], policy: Retention) -> int:
    store = await backend.open(policy)
    try:
        await _enroll(store, reports)
        rounds = range(policy.count + _slack(policy.count) + HOUR_ROUNDS)
        await _rounds(backend, store, reports, rounds, _vacuum_every(policy))
        return await backend.size(store)
    finally:
        await store.close()


async def days(
    backend: Backend, reports: list[HealthReport], policy: Retention, count: int
) -> tuple[int, list[int]]:
    """The sample's store at the plateau, and at the end of each day."""
    store = await backend.open(policy)
    at_plateau = policy.count + _slack(policy.count) + HOUR_ROUNDS
    sizes: list[int] = []
    plateau_size = 0

    async def measure(n: int) -> None:
        nonlocal plateau_size
        if n + 1 == at_plateau:
            plateau_size = await backend.size(store)
        if (n + 1) % DAY_ROUNDS == 0:
            sizes.append(await backend.size(store))

    try:
        await _enroll(store, reports)
        rounds = range(count * DAY_ROUNDS)
        await _rounds(backend, store, reports, rounds, _vacuum_every(policy), measure)
        for r in reports:  # what the sizes stand for: no node over its count
            kept = len(await store.history(r.node_id, 10 * at_plateau))
            assert kept <= policy.count + _slack(policy.count), (r.node_id, kept)
        return plateau_size, sizes
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--sample", type=int, default=10, help="nodes run for all the days")
    parser.add_argument("--days", type=int, default=30)
    defaults = ServerConfig(repo=Path(), db="")
    parser.add_argument("--count", type=int, default=defaults.report_retention_count)
    parser.add_argument("--max-days", type=int, default=defaults.report_retention_days)
    args = parser.parse_args()
    policy = Retention(args.count, args.max_days * DAY_S)
    fleet = fleet_reports(args.nodes, args.gpus)
    sample = fleet[: args.sample]

    with tempfile.TemporaryDirectory(prefix="gpuward-retention-") as work:
        backend = Backend(args.backend, Path(work), [])
        try:
            started = time.monotonic()
            ref = asyncio.run(reference(backend, fleet))
            held = asyncio.run(plateau(backend, fleet, policy))
            sample_plateau, day_ends = asyncio.run(days(backend, sample, policy, args.days))
            elapsed = time.monotonic() - started
        finally:
            backend.drop()

    body = len(fleet[0].canonical_json)
    per_report = ref / (args.nodes * HOUR_ROUNDS)
    trimmed_at = policy.count + _slack(policy.count)
    print(
        f"{args.backend}: {args.nodes} nodes x {args.gpus} GPUs, a report every {INTERVAL_S} s "
        f"({body / 1024:.1f} KiB, with health samples and a {len(VERDICT.to_json())} B verdict); "
        f"policy: {policy.count} reports per node, {args.max_days} days ({elapsed:.0f} s)"
    )
    print(
        f"reference: the fleet's first hour without retention, {args.nodes * HOUR_ROUNDS:,} "
        f"reports: {ref / MIB:,.1f} MiB ({per_report / 1024:.1f} KiB a report stored); a day "
        f"grows the store 24x that, 30 days 720x"
    )
    print(
        f"the fleet with retention, at its plateau ({trimmed_at} reports a node at most) and "
        f"an hour on: {held / MIB:,.1f} MiB = {held / ref:.2f}x the reference "
        f"({held / ref / 24:.3f} of a day without retention)"
    )
    print(
        f"{args.sample} of its nodes for {args.days} days, every report stored, trimmed and "
        f"swept: at the plateau {sample_plateau / MIB:.1f} MiB; at the end of each day:"
    )
    ratios = [size / sample_plateau for size in day_ends]
    for day, (size, ratio) in enumerate(zip(day_ends, ratios, strict=True), start=1):
        if day in (1, 2, 3) or day % 5 == 0 or day == len(day_ends):
            print(f"  day {day:>2}: {size / MIB:8.1f} MiB = {ratio:.3f}x the plateau")
    bound = held * max(ratios)
    print(
        f"so the store of {args.nodes} nodes after {args.days} days: at most "
        f"{bound / MIB:,.0f} MiB = {bound / ref:.2f}x the reference hour, against "
        f"{720 * ref / MIB / 1024:,.1f} GiB (720x) without retention"
    )


if __name__ == "__main__":
    main()
