"""A simulated node speaking the node API over real HTTP: enroll, report, read.

It signs exactly as the agent does (``fleet.nodeauth``), but lets a test choose
the timestamp, nonce and body so that every refusal can be provoked.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import urllib3
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.nodeauth import RequestSignature, signed_message

# The no-TPM enrollment token every test server accepts.
ENROLLMENT_TOKEN = "test-enrollment-token-0123456789"


def report_doc(
    node_id: str,
    *,
    bundle: str | None = "drivers/R580/x.bundle",
    driver: str | None = "580.95.05",
    update: str = "committed",
    healthy: bool = True,
) -> dict[str, Any]:
    return {
        "schema": 1,
        "node_id": node_id,
        "sent_at": 1_700_000_000,
        "active_slot": "a",
        "driver_version": driver,
        "bundle": bundle,
        "update": update,
        "reason": "ok",
        "gpus": [
            {
                "index": 0,
                "name": "NVIDIA H100",
                "uuid": "GPU-1",
                "driver_version": driver,
                "healthy": healthy,
                "problems": [] if healthy else ["XID 79"],
            }
        ],
        "firewall": None,
        "kernel_hold": None,
    }


@dataclass
class SimNode:
    url: str
    node_id: str
    pool: str = "default"
    clock: Callable[[], float] = time.time
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public_key(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def headers(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        node_id: str | None = None,
        timestamp: int | None = None,
        nonce: str | None = None,
    ) -> dict[str, str]:
        node_id = node_id or self.node_id
        timestamp = int(self.clock()) if timestamp is None else timestamp
        nonce = nonce or secrets.token_hex(16)
        sig = self.key.sign(signed_message(method, path, node_id, timestamp, nonce, body))
        return RequestSignature(node_id, timestamp, nonce, sig).headers()

    def send(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> urllib3.BaseHTTPResponse:
        headers = headers if headers is not None else self.headers(method, path, body)
        if body:
            headers = {**headers, "Content-Type": "application/json"}
        return urllib3.request(
            method, self.url + path, body=body or None, headers=headers, retries=False
        )

    def enroll(self, token: str = ENROLLMENT_TOKEN) -> urllib3.BaseHTTPResponse:
        doc = {
            "node_id": self.node_id,
            "public_key": base64.b64encode(self.public_key).decode(),
            "pool": self.pool,
            "evidence": {"type": "enrollment-token", "token": token},
        }
        return self.send("POST", "/v1/enroll", json.dumps(doc).encode())

    def report(self, **fields: Any) -> urllib3.BaseHTTPResponse:
        body = json.dumps(report_doc(self.node_id, **fields)).encode()
        return self.send("POST", "/v1/reports", body)

    def assignment(self, of: str | None = None) -> urllib3.BaseHTTPResponse:
        return self.send("GET", f"/v1/nodes/{of or self.node_id}/assignment")


class FakeClock:
    """The server's and the nodes' time, moved by the test, never by sleeping."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def operator_get(url: str, path: str, token: str | None) -> urllib3.BaseHTTPResponse:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return urllib3.request("GET", url + path, headers=headers, retries=False)


def dashboard_sign_in(url: str, token: str, headers: dict[str, str] | None = None) -> str:
    """Sign in to the dashboard as a browser does (a POSTed form from its own
    origin); the ``Cookie`` header value that carries the session."""
    http = urllib3.PoolManager(retries=urllib3.Retry(total=0, redirect=0, raise_on_redirect=False))
    response = http.request_encode_body(
        "POST",
        f"{url}/login",
        fields={"token": token},
        encode_multipart=False,
        headers={"Origin": url, **(headers or {})},
    )
    assert response.status == 303 and response.headers["Location"] == "/", response.status
    return str(response.headers["Set-Cookie"]).split(";")[0]


def operator_post(url: str, path: str, token: str, body: Any = None) -> urllib3.BaseHTTPResponse:
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    return urllib3.request("POST", url + path, body=data, headers=headers, retries=False)
