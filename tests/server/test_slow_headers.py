"""A slow-header flood (connections that send part of a request line and wait) does
not take the server's file descriptors: the excess over one address's share is
closed at once, the rest at the header deadline, and /healthz and the nodes'
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
from tests.simnode import SimNode

FLOOD = 2_000
SERVER_FDS = 1_024
ATTACKER = "127.0.0.2"  # loopback too; honest clients come from 127.0.0.1
PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: gpuward"
WAIT_S = 30.0  # a failsafe only: each wait ends on an event


def _server_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SERVER_FDS, SERVER_FDS))


@pytest.fixture
def server_url(site: Site) -> Iterator[str]:
    server = subprocess.Popen(
        [
            sys.executable, "-m", "gpuward", "--log-format", "json", "server", "run",
            "--repo", str(site.repo.root), "--db", str(site.base / "flood.db"), "--port", "0",
            "--unattested-enrollment-token-file", str(site.enrollment_token_file),
            "--header-timeout", "1",
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


def _flood(url: str) -> list[socket.socket]:
    port = int(url.rsplit(":", 1)[1])
    held = []
    for _ in range(FLOOD):
        sock = socket.socket()
        sock.bind((ATTACKER, 0))
        sock.connect(("127.0.0.1", port))
        # An error: already closed by the server, the excess over the address's share.
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


def test_a_slow_header_flood_leaves_healthz_and_reports_answered(server_url: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * FLOOD:  # this test's own sockets: raise its soft limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * FLOOD), hard))
    node = SimNode(server_url, "gpu-honest")
    assert node.enroll().status == 201

    held = _flood(server_url)
    try:
        healthz = urllib3.request("GET", server_url + "/healthz", timeout=WAIT_S, retries=False)
        assert healthz.status == 200
        assert node.report().status == 202
        assert node.assignment().status == 200
        # Every flood connection is closed by the server: at once, or at the deadline.
        assert all(_closed_by_server(sock) for sock in held)
    finally:
        for sock in held:
            sock.close()
    assert node.report().status == 202
