"""``gpuward fleet attribution`` against a real server: nodes with topology labels
report, one rack of them overheating and one card failing, and the command prints
what ``GET /v1/fleet/attribution`` says, as a table or as the same JSON."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.conftest import Site
from tests.simnode import SimNode, operator_get, report_doc

RACKS, PER_RACK = 4, 10
HOT_RACK = "rack-1"
BAD_CARD = "gpu-20"


def _report(node: SimNode, rack: str) -> None:
    doc = report_doc(node.node_id, healthy=node.node_id != BAD_CARD)  # GPU 0: XID 79
    doc["topology"] = {"rack": rack, "row": "row-a"}
    if rack == HOT_RACK:
        doc["health"] = {
            "status": "degraded",
            "reasons": ["thermal slowdown on every GPU"],
            "gpus": [],
            "xids": [],
        }
    response = node.send("POST", "/v1/reports", json.dumps(doc).encode())
    assert response.status == 202, response.data


def _attribution(site: Site, token_file: Path, *args: str) -> str:
    done = gpuward(
        "fleet", "attribution", *args, "--server", site.url, "--token-file", str(token_file)
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_attribution_prints_the_clusters_and_cards_the_server_finds(
    site: Site, tmp_path: Path
) -> None:
    token = site.server.issue_token("viewer")
    token_file = tmp_path / "viewer.token"
    token_file.write_text(token)
    quiet = "0 of 0 node(s) heard from recently are degraded: 0 cluster(s), 0 suspect card(s), "
    assert _attribution(site, token_file) == quiet + "0 unexplained\n"

    for r in range(RACKS):
        for i in range(PER_RACK):
            node = SimNode(site.url, f"gpu-{r}{i}")
            assert node.enroll().status == 201
            _report(node, f"rack-{r}")

    found = json.loads(_attribution(site, token_file, "--json"))
    served = operator_get(site.url, "/v1/fleet/attribution", token)
    assert found == json.loads(served.data)
    [cluster] = found["clusters"]
    lines = _attribution(site, token_file).splitlines()
    assert lines[0] == (
        "11 of 40 node(s) heard from recently are degraded: 1 cluster(s), 1 suspect card(s), "
        "0 unexplained"
    )
    assert lines[2].split() == [
        "CAUSE", "LABEL", "NODES", "DEGRADED", "SHARE", "P-VALUE", "LIKELY", "CAUSE",
    ]  # fmt: skip
    assert lines[3].split() == [
        "rack", HOT_RACK, "10", "10", "100%", f"{cluster['p_value']:.1e}",
        *["the", "rack's", "cooling", "or", "power"],
    ]  # fmt: skip
    assert [line.split() for line in lines[5:]] == [
        ["NODE", "GPU", "REASONS"],
        [BAD_CARD, "0", "XID", "79"],
    ]


def test_attribution_needs_a_token_the_server_knows(site: Site, tmp_path: Path) -> None:
    token_file = tmp_path / "stranger.token"
    token_file.write_text("not-a-token-the-server-issued")
    done = gpuward(
        "fleet", "attribution", "--server", site.url, "--token-file", str(token_file)
    )  # fmt: skip
    assert_one_line_error(done, "GET /v1/fleet/attribution")
