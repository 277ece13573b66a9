"""Floods: one enrolled node sending as fast as it can, and a stranger trying to keep
a node id from enrolling, cost only their own budget; every other node keeps being
answered."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import urllib3

from server.nodeauth import NodeAuthError, NonceCache
from tests.conftest import Fleet, make_site
from tests.simnode import FakeClock, SimNode

FLOODERS = 4
FLOOD_EACH = 100


@pytest.fixture
def clocked(_template_repo: Path, _template_director: Path, tmp_path: Path) -> Iterator[Fleet]:
    """A site with a director on a clock that stands still: no bucket refills mid-test."""
    clock = FakeClock()
    for site in make_site(
        _template_repo, tmp_path, str(tmp_path / "server.db"), clock, _template_director
    ):
        yield Fleet(site, clock)


def _director(node: SimNode) -> urllib3.BaseHTTPResponse:
    return node.send("GET", f"/v1/director/{node.node_id}/metadata/timestamp.json")


def test_one_nodes_request_flood_leaves_every_other_node_answered(clocked: Fleet) -> None:
    flooder, honest = clocked.node("gpu-flood"), clocked.node("gpu-honest")

    def flood(_: int) -> list[int]:
        # Signed, fresh nonces, reports and director reads alternating, back to back.
        return [
            (flooder.report() if i % 2 else _director(flooder)).status for i in range(FLOOD_EACH)
        ]

    with ThreadPoolExecutor(FLOODERS) as pool:
        flooding = pool.map(flood, range(FLOODERS))
        honest_answers = [
            (
                honest.report().status,
                _director(honest).status,
                honest.assignment().status,
                urllib3.request("GET", clocked.url + "/healthz", retries=False).status,
            )
            for _ in range(3)
        ]
        statuses = [status for answers in flooding for status in answers]

    assert honest_answers == [(202, 200, 200, 200)] * 3
    burst = clocked.site.server.config.node_burst
    # Each kind of request has its own bucket; past them, refused, and never a 503.
    assert statuses.count(202) == burst and statuses.count(200) == burst
    assert statuses.count(429) == FLOODERS * FLOOD_EACH - 2 * burst


def test_a_refused_request_costs_no_nonce(clocked: Fleet) -> None:
    """The rate limit is charged before the nonce is recorded: a refused request takes
    no memory, so resent unchanged once the node may send again, it is accepted."""
    node = clocked.node("gpu-1")
    while node.report().status == 202:
        pass
    headers = node.headers("GET", "/v1/nodes/gpu-1/assignment", b"")
    assert node.send("GET", "/v1/nodes/gpu-1/assignment", headers=headers).status == 429
    clocked.clock.advance(1.0)
    assert node.send("GET", "/v1/nodes/gpu-1/assignment", headers=headers).status == 200
    assert node.send("GET", "/v1/nodes/gpu-1/assignment", headers=headers).status == 401


def test_a_full_nonce_partition_refuses_only_its_own_node() -> None:
    cache = NonceCache(FakeClock(), per_node=3)
    for nonce in ("a", "b", "c"):
        cache.claim("gpu-flood", nonce)
    with pytest.raises(NodeAuthError) as full:
        cache.claim("gpu-flood", "d")
    assert full.value.status == 429 and "gpu-flood" in str(full.value)
    cache.claim("gpu-honest", "a")  # the same nonce, another node: its own partition
    with pytest.raises(NodeAuthError, match="replayed"):
        cache.claim("gpu-honest", "a")


def test_a_stranger_cannot_keep_a_node_id_from_enrolling(clocked: Fleet) -> None:
    """Without the token, attempts for a chosen node id spend the stranger's address's
    budget only; the node then enrolls with the token."""
    stranger = urllib3.PoolManager(source_address=("127.0.0.2", 0), retries=False)
    attempts = clocked.site.server.config.preauth_burst + clocked.site.server.config.node_burst
    answers = []
    for _ in range(attempts):
        impostor = SimNode(clocked.url, "gpu-017", clock=clocked.clock)
        doc = {
            "node_id": "gpu-017",
            "public_key": base64.b64encode(impostor.public_key).decode(),
            "pool": "default",
            "evidence": {"type": "enrollment-token", "token": "x" * 32},
        }
        body = json.dumps(doc).encode()
        headers = impostor.headers("POST", "/v1/enroll", body)
        answers.append(
            stranger.request(
                "POST",
                clocked.url + "/v1/enroll",
                body=body,
                headers={**headers, "Content-Type": "application/json"},
            ).status
        )
    assert set(answers) == {403, 429} and answers[0] == 403
    clocked.node("gpu-017")  # 201, or it raises
