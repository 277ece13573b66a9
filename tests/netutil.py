"""For the tests that start real daemons (Slurm, nginx, Prometheus, a booted
container): a free loopback port to give one, and polling until it is ready."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")
POLL_S = 0.2


def free_port() -> int:
    """A loopback TCP port free now (the kernel's pick, released for the daemon)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    what: str, check: Callable[[], T | Literal[False] | None], timeout_s: float = 300.0
) -> T:
    """``check()``'s first truthy answer, polled for; the deadline only bounds a
    test that went wrong."""
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(POLL_S)
    return found
