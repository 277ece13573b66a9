"""A slow-header flood (connections that send part of a request line and wait) does
not take the server's file descriptors: the excess over one address's share is
closed at once, the oldest waiting for headers make room when the total is
reached, the rest are closed at the header deadline, and /healthz and the nodes'
reports are answered throughout.

The server runs as the unit runs it, in its own process, with the 1,024
descriptors a unit without ``LimitNOFILE`` had: 2,000 held connections used to
take them all.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import urllib3

from tests.conftest import Site
from tests.simnode import SimNode, report_doc

FLOOD = 2_000
SERVER_FDS = 1_024
# Loopback too; honest clients come from 127.0.0.1. Eight addresses stay under the
# share of one (256) and fill the total (the descriptors less a reserve) instead.
ONE_ADDRESS = ("127.0.0.2",)
EIGHT_ADDRESSES = tuple(f"127.0.1.{i}" for i in range(1, 9))
PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: gpuward"
WAIT_S = 30.0  # a failsafe only: each wait ends on an event


def _server_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SERVER_FDS, SERVER_FDS))


@pytest.fixture
def server_url(site: Site, request: pytest.FixtureRequest) -> Iterator[str]:
    """The server process; ``request.param``: its header timeout in seconds."""
    server = subprocess.Popen(
        [
            sys.executable, "-m", "gpuward", "--log-format", "json", "server", "run",
            "--repo", str(site.repo.root), "--db", str(site.base / "flood.db"), "--port", "0",
            "--unattested-enrollment-token-file", str(site.enrollment_token_file),
            "--header-timeout", str(request.param),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_server_fds,
    )  # fmt: skip
    try:
        assert server.stderr is not None
        for line in server.stderr:
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "server_listening":
                # Its log keeps coming (a line per closed connection): drain it.
                threading.Thread(target=server.stderr.read, daemon=True).start()
                yield f"http://127.0.0.1:{event['port']}"
                break
        else:
            raise AssertionError(f"the server never listened; status {server.wait()}")
    finally:
        server.kill()
        server.wait()


def _flood(url: str, sources: tuple[str, ...]) -> list[socket.socket]:
    port = int(url.rsplit(":", 1)[1])
    held = []
    for i in range(FLOOD):
        sock = socket.socket()
        sock.bind((sources[i % len(sources)], 0))
        sock.connect(("127.0.0.1", port))
        # An error: already closed by the server, the excess over a share or the total.
        with contextlib.suppress(OSError):
            sock.sendall(PARTIAL)
        held.append(sock)
    return held


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(WAIT_S)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def _on_new_connection(
    url: str, method: str, path: str, node: SimNode | None = None, body: bytes = b""
) -> urllib3.BaseHTTPResponse:
    """A request on a connection of its own, as a node or a monitor opens it: one
    kept alive from before the flood would not need to be admitted."""
    headers = {} if node is None else node.headers(method, path, body)
    if body:
        headers["Content-Type"] = "application/json"
    with urllib3.PoolManager(retries=False, timeout=WAIT_S) as fresh:
        return fresh.request(method, url + path, body=body or None, headers=headers)


def _answered_during_flood(url: str, sources: tuple[str, ...]) -> list[socket.socket]:
    """The flood's sockets, once /healthz and a node were answered while they are held."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * FLOOD:  # this test's own sockets: raise its soft limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * FLOOD), hard))
    node = SimNode(url, "gpu-honest")
    assert node.enroll().status == 201
    held = _flood(url, sources)
    try:
        assert _on_new_connection(url, "GET", "/healthz").status == 200
        report = json.dumps(report_doc("gpu-honest")).encode()
        assert _on_new_connection(url, "POST", "/v1/reports", node, report).status == 202
        assignment = "/v1/nodes/gpu-honest/assignment"
        assert _on_new_connection(url, "GET", assignment, node).status == 200
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held


@pytest.mark.parametrize("server_url", [1.0], indirect=True)
def test_a_slow_header_flood_from_one_address_is_closed(server_url: str) -> None:
    held = _answered_during_flood(server_url, ONE_ADDRESS)
    try:
        # Every flood connection is closed by the server: at once, or at the deadline.
        assert all(_closed_by_server(sock) for sock in held)
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("server_url", [3600.0], indirect=True)
def test_a_slow_header_flood_from_many_addresses_makes_room(server_url: str) -> None:
    """No deadline passes during this test: the honest clients are admitted by
    closing the flood's connections that have waited longest for their headers."""
    for sock in _answered_during_flood(server_url, EIGHT_ADDRESSES):
        sock.close()
