"""``python -m gpuward.cli.nvml_cmd``: what NVML sees on this host, as JSON, for operators.

A program of its own rather than a ``gpuward`` subcommand: nvidia-ml-py binds
``libnvidia-ml.so.1`` once per process, so every look (and every test against
a differently configured fake library) is a fresh process. By default it prints
the health probe's view; ``--inventory`` the collector's, ``--xids`` streams XIDs.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
from dataclasses import asdict
from typing import Any

import structlog

from fleet.gpu import XidEvent
from fleet.gpu_rules import classify_xid
from node.nvml import (
    NvmlProbe,
    NvmlUnavailable,
    XidListener,
    collect,
    inventory_to_dict,
    probe_to_dict,
)


def _xid_to_dict(event: XidEvent) -> dict[str, Any]:
    return {**asdict(event), "class": asdict(classify_xid(event.xid))}


def _print_json(doc: object, *, indent: int | None = 2) -> None:
    print(json.dumps(doc, indent=indent, sort_keys=True), flush=True)


def _stream_xids(count: int | None, wait_ms: int) -> int:
    received: queue.Queue[XidEvent] = queue.Queue()
    listener = XidListener(received.put, wait_ms=wait_ms)
    listener.start()
    # The listener may already have failed after registering (a wait that errors
    # at once): report what it watched first either way, then the error below.
    if not (listener.watched or listener.unwatched):
        _print_json({"error": listener.error or "no GPU registered"}, indent=None)
        return 1
    _print_json({"watched": listener.watched, "unwatched": listener.unwatched}, indent=None)
    printed = 0
    try:
        while count is None or printed < count:
            try:
                event = received.get(timeout=0.5)
            except queue.Empty:
                if listener.running:
                    continue
                break  # everything it received is printed; it stopped on an error
            _print_json(_xid_to_dict(event), indent=None)
            printed += 1
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()
    if listener.error is not None:
        _print_json({"error": listener.error}, indent=None)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpuward.cli.nvml_cmd",
        description="Print what NVML sees on this host as JSON (the health probe by default).",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--inventory", action="store_true", help="inventory, health sample and findings per GPU"
    )
    mode.add_argument("--xids", action="store_true", help="stream XIDs as JSON lines")
    parser.add_argument("--count", type=int, help="with --xids: stop after this many")
    parser.add_argument(
        "--wait-ms", type=int, default=1000, help="with --xids: NVML event wait per round"
    )
    args = parser.parse_args(argv)
    # Only as a program does this module own logging: to stderr, keeping stdout JSON.
    structlog.configure(logger_factory=structlog.WriteLoggerFactory(file=sys.stderr))
    if args.xids:
        return _stream_xids(args.count, args.wait_ms)
    if args.inventory:
        try:
            host = collect()
        except NvmlUnavailable as error:
            _print_json({"error": str(error)})
            return 1
        _print_json(inventory_to_dict(host))
        return 0
    result = NvmlProbe().probe()
    _print_json(probe_to_dict(result))
    return 0 if result.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
