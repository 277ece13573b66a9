"""Download-and-verify throughput of a bundle through the agent's TUF path.

A bundle (1 GiB by default) is published in a fresh repository, served by the
real server on loopback, and fetched by the agent's own ``ImageChannel``
(python-tuf ngclient: download, length cap, SHA-256 check, atomic write). The
reference is ``sha256sum`` of the same file, timed in the same run; the ratio
of their throughputs is the figure to compare (target: at least 0.8).

    .venv/bin/python bench/verify.py [--size-mib 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from agent.channel import ImageChannel
from keys.bundle import build_bundle
from keys.image_repo import ImageRepository
from node.config import AgentConfig
from server.config import ServerConfig
from server.lifecycle import BackgroundServer


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

        def sha256sum() -> float:
            start = time.perf_counter()
            subprocess.run(["sha256sum", str(bundle)], check=True, capture_output=True)
            return time.perf_counter() - start

        with BackgroundServer(ServerConfig(repo.root, str(base / "server.db"), port=0)) as server:

            def agent_fetch(run: int) -> float:
                config = AgentConfig(
                    node_id="bench",
                    server_url=server.url,
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

            reference = min(sha256sum() for _ in range(args.runs))
            fetched = min(agent_fetch(run) for run in range(args.runs))

        print(f"bundle {mib:.0f} MiB, best of {args.runs} runs each")
        print(f"sha256sum of the file (reference):    {mib / reference:8.0f} MiB/s")
        print(f"agent download + verify over HTTP:    {mib / fetched:8.0f} MiB/s")
        print(f"ratio (agent / sha256sum):            {reference / fetched:8.2f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
