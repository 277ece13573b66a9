"""Node identity: enrollment, signed requests, and every way to forge one is refused."""

from __future__ import annotations

import json
import socket

import urllib3

from fleet.nodeauth import HEADER_NODE, HEADER_SIGNATURE
from server.http import MAX_BODY_BYTES
from tests.conftest import Fleet
from tests.simnode import ENROLLMENT_TOKEN, SimNode, operator_get, report_doc


def _error(response: urllib3.BaseHTTPResponse) -> str:
    return str(json.loads(response.data)["error"])


def test_enrollment_is_shown_unattested_and_repeatable_with_the_same_key(fleet: Fleet) -> None:
    node = fleet.node("gpu-1", pool="prod")
    again = node.enroll()
    assert again.status == 200
    assert json.loads(again.data) | {"enrolled_at": 0} == {
        "node_id": "gpu-1",
        "pool": "prod",
        "attested": False,
        "attestation": "unattested",
        "enrolled_at": 0,
    }


def test_enrolling_an_enrolled_id_with_another_key_needs_an_admin(fleet: Fleet) -> None:
    fleet.node("gpu-1")
    impostor = SimNode(fleet.url, "gpu-1", clock=fleet.clock)
    refused = impostor.enroll()
    assert refused.status == 409 and "DELETE /v1/nodes/gpu-1" in _error(refused)

    admin = fleet.token("admin")
    removed = urllib3.request(
        "DELETE", f"{fleet.url}/v1/nodes/gpu-1", headers={"Authorization": f"Bearer {admin}"}
    )
    assert removed.status == 200
    assert impostor.enroll().status == 201


def test_a_removed_node_is_refused_at_once_and_its_id_serves_the_new_key_only(
    fleet: Fleet,
) -> None:
    """The server keeps enrolled nodes in memory (SQLite): removal and re-enrollment
    must reach it before the next request."""
    old = fleet.node("gpu-1")
    assert old.report().status == 202
    admin = {"Authorization": f"Bearer {fleet.token('admin')}"}
    url = f"{fleet.url}/v1/nodes/gpu-1"
    assert urllib3.request("DELETE", url, headers=admin).status == 200
    gone = old.report()
    assert gone.status == 401 and "not enrolled" in _error(gone)

    new = SimNode(fleet.url, "gpu-1", clock=fleet.clock)
    assert new.enroll().status == 201
    assert old.report().status == 401
    assert new.report().status == 202


def test_enrollment_needs_the_token_and_possession_of_the_key(fleet: Fleet) -> None:
    node = SimNode(fleet.url, "gpu-1", clock=fleet.clock)
    wrong = node.enroll(token="not-the-enrollment-token")
    assert wrong.status == 403 and "wrong enrollment token" in _error(wrong)

    # A body naming one key, signed by another: no proof of possession.
    other = SimNode(fleet.url, "gpu-1", clock=fleet.clock)
    body = json.dumps(
        {
            "node_id": "gpu-1",
            "public_key": __import__("base64").b64encode(node.public_key).decode(),
            "evidence": {"type": "enrollment-token", "token": ENROLLMENT_TOKEN},
        }
    ).encode()
    stolen = other.send("POST", "/v1/enroll", body, other.headers("POST", "/v1/enroll", body))
    assert stolen.status == 401
    # Signed for another node id than the body names.
    crossed = node.send(
        "POST", "/v1/enroll", body, node.headers("POST", "/v1/enroll", body, node_id="gpu-2")
    )
    assert crossed.status == 403
    assert fleet.site.fleet() == {}


def test_unsigned_and_unenrolled_requests_are_refused(fleet: Fleet) -> None:
    body = json.dumps(report_doc("gpu-1")).encode()
    unsigned = urllib3.request(
        "POST",
        f"{fleet.url}/v1/reports",
        body=body,
        headers={"Content-Type": "application/json"},
        retries=False,
    )
    assert unsigned.status == 401 and "unsigned request" in _error(unsigned)
    assert unsigned.headers["WWW-Authenticate"] == "Gpuward-Signature"

    stranger = fleet.node("gpu-1", enroll=False)
    refused = stranger.report()
    assert refused.status == 401 and "not enrolled" in _error(refused)


def test_a_stranger_is_refused_before_its_body_is_read(fleet: Fleet) -> None:
    """Headers naming a node that is not enrolled, announcing the largest body the
    server takes, which never comes: the answer comes at once, not after the server
    waited for the body (up to 4 MiB on a server that takes attested reports)."""
    stranger = fleet.node("gpu-1", enroll=False)
    headers = stranger.headers("POST", "/v1/reports", b"")
    host, port = fleet.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20) as conn:
        head = [
            "POST /v1/reports HTTP/1.1",
            f"Host: {host}",
            "Content-Type: application/json",
            f"Content-Length: {MAX_BODY_BYTES}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        answer = conn.recv(4096)  # times out (and fails) if the server waits for the body
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"not enrolled" in answer


def test_an_operator_token_does_not_authenticate_a_node_request(fleet: Fleet) -> None:
    token = fleet.token("admin")
    response = urllib3.request(
        "POST",
        f"{fleet.url}/v1/reports",
        body=json.dumps(report_doc("gpu-1")).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        retries=False,
    )
    assert response.status == 401


def test_tampered_signatures_are_refused(fleet: Fleet) -> None:
    node = fleet.node("gpu-1")
    body = json.dumps(report_doc("gpu-1")).encode()
    headers = node.headers("POST", "/v1/reports", body)
    tampered_body = body.replace(b'"ok"', b'"OK"')
    assert node.send("POST", "/v1/reports", tampered_body, headers).status == 401
    other_path = node.headers("POST", "/v1/enroll", body)
    assert node.send("POST", "/v1/reports", body, other_path).status == 401
    garbage = {**headers, HEADER_SIGNATURE: "AAAA"}
    assert node.send("POST", "/v1/reports", body, garbage).status == 401
    assert fleet.site.fleet()["gpu-1"]["report"] is None


def test_stale_and_future_timestamps_are_refused(fleet: Fleet) -> None:
    node = fleet.node("gpu-1")
    body = json.dumps(report_doc("gpu-1")).encode()
    now = int(fleet.clock())
    for timestamp in (now - 301, now + 301):
        headers = node.headers("POST", "/v1/reports", body, timestamp=timestamp)
        response = node.send("POST", "/v1/reports", body, headers)
        assert response.status == 401 and "stale request" in _error(response)
    fresh = node.headers("POST", "/v1/reports", body, timestamp=now - 299)
    assert node.send("POST", "/v1/reports", body, fresh).status == 202


def test_a_replayed_request_is_refused(fleet: Fleet) -> None:
    node = fleet.node("gpu-1")
    body = json.dumps(report_doc("gpu-1")).encode()
    headers = node.headers("POST", "/v1/reports", body)
    assert node.send("POST", "/v1/reports", body, headers).status == 202
    replay = node.send("POST", "/v1/reports", body, headers)
    assert replay.status == 401 and "replayed" in _error(replay)


def test_a_node_cannot_report_for_another_node(fleet: Fleet) -> None:
    mallory, victim = fleet.node("gpu-1"), fleet.node("gpu-2")
    assert victim.report(healthy=True).status == 202
    forged = mallory.send(
        "POST", "/v1/reports", json.dumps(report_doc("gpu-2", healthy=False)).encode()
    )
    assert forged.status == 403
    # Signed as the victim, with the attacker's key: the signature fails.
    body = json.dumps(report_doc("gpu-2", healthy=False)).encode()
    as_victim = mallory.headers("POST", "/v1/reports", body, node_id="gpu-2")
    assert mallory.send("POST", "/v1/reports", body, as_victim).status == 401
    assert fleet.site.fleet()["gpu-2"]["state"] == "healthy"


def test_a_node_reads_only_its_own_assignment(fleet: Fleet) -> None:
    mallory, victim = fleet.node("gpu-1"), fleet.node("gpu-2")
    own = mallory.assignment()
    assert own.status == 200 and json.loads(own.data)["target"] is None
    assert mallory.assignment(of="gpu-2").status == 403
    headers = {**mallory.headers("GET", "/v1/nodes/gpu-2/assignment", b""), HEADER_NODE: "gpu-2"}
    assert mallory.send("GET", "/v1/nodes/gpu-2/assignment", b"", headers).status == 401
    assert victim.assignment().status == 200
    assert operator_get(fleet.url, "/v1/nodes/gpu-2/assignment", fleet.token("admin")).status == 401


def test_a_chatty_node_is_rate_limited_until_its_bucket_refills(fleet: Fleet) -> None:
    node, other = fleet.node("gpu-1"), fleet.node("gpu-2")
    burst = fleet.site.server.config.node_burst
    statuses = [node.report().status for _ in range(burst + 1)]
    assert statuses[:burst] == [202] * burst
    limited = node.report()
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    assert other.report().status == 202  # one node's flood does not starve another
    fleet.clock.advance(float(limited.headers["Retry-After"]))
    assert node.report().status == 202
