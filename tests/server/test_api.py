"""The server's HTTP surface under bad input: strict, bounded, nothing leaks."""

from __future__ import annotations

import json
from typing import Any

import urllib3

from tests.conftest import Site

REPORT: dict[str, Any] = {
    "schema": 1,
    "node_id": "node-9",
    "sent_at": 1_700_000_000,
    "active_slot": "a",
    "driver_version": "580.95.05",
    "bundle": "drivers/R580/x.bundle",
    "update": "committed",
    "reason": "ok",
    "gpus": [
        {
            "index": 0,
            "name": "NVIDIA H100",
            "uuid": "GPU-1",
            "driver_version": "580.95.05",
            "healthy": True,
            "problems": [],
        }
    ],
}


def _post(
    site: Site, body: bytes, content_type: str = "application/json"
) -> urllib3.BaseHTTPResponse:
    return urllib3.request(
        "POST",
        f"{site.url}/v1/reports",
        body=body,
        headers={"Content-Type": content_type},
        retries=False,
    )


def test_report_accepted_and_listed(site: Site) -> None:
    assert _post(site, json.dumps(REPORT).encode()).status == 202
    fleet = json.loads(urllib3.request("GET", f"{site.url}/v1/fleet").data)
    assert fleet["nodes"][0]["report"] == {**REPORT, "firewall": None}


def test_malformed_reports_are_rejected_and_not_stored(site: Site) -> None:
    bad = [
        b"{not json",
        json.dumps({**REPORT, "node_id": "../../etc"}).encode(),
        json.dumps({**REPORT, "extra": 1}).encode(),
        json.dumps({**REPORT, "gpus": [REPORT["gpus"][0]] * 65}).encode(),
        json.dumps({**REPORT, "update": "pwned"}).encode(),
        json.dumps([REPORT]).encode(),
    ]
    for body in bad:
        response = _post(site, body)
        assert response.status == 400, body
        assert "error" in json.loads(response.data)
    assert json.loads(urllib3.request("GET", f"{site.url}/v1/fleet").data)["nodes"] == []


def test_oversized_report_is_refused(site: Site) -> None:
    body = json.dumps({**REPORT, "reason": "x" * 100_000}).encode()
    assert _post(site, body).status == 413


def test_wrong_content_type_is_refused(site: Site) -> None:
    assert _post(site, json.dumps(REPORT).encode(), "text/plain").status == 415


def test_keys_are_never_served(site: Site) -> None:
    for path in (
        "/v1/repo/metadata/../keys/root.key",
        "/v1/repo/metadata/%2e%2e%2fkeys%2froot.key",
        "/v1/repo/targets/../keys/root.key",
        "/v1/repo/targets/..%2fkeys%2froot.key",
        "/v1/repo/targets/%2e%2e/keys/root.key",
        "/v1/repo/metadata/root.pub.json",
        "/keys/root.key",
    ):
        response = urllib3.request("GET", f"{site.url}{path}", retries=False)
        assert response.status == 404, path
        assert b"PRIVATE" not in response.data and b"secretbox" not in response.data


def test_symlink_out_of_the_targets_folder_is_not_followed(site: Site) -> None:
    (site.repo.targets_dir / "leak.json").symlink_to(site.repo.root / "keys" / "root.key")
    response = urllib3.request("GET", f"{site.url}/v1/repo/targets/leak.json", retries=False)
    assert response.status == 404


def test_metadata_is_served(site: Site) -> None:
    response = urllib3.request("GET", f"{site.url}/v1/repo/metadata/1.root.json")
    assert response.status == 200
    assert json.loads(response.data)["signed"]["_type"] == "root"
