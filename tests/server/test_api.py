"""The server's HTTP surface under bad input: strict, bounded, nothing leaks."""

from __future__ import annotations

import json

import urllib3

from tests.conftest import Fleet, Site
from tests.simnode import report_doc


def test_report_accepted_and_listed(fleet: Fleet) -> None:
    node = fleet.node("node-9")
    response = node.report()
    assert response.status == 202, response.data
    listed = fleet.site.fleet()["node-9"]
    assert listed["report"] == report_doc("node-9")
    assert listed["state"] == "healthy"
    assert (listed["attested"], listed["attestation"]) == (False, "unattested")


def test_malformed_reports_are_rejected_and_not_stored(fleet: Fleet) -> None:
    node = fleet.node("node-9")
    good = report_doc("node-9")
    bad = [
        b"{not json",
        json.dumps({**good, "node_id": "../../etc"}).encode(),
        json.dumps({**good, "extra": 1}).encode(),
        json.dumps({**good, "gpus": [good["gpus"][0]] * 65}).encode(),
        json.dumps({**good, "update": "pwned"}).encode(),
        json.dumps([good]).encode(),
    ]
    for body in bad:
        response = node.send("POST", "/v1/reports", body)
        assert response.status == 400, body
        assert "error" in json.loads(response.data)
    assert fleet.site.fleet()["node-9"]["report"] is None


def test_oversized_report_is_refused(fleet: Fleet) -> None:
    node = fleet.node("node-9")
    body = json.dumps({**report_doc("node-9"), "reason": "x" * 100_000}).encode()
    assert node.send("POST", "/v1/reports", body).status == 413


def test_wrong_content_type_is_refused(fleet: Fleet) -> None:
    node = fleet.node("node-9")
    body = json.dumps(report_doc("node-9")).encode()
    headers = {**node.headers("POST", "/v1/reports", body), "Content-Type": "text/plain"}
    response = urllib3.request(
        "POST", f"{fleet.url}/v1/reports", body=body, headers=headers, retries=False
    )
    assert response.status == 415


def test_unknown_paths_and_methods_answer_json(site: Site) -> None:
    missing = urllib3.request("GET", f"{site.url}/v1/nope", retries=False)
    assert missing.status == 404 and "error" in json.loads(missing.data)
    wrong = urllib3.request("PUT", f"{site.url}/v1/reports", retries=False)
    assert wrong.status == 405 and "POST" in wrong.headers["Allow"]


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


def test_metadata_is_served_without_credentials(site: Site) -> None:
    response = urllib3.request("GET", f"{site.url}/v1/repo/metadata/1.root.json")
    assert response.status == 200
    assert json.loads(response.data)["signed"]["_type"] == "root"
