"""The long-running commands start, work and stop cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import urllib3

from tests.conftest import Site


def _events(process: subprocess.Popen[str]) -> Iterator[dict[str, object]]:
    """The JSON log events a service writes to stderr, as they come."""
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("{"):
            yield json.loads(line)


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gpuward", "--log-format", "json", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_for(process: subprocess.Popen[str], event: str) -> dict[str, object]:
    for record in _events(process):
        if record["event"] == event:
            return record
    raise AssertionError(f"{event} never logged; exit status {process.wait(5)}")


def test_agent_loops_until_sigterm(site: Site, tmp_path: Path) -> None:
    site.publish("580.65.06")
    config = site.agent_toml(tmp_path, extra="interval_s = 3600\n")
    enroll = subprocess.run(
        [sys.executable, "-m", "gpuward", "agent", "enroll", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert enroll.returncode == 0, enroll.stderr
    agent = _start("agent", "run", "--config", str(config))
    try:
        done = _wait_for(agent, "cycle_done")
        assert done["update"] == "committed"
        assert site.fleet()["n1"]["report"]["update"] == "committed"
        agent.send_signal(signal.SIGTERM)  # it is now waiting out its interval
        assert _wait_for(agent, "agent_stopped")["node"] == "n1"
        assert agent.wait(timeout=10) == 0
    finally:
        agent.kill()
        agent.wait()


def test_server_serves_until_sigterm(site: Site, tmp_path: Path) -> None:
    server = _start(
        "server", "run", "--repo", str(site.repo.root), "--db", str(tmp_path / "s.db"),
        "--port", "0",
    )  # fmt: skip
    try:
        _healthy_until_sigterm(server, _wait_for(server, "server_listening")["port"])
    finally:
        server.kill()
        server.wait()


def _healthy_until_sigterm(server: subprocess.Popen[str], port: object) -> None:
    """The server answers /healthz, then stops cleanly on SIGTERM."""
    response = urllib3.request("GET", f"http://127.0.0.1:{port}/healthz")
    assert json.loads(response.data) == {"status": "ok"}
    server.send_signal(signal.SIGTERM)
    _wait_for(server, "server_stopped")
    assert server.wait(timeout=10) == 0


def test_server_runs_from_its_config_file(site: Site, tmp_path: Path) -> None:
    """As the unit starts it: --config; paths relative to the file; a flag overrides."""
    config = tmp_path / "etc" / "server.toml"
    config.parent.mkdir()
    config.write_text(
        f'repo = "../repo"\ndb = "server.db"\nport = 8470\nreport_interval = 60\n'
        f'unattested_enrollment_token_file = "{site.enrollment_token_file}"\n'
    )
    assert site.repo.root == tmp_path / "repo"
    server = _start("server", "run", "--config", str(config), "--port", "0")
    try:
        listening = _wait_for(server, "server_listening")
        assert listening["port"] != 8470 and listening["repo"] == str(config.parent / "../repo")
        _healthy_until_sigterm(server, listening["port"])
    finally:
        server.kill()
        server.wait()
    assert (config.parent / "server.db").is_file()
