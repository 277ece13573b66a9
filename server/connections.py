"""Connection limits in front of the HTTP server: a deadline for a connection's first
request line and headers, and caps on open connections per source address and
overall.

aiohttp waits as long as a client likes for a request's headers and accepts
connections until the process runs out of file descriptors; then accept() fails
and ``/healthz`` and every node are refused while a few hundred slow clients
hold their sockets. Each accepted connection is wrapped here: one beyond a cap
is closed at once, and one whose first request's headers are not complete
within the deadline is closed then, so the descriptors the server needs for its
store, its files and honest nodes stay free. After the first request, aiohttp's
keep-alive timeout closes a connection left idle.
"""

from __future__ import annotations

import asyncio
import resource
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import structlog

log = structlog.get_logger(__name__)

HEADERS_END = b"\r\n\r\n"
# Descriptors kept free of connections: the store, metadata files, logs, listeners.
FD_RESERVE = 256


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    per_address: int
    total: int

    @classmethod
    def within_fds(cls, header_timeout_s: float, per_address: int) -> ConnectionLimits:
        """Limits whose total leaves ``FD_RESERVE`` of the process's descriptors free."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        total = soft - FD_RESERVE if soft != resource.RLIM_INFINITY else 1_000_000
        return cls(header_timeout_s, per_address, max(1, total))


class ConnectionGuard:
    """The protocol factory for the listener: counts open connections, wraps each."""

    def __init__(self, inner: Callable[[], asyncio.Protocol], limits: ConnectionLimits) -> None:
        self._inner = inner
        self.limits = limits
        self._open: Counter[str] = Counter()
        self._total = 0

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self)

    def admit(self, address: str) -> bool:
        if self._total >= self.limits.total or self._open[address] >= self.limits.per_address:
            return False
        self._open[address] += 1
        self._total += 1
        return True

    def release(self, address: str) -> None:
        self._total -= 1
        self._open[address] -= 1
        if not self._open[address]:
            del self._open[address]

    def protocol(self) -> asyncio.Protocol:
        """The wrapped server's protocol for one admitted connection."""
        return self._inner()


class _Guarded(asyncio.Protocol):
    """One connection: passed to aiohttp's handler once admitted, closed when it
    overstays the header deadline."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._address = ""
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, so a split HEADERS_END is found

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though uvloop's is not an asyncio.Transport subclass.
        transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if peer else ""
        if not self._guard.admit(self._address):
            log.debug("connection_refused_over_limit", remote=self._address)
            transport.abort()
            return
        self._transport = transport
        self._deadline = asyncio.get_running_loop().call_later(
            self._guard.limits.header_timeout_s, self._expire
        )
        self._inner = self._guard.protocol()
        self._inner.connection_made(transport)

    def _expire(self) -> None:
        self._deadline = None
        log.info(
            "connection_header_timeout",
            remote=self._address,
            timeout_s=self._guard.limits.header_timeout_s,
        )
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._deadline is not None:
            seen = self._tail + data
            if HEADERS_END in seen:
                self._deadline.cancel()
                self._deadline = None
            self._tail = seen[-(len(HEADERS_END) - 1) :]
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._inner is None else self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is None:
            return
        if self._deadline is not None:
            self._deadline.cancel()
        self._guard.release(self._address)
        self._transport = None
        self._inner.connection_lost(exc)
