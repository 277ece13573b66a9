"""Download-and-verify throughput of a bundle through the agent's TUF path.

A bundle (1 GiB by default) is published in a fresh repository, served by the
real server (``gpuward server run``, in its own process as in production) on
loopback, and fetched by the agent's own ``ImageChannel`` (ngclient-verified
metadata; the bundle hashed once while it streams to disk,
length-capped, renamed into place once verified). The reference is
``openssl dgst -sha256`` of the same file, timed in the same run: one core's
SHA-256, the physical limit of a verified download. ``sha256sum`` (a slower
SHA-256 on many machines) is a second line. The ratio of the throughputs is the
figure to compare (target: at least 0.8 of OpenSSL).

    .venv/bin/python bench/verify.py [--size-mib 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.channel import ImageChannel
from keys.bundle import build_bundle
from keys.image_repo import ImageRepository
from node.config import AgentConfig


def _listening(server: subprocess.Popen[bytes], log: Path) -> int:
    """The port ``gpuward server run --port 0`` listens on, from its log."""
    started = time.monotonic()
    while time.monotonic() - started < 60:
        for line in log.read_text().splitlines():
            if '"server_listening"' in line:
                return int(json.loads(line)["port"])
        if server.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    server.kill()
    raise SystemExit("server did not start within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        repo = ImageRepository.init(base / "repo", "bench")
        payload = base / "payload"
        payload.mkdir()
        block = bytes(range(256)) * 4096  # 1 MiB
        with (payload / "nvidia-driver.deb").open("wb") as f:
            for _ in range(args.size_mib):
                f.write(block)
        bundle = base / "big.bundle"
        build_bundle(
            payload, driver_version="580.95.05", branch="R580", payload_kind="deb",
            output=bundle, dkms=True,
        )  # fmt: skip
        published = repo.add_bundle(bundle, lambda: "bench")
        (payload / "nvidia-driver.deb").unlink()
        mib = published.length / 2**20

        def timed(*command: str) -> float:
            start = time.perf_counter()
            subprocess.run([*command, str(bundle)], check=True, capture_output=True)
            return time.perf_counter() - start

        log = base / "server.log"
        # A server process of its own, as in production (on another machine): in this
        # process its thread would take the GIL from the download being measured.
        server = subprocess.Popen(
            [sys.executable, "-m", "gpuward", "--log-format", "json", "server", "run",
             "--repo", str(repo.root), "--db", f"sqlite://{base / 'server.db'}",
             "--host", "127.0.0.1", "--port", "0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{_listening(server, log)}"

            def agent_fetch(run: int) -> float:
                config = AgentConfig(
                    node_id="bench",
                    server_url=url,
                    trusted_root=repo.metadata_dir / "1.root.json",
                    branch="R580",
                    root_dir=base / f"host-{run}",
                )
                channel = ImageChannel(config)
                channel.refresh()
                candidate = channel.candidate(published.target_path)
                assert candidate is not None
                start = time.perf_counter()
                channel.fetch(candidate.info)
                return time.perf_counter() - start

            # Interleaved, so that a burst of load elsewhere hits every figure alike.
            openssl, sha256sum, fetched = [], [], []
            for run in range(args.runs):
                openssl.append(timed("openssl", "dgst", "-sha256"))
                sha256sum.append(timed("sha256sum"))
                fetched.append(agent_fetch(run))
        finally:
            server.terminate()
            server.wait(timeout=30)

        best = min(openssl)
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"bundle {mib:.0f} MiB, best of {args.runs} runs each; load average {load}")
        print(f"openssl dgst -sha256 (reference):     {mib / best:8.0f} MiB/s")
        print(f"sha256sum of the same file:           {mib / min(sha256sum):8.0f} MiB/s")
        print(f"agent download + verify over HTTP:    {mib / min(fetched):8.0f} MiB/s")
        print(f"ratio (agent / openssl):              {best / min(fetched):8.2f}  (target >= 0.8)")
        print(f"ratio (agent / sha256sum):            {min(sha256sum) / min(fetched):8.2f}")


if __name__ == "__main__":
    main()
