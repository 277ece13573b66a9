"""Real Prometheus and Alertmanager watching a real server with real agents: a
rollout stalled by a silent node fires GpuwardRolloutStuck, and Alertmanager
delivers it to a webhook receiver here.

Prometheus scrapes ``/metrics`` with a viewer token, as an operator's would,
evaluates the shipped rules and sends firing alerts to Alertmanager, which posts
them to the receiver. Each waits for the other through its API, polled against
a deadline that only bounds a test gone wrong.

Two things are shortened so that this runs in seconds. The rules are a copy of
the shipped file with only the ``for:`` and range durations cut to seconds
(``short_rules``); the thresholds are the shipped ones. And the rollout is
started on a server clock set two hours back, so that its last progress is as
old as a stuck rollout's would be; the clock is back to the present before any
agent reports again (their signed requests must be fresh).
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import urllib3

from fleet.rollout import Policy, parse_waves, plan_waves
from gpuward.node import run_once
from server.http import Services
from tests.conftest import Site, make_site
from tests.metrics.exposition import installed
from tests.metrics.test_rules import RULES
from tests.netutil import free_port, wait_for

DEADLINE_S = 45.0
STALLED_FOR_S = 2 * 3600  # beyond the rule's hour without progress
WAVES = "1,100%"


class ShiftedClock:
    """The server's time: the present, or moved by ``offset`` seconds."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def short_rules(shipped: str) -> str:
    """The shipped rules with every ``for:`` and range duration cut to seconds, and
    nothing else changed (the expressions' thresholds stay)."""
    text = re.sub(r"(?m)^(\s+for: )\S+$", r"\g<1>1s", shipped)
    return re.sub(r"\[\d+[smhd]\]", "[10s]", text)


def get_json(url: str) -> Any:
    try:
        response = urllib3.request("GET", url, retries=False, timeout=5)
    except urllib3.exceptions.HTTPError:
        return None  # not listening yet
    return json.loads(response.data) if response.status == 200 else None


class Receiver:
    """Alertmanager's webhook receiver: every notification posted, in a queue."""

    def __init__(self) -> None:
        received: queue.Queue[dict[str, Any]] = queue.Queue()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                received.put(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # pytest shows what the test asserts, not the requests

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def next_alert(self, name: str) -> dict[str, Any]:
        """The first alert named ``name`` posted, waiting at most until the deadline."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            left = deadline - time.monotonic()
            try:
                notification = self.received.get(timeout=max(left, 0.01))
            except queue.Empty:
                raise AssertionError(f"Alertmanager posted no {name} alert") from None
            for alert in notification["alerts"]:
                if alert["labels"]["alertname"] == name:
                    return dict(alert)


class Daemon:
    """A Prometheus or Alertmanager process of this test's own, stopped afterwards."""

    def __init__(self, argv: list[str], log: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.name = Path(argv[0]).name
        self._log_path = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(f"{self.name} to be ready ({log})", self._ready, DEADLINE_S)

    def _ready(self) -> bool | None:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited: {self._log_path.read_text()[-2000:]}")
        try:
            response = urllib3.request("GET", f"{self.url}/-/ready", retries=False, timeout=2)
        except urllib3.exceptions.HTTPError:
            return None
        return True if response.status == 200 else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture
def clock() -> ShiftedClock:
    return ShiftedClock()


@pytest.fixture
def shifted_site(
    _template_repo: Path, _template_director: Path, tmp_path: Path, clock: ShiftedClock
) -> Iterator[Site]:
    yield from make_site(
        _template_repo,
        tmp_path / "site",
        str(tmp_path / "server.db"),
        clock=clock,
        director=_template_director,
    )


@pytest.fixture
def alerting(tmp_path: Path, shifted_site: Site) -> Iterator[tuple[Daemon, Receiver]]:
    """Alertmanager posting to a receiver, and Prometheus scraping the server every
    second with a viewer token and evaluating the shortened rules every second."""
    prometheus, alertmanager = installed("prometheus"), installed("prometheus-alertmanager")
    folder = tmp_path / "monitoring"
    folder.mkdir()
    with Receiver() as receiver:
        am_port = free_port()
        (folder / "alertmanager.yml").write_text(
            "route:\n  receiver: test\n  group_by: [alertname, rollout]\n"
            "  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n"
            f"receivers:\n  - name: test\n    webhook_configs:\n      - url: {receiver.url}\n"
        )
        am = Daemon(
            [
                alertmanager,
                f"--config.file={folder / 'alertmanager.yml'}",
                f"--storage.path={folder / 'alertmanager'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",  # one instance, no gossip port
            ],
            folder / "alertmanager.log",
            am_port,
        )
        try:
            token = folder / "viewer-token"
            token.write_text(shifted_site.server.issue_token("viewer", "prometheus"))
            (folder / "rules.yml").write_text(short_rules(RULES.read_text()))
            prom_port = free_port()
            (folder / "prometheus.yml").write_text(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                f"rule_files: [{folder / 'rules.yml'}]\n"
                "alerting:\n  alertmanagers:\n"
                f"    - static_configs: [{{targets: ['127.0.0.1:{am_port}']}}]\n"
                "scrape_configs:\n  - job_name: gpuward-server\n"
                f"    authorization: {{credentials_file: {token}}}\n"
                f"    static_configs: [{{targets: ['127.0.0.1:{shifted_site.server.port}']}}]\n"
            )
            prom = Daemon(
                [
                    prometheus,
                    f"--config.file={folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={folder / 'prometheus'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                folder / "prometheus.log",
                prom_port,
            )
            try:
                yield prom, receiver
            finally:
                prom.stop()
        finally:
            am.stop()


def canary_first(nodes: list[str], silent: str) -> str:
    """A rollout id whose first wave is the silent node alone (waves are ordered by
    a hash of the rollout id)."""
    for n in range(1000):
        rollout_id = f"stall-{n}"
        if plan_waves(nodes, parse_waves(WAVES), rollout_id)[0] == [silent]:
            return rollout_id
    raise AssertionError("no rollout id puts the silent node first")


def firing(prom: Daemon, name: str) -> dict[str, Any] | None:
    doc = get_json(f"{prom.url}/api/v1/alerts")
    for alert in (doc or {"data": {"alerts": []}})["data"]["alerts"]:
        if alert["labels"]["alertname"] == name and alert["state"] == "firing":
            return dict(alert)
    return None


def test_a_rollout_stalled_by_a_silent_node_alerts_through_alertmanager(
    shifted_site: Site, clock: ShiftedClock, alerting: tuple[Daemon, Receiver]
) -> None:
    site, (prom, receiver) = shifted_site, alerting
    site.publish("580.65.06")
    agents = [site.agent(node, directed=True) for node in ("gpu-1", "gpu-2")]
    for agent in agents:
        assert run_once(agent).report_sent
    site.agent("gpu-silent", directed=True)  # enrolled; its agent never runs again
    target = site.publish("580.82.07").target_path
    rollout_id = canary_first(["gpu-1", "gpu-2", "gpu-silent"], "gpu-silent")

    async def start(svc: Services) -> None:
        await svc.engine.start("default", target, Policy(parse_waves(WAVES)), "test", rollout_id)

    clock.offset = -STALLED_FOR_S
    site.server.call(start)  # gpu-silent assigned, two hours ago
    clock.offset = 0
    for agent in agents:  # the rest of the fleet keeps reporting (wave 1 waits)
        assert run_once(agent).outcome.update == "up-to-date"

    alert = wait_for(
        "GpuwardRolloutStuck to fire in Prometheus",
        lambda: firing(prom, "GpuwardRolloutStuck"),
        DEADLINE_S,
    )
    assert alert["labels"]["rollout"] == rollout_id and alert["labels"]["pool"] == "default"
    assert float(alert["value"]) >= STALLED_FOR_S
    delivered = receiver.next_alert("GpuwardRolloutStuck")
    assert delivered["status"] == "firing"
    assert delivered["labels"]["rollout"] == rollout_id
    assert delivered["labels"]["severity"] == "warning"
    assert delivered["annotations"]["summary"] == f"Rollout {rollout_id} of pool default is stuck"
    assert firing(prom, "GpuwardRolloutHalted") is None

    targets = get_json(f"{prom.url}/api/v1/targets")["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"]  # scraped with the viewer token
