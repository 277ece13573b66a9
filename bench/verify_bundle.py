"""How much the agent's bundle checks cost, against ``sha256sum`` of the same file.

Prints figures, asserts nothing. The reference is measured in the same run, so
the ratio is what to compare between machines and commits.

    .venv/bin/python bench/verify_bundle.py [--size-mib 256]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from applier.unpack import unpack_bundle
from keys.bundle import build_bundle, read_manifest, sha256_file


def best_of(runs: int, action: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        payload = base / "payload"
        payload.mkdir()
        chunk = bytes(range(256)) * 4096
        with (payload / "nvidia-driver.deb").open("wb") as f:
            for _ in range(args.size_mib):
                f.write(chunk)
        bundle = base / "b.bundle"
        build_bundle(
            payload,
            driver_version="580.95.05",
            branch="R580",
            payload_kind="deb",
            output=bundle,
            dkms=True,
        )
        manifest = read_manifest(bundle)

        reference = best_of(
            args.runs,
            lambda: subprocess.run(["sha256sum", str(bundle)], check=True, capture_output=True),
        )
        digest = best_of(args.runs, lambda: sha256_file(bundle))

        def unpack() -> None:
            dest = base / f"slot-{time.monotonic_ns()}"
            dest.mkdir()
            unpack_bundle(bundle, manifest, dest)

        full = best_of(args.runs, unpack)
        mib = bundle.stat().st_size / 2**20
        print(f"bundle: {mib:.0f} MiB, best of {args.runs} runs")
        rate = mib / reference
        print(f"sha256sum (reference):              {reference:.3f} s  1.00x  {rate:.0f} MiB/s")
        print(f"agent digest check (TUF's hash):    {digest:.3f} s  {digest / reference:.2f}x")
        print(f"agent unpack + per-file digests:    {full:.3f} s  {full / reference:.2f}x")


if __name__ == "__main__":
    main()
