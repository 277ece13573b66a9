"""Load on the fleet server: N simulated agents enroll, then submit signed reports.

The server runs as its own process (``gpuward server run``) on 127.0.0.1; this
process is the load generator: asyncio + aiohttp, a bounded number of
connections, every request signed with the agent's own Ed25519 key exactly as
the agent signs it. It prints, per store backend, reports accepted per second,
p50/p99 latency and lost reports (sent but not stored, checked against the
server's own fleet view). Bounded in agents and in time; loopback only.

    .venv/bin/python bench/load.py --agents 10000 --backends sqlite postgresql

Target (issue 8): 100,000 nodes every 60 s = 1,667 reports/s. Note that the load
generator shares the machine's cores with the server, so its signing work is
taken from the server's budget.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.nodeauth import RequestSignature, signed_message
from keys.image_repo import ImageRepository

HOST = "127.0.0.1"
POSTGRES_ADMIN = os.environ.get(
    "GPUWARD_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@dataclass
class Agent:
    node_id: str
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    def headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        timestamp, nonce = int(time.time()), secrets.token_hex(16)
        sig = self.key.sign(signed_message(method, path, self.node_id, timestamp, nonce, body))
        return {
            **RequestSignature(self.node_id, timestamp, nonce, sig).headers(),
            "Content-Type": "application/json",
        }

    def enrollment(self, token: str) -> bytes:
        public = self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        doc = {
            "node_id": self.node_id,
            "public_key": base64.b64encode(public).decode(),
            "pool": "bench",
            "evidence": {"type": "enrollment-token", "token": token},
        }
        return json.dumps(doc).encode()

    def report(self) -> bytes:
        gpu = {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "uuid": f"GPU-{self.node_id}",
            "driver_version": "580.95.05",
            "healthy": True,
            "problems": [],
        }
        doc = {
            "schema": 1,
            "node_id": self.node_id,
            "sent_at": int(time.time()),
            "active_slot": "a",
            "driver_version": "580.95.05",
            "bundle": "drivers/R580/nvidia-580.95.05.bundle",
            "update": "up-to-date",
            "reason": "no newer bundle for this node",
            "gpus": [gpu] * 8,
            "firewall": None,
        }
        return json.dumps(doc).encode()


@dataclass
class Phase:
    ok: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def line(self, what: str) -> str:
        lat = sorted(self.latencies) or [0.0]
        p50 = lat[len(lat) // 2] * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        rate = self.ok / self.seconds if self.seconds else 0.0
        return (
            f"  {what:<8} {self.ok:>7} ok {self.failed:>5} failed  {rate:>8.0f}/s  "
            f"p50 {p50:7.1f} ms  p99 {p99:7.1f} ms"
        )


async def _run_phase(
    url: str,
    agents: list[Agent],
    path: str,
    body_of: object,
    ok_status: tuple[int, ...],
    connections: int,
    deadline: float,
) -> Phase:
    phase = Phase()
    queue: asyncio.Queue[Agent] = asyncio.Queue()
    for agent in agents:
        queue.put_nowait(agent)
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while not queue.empty() and time.monotonic() < deadline:
                agent = queue.get_nowait()
                body = body_of(agent)  # type: ignore[operator]
                headers = agent.headers("POST", path, body)
                started = time.perf_counter()
                try:
                    async with session.post(url + path, data=body, headers=headers) as r:
                        await r.read()
                        good = r.status in ok_status
                except (aiohttp.ClientError, TimeoutError):
                    good = False
                phase.latencies.append(time.perf_counter() - started)
                if good:
                    phase.ok += 1
                else:
                    phase.failed += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        phase.seconds = time.perf_counter() - began
    return phase


def _start_server(
    repo: Path, db: str, token_file: Path, log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "gpuward", "--log-format", "json", "server", "run",
         "--repo", str(repo), "--db", db, "--host", HOST, "--port", "0",
         "--unattested-enrollment-token-file", str(token_file),
         # Every simulated node enrolls from this one address.
         "--preauth-burst", "1000000"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )  # fmt: skip
    started = time.monotonic()
    while time.monotonic() - started < 60:
        for line in log.read_text().splitlines():
            if '"server_listening"' in line:
                return process, int(json.loads(line)["port"])
        if process.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    process.kill()
    raise SystemExit("server did not start within 60 s")


def _viewer_token(db: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "gpuward", "server", "token", "create", "--role", "viewer",
         "--db", db, "--json"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    token: str = json.loads(result.stdout)["token"]
    return token


async def _stored_reports(url: str, token: str) -> int:
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(f"{url}/v1/fleet", headers=headers) as r:
            doc = await r.json()
    return sum(1 for n in doc["nodes"] if n["report"] is not None)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def bench(backend: str, work: Path, repo: Path, token_file: Path, args: argparse.Namespace) -> None:
    pg_name = None
    if backend == "sqlite":
        db = f"sqlite://{work / 'bench.db'}"
    else:
        pg_name = f"gpuward_bench_{secrets.token_hex(4)}"
        asyncio.run(_admin(f"CREATE DATABASE {pg_name}"))
        db = POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{pg_name}"
    log = work / f"server-{backend}.log"
    process, port = _start_server(repo, db, token_file, log)
    url = f"http://{HOST}:{port}"
    try:
        agents = [Agent(f"bench-{i:06}") for i in range(args.agents)]
        token = token_file.read_text()
        deadline = time.monotonic() + args.max_seconds
        enrolled = asyncio.run(
            _run_phase(url, agents, "/v1/enroll", lambda a: a.enrollment(token), (200, 201),
                       args.connections, deadline)
        )  # fmt: skip
        reports = asyncio.run(
            _run_phase(url, agents, "/v1/reports", Agent.report, (202,), args.connections, deadline)
        )
        stored = asyncio.run(_stored_reports(url, _viewer_token(db)))
        print(f"{backend}: {args.agents} agents, {args.connections} connections")
        print(enrolled.line("enroll"))
        print(reports.line("report"))
        lost = reports.ok - stored
        print(f"  stored   {stored:>7} reports; lost (accepted but not stored): {lost}; "
              f"not accepted: {reports.failed}; not sent (time bound): "
              f"{args.agents - reports.ok - reports.failed}")  # fmt: skip
        target = 100_000 / 60
        rate = reports.ok / reports.seconds if reports.seconds else 0.0
        print(f"  {rate / target:.2f}x the 1,667 reports/s target (100,000 nodes every 60 s)")
    finally:
        process.terminate()
        process.wait(timeout=30)
        if pg_name is not None:
            asyncio.run(_admin(f"DROP DATABASE {pg_name} WITH (FORCE)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="bound per backend")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    if not 1 <= args.agents <= 100_000:
        raise SystemExit("--agents must be between 1 and 100,000")
    with tempfile.TemporaryDirectory(prefix="gpuward-load-") as tmp:
        work = Path(tmp)
        repo = ImageRepository.init(work / "repo", secrets.token_urlsafe(16)).root
        token_file = work / "enrollment-token"
        token_file.write_text(secrets.token_urlsafe(24))
        for backend in args.backends:
            bench(backend, work, repo, token_file, args)


if __name__ == "__main__":
    main()
