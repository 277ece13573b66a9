"""Straggler detection on the server: reports carry GPU samples, the store keeps a
window of them per node, and operators read the ranked list (API, CLI, dashboard),
on each store backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import urllib3
from structlog.testing import capture_logs

from fleet.gpu import ClockEvents, GpuSample
from fleet.report import GpuReport, NodeHealth
from fleet.stragglers import WINDOW
from server.config import ServerConfig
from tests.conftest import Fleet
from tests.simnode import SimNode, dashboard_sign_in, operator_get, report_doc

H100 = "NVIDIA H100 80GB HBM3"
REPORT_INTERVAL_S = ServerConfig.report_interval_s  # the fleet fixture's


def health(node: int, gpus: int, slow: dict[int, int]) -> dict[str, Any]:
    """Busy H100s at slightly different clocks; ``slow`` maps a GPU to its SM clock."""
    samples = tuple(
        GpuSample(
            index=g,
            uuid=f"GPU-{node:04d}-{g}",
            name=H100,
            sm_clock_mhz=slow.get(g, 1820 + (node * 7 + g * 3) % 25),
            sm_clock_max_mhz=1980,
            clock_events=ClockEvents(0x4),
            pcie_gen=5,
            pcie_gen_max=5,
            pcie_width=16,
            pcie_width_max=16,
        )
        for g in range(gpus)
    )
    return NodeHealth("healthy", (), tuple(GpuReport(s, ()) for s in samples), ()).to_dict()


def report_all(fleet: Fleet, nodes: list[SimNode], slow: dict[str, dict[int, int]]) -> None:
    for i, node in enumerate(nodes):
        doc = {**report_doc(node.node_id), "health": health(i, 2, slow.get(node.node_id, {}))}
        response = node.send("POST", "/v1/reports", json.dumps(doc).encode())
        assert response.status == 202, response.data
    fleet.clock.advance(REPORT_INTERVAL_S)


def stragglers(fleet: Fleet, token: str | None) -> tuple[int, dict[str, Any]]:
    response = operator_get(fleet.url, "/v1/fleet/stragglers", token)
    return response.status, json.loads(response.data)


def test_a_slow_gpu_is_ranked_while_it_stays_slow(fleet: Fleet) -> None:
    nodes = [fleet.node(f"gpu-{i}", pool="prod") for i in range(8)]
    viewer = fleet.token("viewer")
    for _ in range(WINDOW):
        report_all(fleet, nodes, {"gpu-3": {1: 1250}, "gpu-5": {0: 1600}})

    status, doc = stragglers(fleet, viewer)
    assert status == 200
    assert (doc["nodes_compared"], doc["window_reports"]) == (8, WINDOW)
    assert [(n["rank"], n["node_id"]) for n in doc["nodes"]] == [(1, "gpu-3"), (2, "gpu-5")]
    worst = doc["nodes"][0]["stragglers"][0]
    assert (worst["gpu"], worst["model"], worst["metric"]) == (1, H100, "sm_clock_ratio")
    assert worst["value"] == 1250 / 1980
    assert worst["message"].startswith("gpu-3 GPU 1: sm_clock_ratio 0.6313 against")
    assert doc["nodes"][0]["score"] > doc["nodes"][1]["score"]

    # One healthy report is not enough to clear it; a window of them is.
    report_all(fleet, nodes, {"gpu-5": {0: 1600}})
    assert [n["node_id"] for n in stragglers(fleet, viewer)[1]["nodes"]] == ["gpu-3", "gpu-5"]
    for _ in range(WINDOW - 1):
        report_all(fleet, nodes, {"gpu-5": {0: 1600}})
    assert [n["node_id"] for n in stragglers(fleet, viewer)[1]["nodes"]] == ["gpu-5"]

    # Nodes gone silent (missing) are not compared.
    fleet.clock.advance(3 * REPORT_INTERVAL_S + 1)
    assert stragglers(fleet, viewer)[1] == {
        "window_reports": WINDOW,
        "nodes_compared": 0,
        "nodes": [],
        "computed_at": fleet.clock(),
    }


def test_stragglers_need_a_viewer_token(fleet: Fleet) -> None:
    assert stragglers(fleet, None)[0] == 401
    assert stragglers(fleet, "gwt_not-a-token")[0] == 401


def test_reports_without_samples_and_removed_nodes_leave_no_window(fleet: Fleet) -> None:
    nodes = [fleet.node(f"gpu-{i}", pool="prod") for i in range(6)]
    for _ in range(WINDOW):
        report_all(fleet, nodes, {"gpu-2": {0: 900}})
    nodes[0].report()  # an agent without NVML: no health section
    viewer = fleet.token("viewer")
    assert [n["node_id"] for n in stragglers(fleet, viewer)[1]["nodes"]] == ["gpu-2"]
    admin = fleet.token("admin")
    removed = urllib3.request(
        "DELETE", f"{fleet.url}/v1/nodes/gpu-2", headers={"Authorization": f"Bearer {admin}"}
    )
    assert removed.status == 200
    _, doc = stragglers(fleet, viewer)
    assert (doc["nodes_compared"], doc["nodes"]) == (5, [])


def test_cli_and_dashboard_show_the_ranking(fleet: Fleet) -> None:
    nodes = [fleet.node(f"gpu-{i}", pool="prod") for i in range(6)]
    for _ in range(WINDOW):
        report_all(fleet, nodes, {"gpu-4": {1: 1100}})
    viewer = fleet.token("viewer")
    env = {**os.environ, "GPUWARD_TOKEN": viewer}
    command = [sys.executable, "-m", "gpuward", "fleet", "stragglers", "--server", fleet.url]
    as_json = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == stragglers(fleet, viewer)[1]
    as_table = subprocess.run(command, env=env, capture_output=True, text=True)
    assert as_table.returncode == 0, as_table.stderr
    lines = as_table.stdout.splitlines()
    assert lines[0] == "1 straggler(s) among 6 nodes (last 5 reports each)"
    assert lines[1].split() == ["RANK", "NODE", "SCORE", "GPU", "METRIC", "VALUE", "PEER", "MEDIAN"]
    assert lines[2].split()[:5] == ["1", "gpu-4", lines[2].split()[2], "1", "sm_clock_ratio"]

    http = urllib3.PoolManager(retries=urllib3.Retry(total=0, redirect=0, raise_on_redirect=False))
    page = http.request(
        "GET", f"{fleet.url}/", headers={"Cookie": dashboard_sign_in(fleet.url, viewer)}
    )
    html = page.data.decode()
    section = html[html.index('<section id="stragglers">') :]
    assert "6 nodes compared" in section
    assert '<a href="/nodes/gpu-4">gpu-4</a>' in section
    assert "gpu-4 GPU 1: sm_clock_ratio 0.5556 against a pool median of" in section


def test_simultaneous_requests_share_one_computation(fleet: Fleet) -> None:
    nodes = [fleet.node(f"gpu-{i}", pool="prod") for i in range(6)]
    for _ in range(WINDOW):
        report_all(fleet, nodes, {"gpu-2": {0: 900}})
    viewer = fleet.token("viewer")
    with capture_logs() as logs, ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda _: stragglers(fleet, viewer), range(16)))
    assert [e["event"] for e in logs if e["event"] == "stragglers_computed"] == [
        "stragglers_computed"
    ]
    assert all(answer == answers[0] for answer in answers)
    status, doc = answers[0]
    assert (status, doc["computed_at"]) == (200, fleet.clock())
    assert [n["node_id"] for n in doc["nodes"]] == ["gpu-2"]


def test_a_report_is_reflected_once_the_interval_has_passed(fleet: Fleet) -> None:
    nodes = [fleet.node(f"gpu-{i}", pool="prod") for i in range(6)]
    for _ in range(WINDOW):
        report_all(fleet, nodes, {})
    viewer = fleet.token("viewer")
    first = stragglers(fleet, viewer)[1]
    assert (first["nodes_compared"], first["nodes"]) == (6, [])

    late = fleet.node("gpu-late", pool="prod")
    doc = {**report_doc(late.node_id), "health": health(6, 2, {})}
    assert late.send("POST", "/v1/reports", json.dumps(doc).encode()).status == 202
    fleet.clock.advance(REPORT_INTERVAL_S - 1)
    assert stragglers(fleet, viewer)[1] == first  # within the interval: the same ranking

    fleet.clock.advance(1)
    again = stragglers(fleet, viewer)[1]
    assert (again["nodes_compared"], again["computed_at"]) == (7, fleet.clock())
