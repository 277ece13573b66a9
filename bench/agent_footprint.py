"""Memory and CPU of a running agent (``gpuward agent run``) against a local server.

The server runs in this process, on loopback, serving a fresh repository; the
agent is its own process, reporting every INTERVAL seconds for DURATION seconds
(default 10 minutes at 30 s), on 8 GPUs of the fake libnvidia-ml.so.1 (NVML
reads and the XID listener's thread, as on a real host) or on simulated GPUs.
Its resident memory is sampled every second from /proc; its CPU time is read at
the start and the end. A bare Python interpreter, measured the same way in the
same run, is the reference for memory.

    .venv/bin/python bench/agent_footprint.py --duration 600 --interval 30

Target (issue 6): at most 60 MB RSS and 0.5% of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import urllib3

from keys.image_repo import ImageRepository
from server.config import ServerConfig
from server.lifecycle import BackgroundServer
from tests.nvml.fakelib import build_fake_nvml, h100_host, write_config

TARGET_RSS_MB = 60.0
TARGET_CPU_PCT = 0.5
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Footprint:
    peak_rss_mb: float
    mean_rss_mb: float
    cpu_s: float  # user + system over the measured span
    wall_s: float

    @property
    def cpu_pct(self) -> float:
        return 100 * self.cpu_s / self.wall_s if self.wall_s else 0.0


def _rss_mb(pid: int) -> float:
    resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return resident * PAGE / 1e6


def _cpu_s(pid: int) -> float:
    # Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def measure(process: subprocess.Popen[bytes], seconds: float, settle_s: float) -> Footprint:
    """Sample ``process`` for ``seconds`` after letting it start up for ``settle_s``."""
    time.sleep(settle_s)
    rss, started, cpu0 = [], time.monotonic(), _cpu_s(process.pid)
    while time.monotonic() - started < seconds:
        if process.poll() is not None:
            raise SystemExit(f"the measured process exited with {process.returncode}")
        rss.append(_rss_mb(process.pid))
        time.sleep(1.0)
    wall, cpu = time.monotonic() - started, _cpu_s(process.pid) - cpu0
    return Footprint(max(rss), sum(rss) / len(rss), cpu, wall)


def agent_config(work: Path, server: BackgroundServer, backend: str, interval: int) -> Path:
    token_file = work / "enrollment-token"
    token_file.write_text(server.config.unattested_enrollment_token or "")
    root = server.config.repo / "metadata" / "1.root.json"
    shutil.copyfile(root, work / "trusted-root.json")
    config = work / "agent.toml"
    config.write_text(
        f'node_id = "bench-node"\nserver_url = "{server.url}"\n'
        f'trusted_root = "{work / "trusted-root.json"}"\nbranch = "R580"\n'
        f'root_dir = "{work / "host"}"\nhealth_backend = "{backend}"\n'
        f"interval_s = {interval}\n"
        f'enrollment_token_file = "{token_file}"\n'
        + ("[simulated]\ncount = 8\n" if backend == "simulated" else "")
    )
    return config


def reports_stored(server: BackgroundServer) -> int:
    token = server.issue_token("viewer")
    response = urllib3.request(
        "GET",
        f"{server.url}/v1/nodes/bench-node?limit=500",
        headers={"Authorization": f"Bearer {token}"},
    )
    return len(json.loads(response.data)["history"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds measured")
    parser.add_argument("--interval", type=int, default=30, help="agent report interval, s")
    parser.add_argument("--backend", choices=("nvml", "simulated"), default="nvml")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds of start-up left out of the figures"
    )
    args = parser.parse_args()
    gpuward = [sys.executable, "-m", "gpuward", "--log-format", "json"]
    with tempfile.TemporaryDirectory(prefix="gpuward-footprint-") as tmp:
        work = Path(tmp)
        repo = ImageRepository.init(work / "repo", secrets.token_urlsafe(16)).root
        env = dict(os.environ)
        if args.backend == "nvml":
            libs = build_fake_nvml(work / "fake-nvml")
            fake = write_config(work / "fake-nvml.conf", h100_host(gpus=8))
            env.update(LD_LIBRARY_PATH=str(libs), FAKE_NVML_CONFIG=str(fake))
        config = ServerConfig(
            repo=repo,
            db=str(work / "fleet.db"),
            port=0,
            unattested_enrollment_token=secrets.token_urlsafe(24),
        )
        with BackgroundServer(config) as server:
            agent_toml = agent_config(work, server, args.backend, args.interval)
            subprocess.run(
                [*gpuward, "agent", "enroll", "--config", str(agent_toml)],
                env=env, check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            reference = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(86400)"])
            agent = subprocess.Popen(
                [*gpuward, "agent", "run", "--config", str(agent_toml)],
                env=env, stdout=subprocess.DEVNULL, stderr=(work / "agent.log").open("wb"),
            )  # fmt: skip
            try:
                started = time.monotonic()
                seen = measure(agent, args.duration, args.settle)
                total_cpu = _cpu_s(agent.pid)
                total_wall = time.monotonic() - started
                bare = measure(reference, 3.0, 0.0)
            finally:
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=60)
                reference.kill()
                reference.wait()
            stored = reports_stored(server)
    print(
        f"gpuward agent run, {args.backend} backend, interval {args.interval} s, "
        f"measured {seen.wall_s:.0f} s after {args.settle:.0f} s of start-up; "
        f"{stored} reports stored"
    )
    print(
        f"  RSS: peak {seen.peak_rss_mb:.1f} MB, mean {seen.mean_rss_mb:.1f} MB "
        f"(target <= {TARGET_RSS_MB:.0f} MB: {seen.peak_rss_mb / TARGET_RSS_MB:.2f}x of it; "
        f"{seen.peak_rss_mb / bare.peak_rss_mb:.1f}x a bare Python's {bare.peak_rss_mb:.1f} MB)"
    )
    print(
        f"  CPU: {seen.cpu_pct:.3f}% of a core after start-up "
        f"(target <= {TARGET_CPU_PCT}%: {seen.cpu_pct / TARGET_CPU_PCT:.2f}x of it); "
        f"{100 * total_cpu / total_wall:.3f}% including start-up ({total_cpu:.2f} s CPU "
        f"in {total_wall:.0f} s)"
    )


if __name__ == "__main__":
    main()
