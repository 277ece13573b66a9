"""How fast the server parses and replays event logs, against hashlib over the same bytes.

The verifier parses and replays a node's event log for every attested report.
Prints figures, asserts nothing. The reference (``hashlib.sha256`` of the whole
log, the least any replay could cost) is measured in the same run, so the ratio
is what to compare between machines and commits.

    .venv/bin/python bench/eventlog.py [--log FILE] [--runs 5]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet.eventlog import parse, replay

LOG_DIR = Path(__file__).resolve().parents[2] / "shared/testdata/eventlogs"


def best_of(runs: int, repeat: int, action: Callable[[], object]) -> float:
    """Seconds per call of ``action``: the best of ``runs`` batches of ``repeat`` calls."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(repeat):
            action()
        times.append((time.perf_counter() - start) / repeat)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", type=Path, help="event log (default: the largest test log)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    path = args.log or max(LOG_DIR.glob("*.bin"), key=lambda p: p.stat().st_size)
    data = path.read_bytes()
    log = parse(data)
    events = len(log.events)

    reference = best_of(args.runs, args.repeat, lambda: hashlib.sha256(data).digest())
    parsing = best_of(args.runs, args.repeat, lambda: parse(data))
    replaying = best_of(args.runs, args.repeat, lambda: replay(log))
    both = parsing + replaying

    print(
        f"{path.name}: {len(data)} bytes, {events} events, banks {', '.join(log.digest_sizes)}; "
        f"best of {args.runs} x {args.repeat}"
    )
    print(f"hashlib.sha256 of the log (reference): {reference * 1e6:8.1f} us  1.00x")
    print(
        f"parse:                                 {parsing * 1e6:8.1f} us  "
        f"{parsing / reference:5.1f}x  {events / parsing:,.0f} events/s"
    )
    print(
        f"replay:                                {replaying * 1e6:8.1f} us  "
        f"{replaying / reference:5.1f}x  {1 / replaying:,.0f} replays/s"
    )
    print(
        f"parse + replay:                        {both * 1e6:8.1f} us  "
        f"{both / reference:5.1f}x  {1 / both:,.0f} logs/s"
    )


if __name__ == "__main__":
    main()
