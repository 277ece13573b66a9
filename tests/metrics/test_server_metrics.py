"""The server's ``GET /metrics``: who may read it, and that what it says is the fleet.

The fleet-wide gauges are counted in SQL (``Store.node_counts``,
``rollout_standings``); they are checked here against the fleet view the API and
the dashboard show, on both store backends, and the request-path counters
against the requests sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from fleet.attestation_verdict import AttestationVerdict
from fleet.report import HealthReport
from server.http import Services
from server.store import EnrolledNode, Store
from tests.conftest import Fleet, Site, make_site
from tests.metrics.exposition import Exposition, check_metrics
from tests.simnode import operator_get, operator_post, report_doc

MISSING_AFTER_S = 300 * 3  # ServerConfig's report interval times missing_after


def scrape(site: Site, token: str | None) -> urllib3.BaseHTTPResponse:
    return operator_get(site.url, "/metrics", token)


def metrics(site: Site) -> Exposition:
    response = scrape(site, site.server.issue_token("viewer"))
    assert response.status == 200, response.data
    return Exposition(response.data.decode())


def test_metrics_need_a_viewer_token(site: Site) -> None:
    refused = scrape(site, None)
    assert refused.status == 401
    assert "operator token is required" in json.loads(refused.data)["error"]
    assert scrape(site, "not-a-token").status == 401
    allowed = scrape(site, site.server.issue_token("viewer"))
    assert allowed.status == 200
    assert allowed.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "gpuward_build_info{" in allowed.data.decode()


@pytest.fixture
def listening(_template_repo: Path, tmp_path: Path) -> Iterator[Site]:
    yield from make_site(
        _template_repo, tmp_path, str(tmp_path / "s.db"), metrics_listen="127.0.0.1:0"
    )


def test_the_metrics_address_serves_metrics_alone_without_a_token(listening: Site) -> None:
    url = listening.server.metrics_url
    assert not url.endswith(f":{listening.server.port}/metrics")
    response = urllib3.request("GET", url, retries=False)
    assert response.status == 200
    assert "gpuward_nodes" in response.data.decode()
    base = url.removesuffix("/metrics")
    for path in ("/v1/fleet", "/healthz", "/", "/v1/openapi.json"):
        assert urllib3.request("GET", base + path, retries=False).status == 404, path
    # The server's own port still asks for a token.
    assert scrape(listening, None).status == 401


async def _enroll_tpm_node(store: Store, node_id: str, at: int, passed: bool | None) -> None:
    """A TPM-enrolled node, and unless ``passed`` is None its attested report with
    that verdict (as ``server.report_attestation`` stores one)."""
    await store.enroll(EnrolledNode(node_id, b"k" * 32, "tpm", True, "tpm2", at))
    if passed is not None:
        # A reason quoting the member that says it passed does not make it pass.
        reasons = () if passed else ('the policy wants "passed": true for PCR 7',)
        verdict = AttestationVerdict(passed, 1, None, None, reasons)
        assert ('"passed": true' in verdict.to_json()) is passed  # what the store matches
        report = HealthReport.from_dict(report_doc(node_id))
        await store.add_report(report, at, "127.0.0.1", f"nonce-{node_id}", verdict)


def test_nodes_by_state_and_attestation_agree_with_the_fleet_view(fleet: Fleet) -> None:
    gone = fleet.node("gone")
    assert gone.report().status == 202
    fleet.clock.advance(MISSING_AFTER_S + 1)  # "gone" is now missing
    for node_id, healthy in (("well", True), ("ill", False)):
        assert fleet.node(node_id).report(healthy=healthy).status == 202
    fleet.node("fresh")  # enrolled, never reported
    now = int(fleet.clock())

    async def enroll_tpm_nodes(svc: Services) -> None:
        for node_id, passed in (("tpm-ok", True), ("tpm-bad", False), ("tpm-new", None)):
            await _enroll_tpm_node(svc.store, node_id, now, passed)

    fleet.site.server.call(enroll_tpm_nodes)

    shown = metrics(fleet.site)
    token = fleet.token("viewer")
    view = json.loads(operator_get(fleet.url, "/v1/fleet", token).data)
    for state, count in view["summary"]["states"].items():
        assert sum(shown.matching("gpuward_nodes", state=state).values()) == count, state
    expected = {
        ("default", "missing", "unattested"): 1,
        ("default", "healthy", "unattested"): 1,
        ("default", "unhealthy", "unattested"): 1,
        ("default", "new", "unattested"): 1,
        ("tpm", "healthy", "passed"): 1,
        ("tpm", "healthy", "failed"): 1,
        ("tpm", "new", "pending"): 1,
    }
    nonzero = {
        (dict(labels)["pool"], dict(labels)["state"], dict(labels)["attestation"]): value
        for labels, value in shown.matching("gpuward_nodes").items()
        if value
    }
    assert nonzero == expected
    # Every combination is there, zero or not, so that a graph starts at 0.
    assert len(shown.matching("gpuward_nodes", pool="default")) == 4 * 4


def test_reports_are_counted_accepted_by_update_and_refused_by_reason(fleet: Fleet) -> None:
    node = fleet.node("gpu-1")
    assert node.report(update="committed").status == 202
    assert node.report(update="rolled-back").status == 202
    body = json.dumps(report_doc("gpu-1")).encode()
    headers = node.headers("POST", "/v1/reports", body)
    assert node.send("POST", "/v1/reports", body, headers).status == 202
    assert node.send("POST", "/v1/reports", body, headers).status == 401  # replayed
    other = json.dumps(report_doc("gpu-2")).encode()
    assert node.send("POST", "/v1/reports", other).status == 403  # names another node
    assert node.send("POST", "/v1/reports", b"{}").status == 400
    assert node.send("POST", "/v1/reports", body, headers={}).status == 401  # unsigned

    shown = metrics(fleet.site)
    accepted = "gpuward_reports_accepted_total"
    assert shown.value(accepted, update="committed") == 2
    assert shown.value(accepted, update="rolled-back") == 1
    assert shown.value(accepted, update="failed") == 0
    refused = {
        dict(labels)["reason"]: value
        for labels, value in shown.matching("gpuward_reports_refused_total").items()
        if value
    }
    assert refused == {"replayed": 1, "wrong_node": 1, "malformed": 1, "unauthenticated": 1}
    # Observed for the reports that got as far as a verdict: the three accepted.
    assert shown.value("gpuward_report_verification_seconds_count") == 3


def test_rollouts_by_phase_and_wave_progress(fleet: Fleet) -> None:
    published = fleet.site.publish("580.82.07")
    for node_id in ("gpu-1", "gpu-2"):
        fleet.node(node_id, pool="prod")
    token = fleet.token("operator")
    started_at = int(fleet.clock())
    started = operator_post(
        fleet.url,
        "/v1/rollouts",
        token,
        {
            "id": "r-1",
            "pool": "prod",
            "target": published.target_path,
            "policy": {"waves": "1,100%"},
        },
    )
    assert started.status == 201, started.data

    shown = metrics(fleet.site)
    assert shown.value("gpuward_rollouts", phase="running") == 1
    assert shown.value("gpuward_rollouts", phase="completed") == 0
    per = {"rollout": "r-1", "pool": "prod"}
    assert shown.value("gpuward_rollout_phase", phase="running", **per) == 1
    assert shown.value("gpuward_rollout_phase", phase="halted", **per) == 0
    assert shown.value("gpuward_rollout_wave", **per) == 0
    assert shown.value("gpuward_rollout_waves", **per) == 2
    assert shown.value("gpuward_rollout_nodes", wave="0", progress="assigned", **per) == 1
    assert shown.value("gpuward_rollout_nodes", wave="1", progress="pending", **per) == 1
    assert shown.value("gpuward_rollout_nodes", wave="1", progress="done", **per) == 0
    assert shown.value("gpuward_rollout_last_progress_timestamp_seconds", **per) == started_at

    fleet.clock.advance(600)
    fleet.site.server.tick_rollouts()  # nobody reported: no progress
    shown = metrics(fleet.site)
    assert shown.value("gpuward_rollout_last_progress_timestamp_seconds", **per) == started_at
    assert operator_post(fleet.url, "/v1/rollouts/r-1/pause", token).status == 200
    shown = metrics(fleet.site)
    assert shown.value("gpuward_rollout_phase", phase="paused", **per) == 1
    assert shown.value("gpuward_rollout_last_progress_timestamp_seconds", **per) == started_at + 600
    assert operator_post(fleet.url, "/v1/rollouts/r-1/abort", token).status == 200
    shown = metrics(fleet.site)
    assert shown.value("gpuward_rollouts", phase="aborted") == 1
    assert shown.matching("gpuward_rollout_wave") == {}  # only active rollouts are shown


def test_metadata_expiry_and_resigner_health_from_the_last_pass(site: Site) -> None:
    published = site.publish("580.82.07")
    site.assign("node-1", published, counter=1)

    async def resign(svc: Services) -> None:
        assert svc.renewer is not None
        await svc.renewer.run_pass()  # now that the director has a node

    site.server.call(resign)

    shown = metrics(site)
    expiry = {
        (dict(labels)["repository"], dict(labels)["role"]): value
        for labels, value in shown.matching("gpuward_metadata_expires_in_seconds").items()
    }
    assert set(expiry) == {
        ("image", "root"),
        ("image", "targets"),
        ("image", "R580"),
        ("image", "snapshot"),
        ("image", "timestamp"),
        ("director", "root"),
        ("director", "targets"),
        ("director", "snapshot"),
        ("director", "timestamp"),
    }
    day = 86_400
    assert 0 < expiry[("image", "timestamp")] <= day
    assert expiry[("image", "root")] > 30 * day
    (signer,) = shown.matching("gpuward_resigner_failed_passes").values()
    assert signer == 0
    assert set(shown.matching("gpuward_resigner_overdue").values()) == {0}
    assert shown.value("gpuward_db_connections_max") == 1  # SQLite: one connection
    assert shown.value("gpuward_db_connections", state="in_use") == 0


def test_promtool_finds_nothing_to_lint(fleet: Fleet) -> None:
    published = fleet.site.publish("580.82.07")
    node = fleet.node("gpu-1", pool="prod")
    assert node.report().status == 202
    token = fleet.token("operator")
    rollout = {"pool": "prod", "target": published.target_path}
    assert operator_post(fleet.url, "/v1/rollouts", token, rollout).status == 201
    check_metrics(metrics(fleet.site).text)
