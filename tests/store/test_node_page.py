"""The dashboard's node list in the store: search, filters, keyset pages and the
fleet's counts, on SQLite and PostgreSQL, agreeing with ``server.fleetview``."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from fleet.attestation_verdict import AttestationVerdict
from fleet.rollout import Phase, Policy, Progress, Rollout, Transition, new_rollout, parse_waves
from server.config import ServerConfig
from server.fleetview import missing_before, node_state
from server.operator_api import rollout_json
from server.store import FAILING, NO_DRIVER, EnrolledNode, ListedNode, NodeQuery, Store
from tests.store.old_schema import old_database
from tests.store.test_store import report, run

NOW = 100_000
CONFIG = ServerConfig(repo=Path("unused"), db="unused", report_interval_s=300, missing_after=3)
MISSING = missing_before(NOW, CONFIG)
PASSED = AttestationVerdict(True, 1, None, None, ())
FAILED = AttestationVerdict(False, 1, None, None, ("quote does not verify",))


def enrolled(node_id: str, pool: str, tpm: bool, at: int = 1_000) -> EnrolledNode:
    return EnrolledNode(node_id, node_id.encode().ljust(32, b"."), pool, tpm,
                        "tpm2" if tpm else "unattested", at)  # fmt: skip


async def _fleet(store: Store) -> None:
    """30 nodes, gpu-00 .. gpu-29, in every state, both pools, both enrollment kinds,
    two drivers or none, attested reports passing and failing. A rollout assigns
    gpu-03 and gpu-05 drivers/b.bundle, which neither runs yet; gpu-04 runs it
    unassigned."""
    for i in range(30):
        node_id = f"gpu-{i:02}"
        await store.enroll(enrolled(node_id, "prod" if i % 2 else "test", tpm=i % 3 == 0,
                                    at=NOW - 10 if i >= 27 else 1_000))  # fmt: skip
        if i >= 27:
            continue  # never reported: new (enrolled just now) ...
        seen = NOW - 2_000 if i % 5 == 0 else NOW - 100  # ... or missing
        bundle = "drivers/b.bundle" if i == 4 else "drivers/a.bundle"
        sent = report(node_id, bundle=bundle, healthy=i % 4 != 1)
        if i == 7:
            sent = replace(sent, driver_version=None)
        elif i % 2:
            sent = replace(sent, driver_version="580.65.06")
        verdict = None if i % 3 else (FAILED if i in (3, 6) else PASSED)
        assert await store.add_report(sent, seen, "127.0.0.1", f"n-{i}", verdict)
    rollout = new_rollout("r1", "prod", "drivers/b.bundle", None,
                          Policy(parse_waves("100%"), max_unavailable=2), {"gpu-03": None,
                          "gpu-05": None}, NOW)  # fmt: skip
    await store.create_rollout(rollout, "started")

    def assign(r: Rollout, _seen: object) -> Transition:
        nodes = tuple(replace(n, progress=Progress.ASSIGNED) for n in r.nodes)
        return Transition(replace(r, nodes=nodes, phase=Phase.RUNNING))

    await store.change_rollout("r1", assign, NOW, wait=True)


async def _all(store: Store, query: NodeQuery) -> list[ListedNode]:
    return await store.node_page(query, 1_000)


def test_filters_select_what_the_api_shows(db_url: str) -> None:
    async def body(store: Store) -> None:
        await _fleet(store)
        everyone = await _all(store, NodeQuery(MISSING))
        assert [n.node_id for n in everyone] == [f"gpu-{i:02}" for i in range(30)]
        # Each listed as the API shows it (server.fleetview, from the whole report).
        fleet = {s.node.node_id: s for s in await store.fleet()}
        states = {n: node_state(s, NOW, CONFIG) for n, s in fleet.items()}
        assert set(states.values()) == {"healthy", "unhealthy", "missing", "new"}
        for listed in everyone:
            status = fleet[listed.node_id]
            report, verdict = status.report, status.report_attestation
            assert listed == ListedNode(
                listed.node_id, status.node.pool, status.node.attestation,
                states[listed.node_id], status.last_seen,
                None if report is None else report.driver_version,
                None if report is None else report.bundle,
                None if report is None else report.update,
                None if verdict is None else verdict.passed, status.assigned,
            )  # fmt: skip

        async def ids(**conditions: object) -> set[str]:
            query = NodeQuery(MISSING, **conditions)  # type: ignore[arg-type]
            return {n.node_id for n in await _all(store, query)}

        for state in ("healthy", "unhealthy", "missing", "new"):
            assert await ids(state=state) == {n for n, s in states.items() if s == state}
        assert await ids(differs=True) == {n.node_id for n in everyone if n.differs}
        prod = {n.node_id for n in everyone if n.pool == "prod"}
        assert await ids(pool="prod") == prod and len(prod) == 15
        assert await ids(attestation="tpm2") == {f"gpu-{i:02}" for i in range(0, 30, 3)}
        assert await ids(attestation=FAILING) == {"gpu-03", "gpu-06"}
        assert await ids(driver="580.65.06") == {f"gpu-{i:02}" for i in range(1, 27, 2)} - {
            "gpu-07"
        }
        assert await ids(driver=NO_DRIVER) == {"gpu-07", "gpu-27", "gpu-28", "gpu-29"}
        assert await ids(differs=True) == {"gpu-03", "gpu-05"}
        # Every condition at once; a search matches any part of the id, in any case,
        # and its LIKE wildcards are plain characters.
        assert await ids(search="GPU-0", pool="prod", state="healthy") == {"gpu-03", "gpu-07"}
        assert await ids(search="-2") == {f"gpu-2{i}" for i in range(10)}
        assert await ids(search="%") == set() and await ids(search="_") == set()
        assert await ids(search="u-1_") == set()

        counts = await store.fleet_counts(MISSING)
        assert sum(c.nodes for c in counts) == 30
        by_state = {state: sum(getattr(c, state) for c in counts) for state in states.values()}
        assert by_state == Counter(states.values())
        assert sum(c.nodes for c in counts if c.report_attested is False) == 2
        assert sum(c.differs for c in counts) == 2
        assert sum(c.nodes for c in counts if not c.attested) == 20
        assert {c.driver for c in counts} == {"580.95.05", "580.65.06", NO_DRIVER}

    run(db_url, body)


def test_keyset_pages_walk_the_list_both_ways(db_url: str) -> None:
    async def body(store: Store) -> None:
        await _fleet(store)
        query = NodeQuery(MISSING, pool="prod")
        expected = [n.node_id for n in await _all(store, query)]
        pages: list[list[str]] = []
        after = None
        while True:
            page = [n.node_id for n in await store.node_page(query, 4, after=after)]
            if not page:
                break
            pages.append(page)
            after = page[-1]
        assert [n for p in pages for n in p] == expected and len(pages) == 4
        # Pages read what the whole list does, with a bound on every joined row.
        for filtered in (NodeQuery(MISSING, state="healthy"), NodeQuery(MISSING, differs=True)):
            whole = await _all(store, filtered)
            paged = await store.node_page(filtered, 3, after=whole[0].node_id)
            assert paged == whole[1:4]
            assert await store.node_page(filtered, 3, before=whole[-1].node_id) == whole[-4:-1]
        # Back from the last page, each page is the one before it, in order.
        before = pages[-1][0]
        for page in reversed(pages[:-1]):
            back = [n.node_id for n in await store.node_page(query, 4, before=before)]
            assert back == page
            before = back[0]
        assert await store.node_page(query, 4, before=before) == []
        # A page starts after an id even if that node is gone (or never was).
        assert [n.node_id for n in await store.node_page(query, 2, after="gpu-04")] == [
            "gpu-05",
            "gpu-07",
        ]
        with pytest.raises(ValueError, match="not both"):
            await store.node_page(query, 2, after="a", before="b")

    run(db_url, body)


def test_the_migration_keeps_each_nodes_latest_verdict(db_url: str) -> None:
    """Nodes of an older server: the verdict of their latest report (not an older
    one) is read from the reports the migration finds."""
    enroll = (
        "INSERT INTO enrollments (node_id, public_key, pool, attested, attestation, "
        "enrolled_at) VALUES (?, ?, ?, ?, ?, ?)"
    )
    rows = [(n, n.encode().ljust(32, b"."), "p", True, "tpm2", 1_000) for n in ("a", "b", "c")]
    asyncio.run(old_database(db_url, "report_attested", enroll, rows))
    add = (
        "INSERT INTO reports (node_id, received_at, remote, body, nonce, attestation) "
        "VALUES (?, ?, '', ?, ?, ?)"
    )
    body_of = {n: report(n).canonical_json.decode() for n in ("a", "b", "c")}
    reports = [
        ("a", 2_000, body_of["a"], "a1", PASSED.to_json()),
        ("a", 2_001, body_of["a"], "a2", FAILED.to_json()),
        ("b", 2_000, body_of["b"], "b1", FAILED.to_json()),
        ("b", 2_001, body_of["b"], "b2", PASSED.to_json()),
        ("c", 2_000, body_of["c"], "c1", None),
    ]
    asyncio.run(old_database(db_url, "report_attested", add, reports))
    latest = (
        "INSERT INTO nodes (node_id, last_report, last_seen, reports_kept) "
        "SELECT node_id, MAX(id), MAX(received_at), COUNT(*) FROM reports "
        "WHERE node_id = ? GROUP BY node_id"
    )
    asyncio.run(old_database(db_url, "report_attested", latest, [("a",), ("b",), ("c",)]))

    async def body(store: Store) -> None:
        failing = await _all(store, NodeQuery(0, attestation=FAILING))
        assert [n.node_id for n in failing] == ["a"]
        verdicts = Counter(c.report_attested for c in await store.fleet_counts(0))
        assert verdicts == Counter({False: 1, True: 1, None: 1})
        # Then each report keeps it: b's next one fails, a's passes.
        assert await store.add_report(report("b"), 3_000, "", "b3", FAILED)
        assert await store.add_report(report("a"), 3_000, "", "a3", PASSED)
        # A late report (received before the latest) does not replace the verdict.
        assert await store.add_report(report("a"), 2_500, "", "a4", FAILED)
        failing = await _all(store, NodeQuery(0, attestation=FAILING))
        assert [n.node_id for n in failing] == ["b"]

    run(db_url, body)


def test_the_overview_reads_only_the_newest_rollouts(db_url: str) -> None:
    async def body(store: Store) -> None:
        policy = Policy(parse_waves("1,25%,100%"))
        made = []
        for number, pool in enumerate(("a", "b", "c")):
            running = {f"n-{pool}-{i:02}": None for i in range(20)}
            rollout = new_rollout(f"r-{pool}", pool, "t", None, policy, running, number)
            states = tuple(Progress)
            nodes = tuple(replace(n, progress=states[i % 4]) for i, n in enumerate(rollout.nodes))
            made.append(replace(rollout, nodes=nodes))
            await store.create_rollout(made[-1], "started")
        newest = await store.rollout_progress(2)
        assert [r.id for r in newest] == ["r-c", "r-b"]
        # Counted as the API counts them (server.operator_api.rollout_json).
        for progress, stored in zip(newest, made[::-1], strict=False):
            assert (progress.pool, progress.target, progress.phase) == (
                stored.pool, stored.target, stored.phase,
            )  # fmt: skip
            counted = [asdict(w) | {"nodes": w.nodes} for w in progress.waves]
            assert counted == rollout_json(stored)["waves"] and len(counted) == 3

    run(db_url, body)
