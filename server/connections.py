"""Connection limits in front of the HTTP server: a deadline for a connection's first
request line and headers, and caps on open connections per source address and
overall.

aiohttp waits as long as a client likes for a request's headers and accepts
connections until the process runs out of file descriptors; then accept() fails
and ``/healthz`` and every node are refused while a few hundred slow clients
hold their sockets. Each accepted connection is wrapped here: one beyond its
address's share is closed at once, one beyond the total makes room by closing
the connection that has waited longest for its headers, and one whose first
request's headers are not complete within the deadline is closed then, so the
descriptors the server needs for its store, its files and honest nodes stay
free. After the first request, aiohttp's keep-alive timeout closes a connection
left idle. Each closing is logged at debug level only: a flood would otherwise
cost a log line per connection.
"""

from __future__ import annotations

import asyncio
import resource
from collections import Counter, OrderedDict
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
    """The protocol factory for the listener: counts open connections, wraps each.

    When the total is reached, the connection that has waited longest for its
    request headers is closed to make room: an honest client sends its headers at
    once, so a slow-header flood from many addresses evicts its own connections
    rather than shutting honest ones out.
    """

    def __init__(self, inner: Callable[[], asyncio.Protocol], limits: ConnectionLimits) -> None:
        self._inner = inner
        self.limits = limits
        self._open: Counter[str] = Counter()
        self._total = 0
        self._waiting: OrderedDict[_Guarded, None] = OrderedDict()  # oldest first

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self)

    def protocol(self) -> asyncio.Protocol:
        """The wrapped server's protocol for one admitted connection."""
        return self._inner()

    def admit(self, connection: _Guarded) -> bool:
        if self._open[connection.address] >= self.limits.per_address:
            return False
        if self._total >= self.limits.total:
            if not self._waiting:
                return False
            oldest, _ = self._waiting.popitem(last=False)
            oldest.close("connection_evicted_waiting_for_headers")
        self._open[connection.address] += 1
        self._total += 1
        self._waiting[connection] = None
        return True

    def headers_received(self, connection: _Guarded) -> None:
        self._waiting.pop(connection, None)

    def release(self, connection: _Guarded) -> None:
        self._waiting.pop(connection, None)
        self._total -= 1
        self._open[connection.address] -= 1
        if not self._open[connection.address]:
            del self._open[connection.address]


class _Guarded(asyncio.Protocol):
    """One connection: passed to aiohttp's handler once admitted, closed when it
    overstays the header deadline or is evicted."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self.address = ""
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, so a split HEADERS_END is found

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though uvloop's is not an asyncio.Transport subclass.
        transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if peer else ""
        if not self._guard.admit(self):
            log.debug("connection_refused_over_limit", remote=self.address)
            transport.abort()
            return
        self._transport = transport
        self._deadline = asyncio.get_running_loop().call_later(
            self._guard.limits.header_timeout_s, self.close, "connection_header_timeout"
        )
        self._inner = self._guard.protocol()
        self._inner.connection_made(transport)

    def close(self, event: str) -> None:
        """Close the connection now, counted free at once (its descriptor is closed
        on the loop's next turn)."""
        log.debug(event, remote=self.address, timeout_s=self._guard.limits.header_timeout_s)
        transport = self._release()
        if transport is not None:
            transport.abort()

    def _release(self) -> asyncio.Transport | None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        transport, self._transport = self._transport, None
        if transport is not None:
            self._guard.release(self)
        return transport

    def data_received(self, data: bytes) -> None:
        if self._deadline is not None:
            seen = self._tail + data
            if HEADERS_END in seen:
                self._deadline.cancel()
                self._deadline = None
                self._guard.headers_received(self)
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
        self._release()
        if self._inner is not None:
            self._inner.connection_lost(exc)
