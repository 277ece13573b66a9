"""``gpuward server run --workers N``: N processes behind one port, stopped as one.

The workers share the listening port through SO_REUSEPORT, each a full replica
on the one PostgreSQL store; every response names the worker that answered, so
the test sees that both serve nodes. SIGTERM to the supervisor stops them all;
a worker killed takes the service down with a non-zero status (for systemd to
restart it whole); SQLite, whose caches hold for one process, is refused.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from server.lifecycle import WORKER_HEADER
from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.conftest import Site
from tests.simnode import ENROLLMENT_TOKEN, SimNode, report_doc

# New connections, so that the kernel spreads them over the workers.
CLOSE = {"Connection": "close"}


@pytest.fixture
def workers(site: Site, tmp_path: Path, postgres_url: str) -> Iterator[subprocess.Popen[str]]:
    token = tmp_path / "enrollment-token"
    token.write_text(ENROLLMENT_TOKEN)
    server = subprocess.Popen(
        [sys.executable, "-m", "gpuward", "--log-format", "json", "server", "run",
         "--repo", str(site.repo.root), "--db", postgres_url, "--port", "0", "--workers", "2",
         "--unattested-enrollment-token-file", str(token)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        yield server
    finally:
        server.kill()
        server.wait()


def _wait_for(server: subprocess.Popen[str], event: str) -> dict[str, object]:
    assert server.stderr is not None
    for line in server.stderr:
        if line.startswith("{") and (record := json.loads(line))["event"] == event:
            return dict(record)
    raise AssertionError(f"{event} never logged; exit status {server.wait(5)}")


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _send(node: SimNode, method: str, path: str, body: bytes = b"") -> urllib3.BaseHTTPResponse:
    return node.send(method, path, body, {**node.headers(method, path, body), **CLOSE})


def test_two_workers_serve_one_port_and_stop_together(workers: subprocess.Popen[str]) -> None:
    url = f"http://127.0.0.1:{_wait_for(workers, 'workers_ready')['port']}"
    pids = _children(workers.pid)
    assert len(pids) == 2
    answered: set[str] = set()
    for i in range(8):
        node = SimNode(url, f"gpu-{i}", "prod")
        enrolled = node.enroll()
        assert enrolled.status == 201, enrolled.data
        report = _send(node, "POST", "/v1/reports", json.dumps(report_doc(node.node_id)).encode())
        assert report.status == 202, report.data
        assignment = _send(node, "GET", f"/v1/nodes/{node.node_id}/assignment")
        assert assignment.status == 200, assignment.data
        answered |= {report.headers[WORKER_HEADER], assignment.headers[WORKER_HEADER]}
    # Connections land on a worker by a hash of their ports: a bounded number of
    # new ones reaches both (all 200 on one: a chance of 2 ** -199).
    for _ in range(200):
        if len(answered) == 2:
            break
        answered.add(urllib3.request("GET", url + "/healthz", headers=CLOSE).headers[WORKER_HEADER])
    assert answered == {"0", "1"}

    workers.send_signal(signal.SIGTERM)
    assert workers.wait(timeout=60) == 0
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def test_a_dead_worker_stops_the_service(workers: subprocess.Popen[str]) -> None:
    _wait_for(workers, "workers_ready")
    first, second = _children(workers.pid)
    os.kill(first, signal.SIGKILL)
    assert workers.wait(timeout=60) != 0
    assert not Path(f"/proc/{second}").exists()


def test_workers_refused_on_sqlite(site: Site, tmp_path: Path) -> None:
    result = gpuward(
        "server", "run", "--repo", str(site.repo.root), "--db", str(tmp_path / "s.db"),
        "--workers", "2",
    )  # fmt: skip
    assert_one_line_error(result, "--workers needs a PostgreSQL store")


def test_workers_do_not_join_a_server_already_on_the_port(
    site: Site, postgres_url: str, tmp_path: Path
) -> None:
    """SO_REUSEPORT would let a second server silently take a share of the first's
    connections (an old one left running, a second unit on the same port)."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = str(other.getsockname()[1])
        result = gpuward(
            "server", "run", "--repo", str(site.repo.root), "--db", postgres_url,
            "--port", port, "--workers", "2",
        )  # fmt: skip
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}")
