"""Two server replicas on one PostgreSQL database serve one fleet consistently.

Nodes talk to either replica; a request replayed to the other replica is still
refused (the nonce is unique in the shared store); both replicas advance the
same rollout at the same moments, and every transition happens exactly once,
because the rollout row is locked while a replica advances it.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from server.lifecycle import BackgroundServer
from tests.conftest import Site, make_site
from tests.simnode import FakeClock, SimNode, operator_get, operator_post, report_doc


@pytest.fixture
def replicas(
    _template_repo: Path, tmp_path: Path, postgres_url: str
) -> Iterator[tuple[Site, BackgroundServer, FakeClock]]:
    clock = FakeClock()
    for first in make_site(_template_repo, tmp_path, postgres_url, clock):
        with BackgroundServer(replace(first.server.config, port=0), clock=clock) as second:
            yield first, second, clock


def test_two_replicas_serve_one_fleet(replicas: tuple[Site, BackgroundServer, FakeClock]) -> None:
    site, second, clock = replicas
    old, new = site.publish("580.65.06"), site.publish("580.82.07")
    urls = (site.url, second.url)
    nodes = [SimNode(urls[i % 2], f"gpu-{i:02}", "prod", clock) for i in range(12)]
    for i, node in enumerate(nodes):
        assert node.enroll().status == 201
        node.url = urls[(i + 1) % 2]  # report through the other replica
        assert node.report(bundle=old.target_path, driver="580.65.06").status == 202

    token = site.server.issue_token("operator")
    views = [json.loads(operator_get(u, "/v1/fleet", token).data)["nodes"] for u in urls]
    assert views[0] == views[1] and len(views[0]) == 12

    # A report replayed to the other replica is refused by the shared store.
    body = json.dumps(report_doc(nodes[0].node_id, bundle=old.target_path)).encode()
    signed = nodes[0].headers("POST", "/v1/reports", body)
    nodes[0].url = urls[0]
    assert nodes[0].send("POST", "/v1/reports", body, signed).status == 202
    nodes[0].url = urls[1]
    replayed = nodes[0].send("POST", "/v1/reports", body, signed)
    assert replayed.status == 401 and b"replayed" in replayed.data

    started = operator_post(
        site.url,
        "/v1/rollouts",
        token,
        {
            "id": "r-1",
            "pool": "prod",
            "target": new.target_path,
            "policy": {"waves": "1,25%,100%", "max_unavailable": 12},
        },
    )
    assert started.status == 201, started.data
    servers = (site.server, second)
    for _ in range(8):
        clock.advance(60)
        for node in nodes:
            target = json.loads(node.assignment().data)["target"]
            if target == new.target_path:
                node.report(bundle=new.target_path, driver="580.82.07")
        # Both replicas advance at the same instant.
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=_tick, args=(s, barrier)) for s in servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    doc = json.loads(operator_get(second.url, "/v1/rollouts/r-1", token).data)
    assert doc["phase"] == "completed", doc["events"]
    events = Counter(e["event"] for e in doc["events"])
    duplicated = {event: n for event, n in events.items() if n > 1}
    assert not duplicated
    assert events["wave 1 started"] == events["wave 2 started"] == events["completed"] == 1
    assigned = [e for e in events if " assigned " in e]
    assert len(assigned) == 12


def _tick(server: BackgroundServer, barrier: threading.Barrier) -> None:
    barrier.wait()
    server.tick_rollouts()
