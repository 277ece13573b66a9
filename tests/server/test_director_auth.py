"""A node's director metadata (which bundle it is to run) is served to that node
only: unsigned, cross-node, forged and replayed reads are refused, and the agent
reads its own with signed requests."""

from __future__ import annotations

import json

import urllib3

from agent.identity import load_key
from gpuward.node import run_once
from tests.conftest import Site
from tests.simnode import SimNode

PATH = "/v1/director/node-1/metadata/timestamp.json"


def _error(response: urllib3.BaseHTTPResponse) -> str:
    return str(json.loads(response.data)["error"])


def test_director_metadata_is_served_to_its_own_node_only(site: Site) -> None:
    owner = SimNode(site.url, "node-1", key=load_key(site.agent("node-1", directed=True)))
    other_key = load_key(site.agent("node-2", directed=True))
    intruder = SimNode(site.url, "node-2", key=other_key)

    mine = owner.send("GET", PATH)
    assert mine.status == 200 and json.loads(mine.data)["signed"]["_type"] == "timestamp"

    unsigned = urllib3.request("GET", site.url + PATH, retries=False)
    assert unsigned.status == 401 and "unsigned request" in _error(unsigned)
    crossed = intruder.send("GET", PATH)
    assert crossed.status == 403 and "its own director metadata" in _error(crossed)
    # node-2's key claiming to be node-1.
    forged = SimNode(site.url, "node-1", key=other_key).send("GET", PATH)
    assert forged.status == 401 and "bad request signature" in _error(forged)
    # node-1's signed read, captured and sent again, or re-aimed at node-2's metadata.
    headers = owner.headers("GET", PATH, b"")
    assert owner.send("GET", PATH, headers=headers).status == 200
    assert owner.send("GET", PATH, headers=headers).status == 401
    moved = owner.headers("GET", PATH, b"")
    assert owner.send("GET", PATH.replace("node-1", "node-2"), headers=moved).status == 401
    # Not even whether another node has director metadata is told.
    absent = intruder.send("GET", "/v1/director/node-9/metadata/timestamp.json")
    assert absent.status == 403


def test_the_agent_reads_its_director_metadata_signed(site: Site) -> None:
    config = site.agent("node-1", directed=True)
    site.assign("node-1", site.publish("580.65.06"), counter=1)
    assert run_once(config).outcome.update == "committed"
