"""The connection limits in front of aiohttp's server, on real loopback sockets: an
address gets its share only, and a full server makes room for a client that sends
its headers by closing the connection that has waited longest for its own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from server.connections import ConnectionGuard, ConnectionLimits

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: gpuward\r\nConnection: close\r\n\r\n"
PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: gpu"
HOUR = 3600.0  # no connection reaches its header deadline in these tests


async def _ok(_request: web.BaseRequest) -> web.Response:
    return web.Response(text="ok")


# The writers, held so that none is closed by being collected.
_held: list[asyncio.StreamWriter] = []


async def _connect(port: int, source: str, sent: bytes) -> asyncio.StreamReader:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(sent)
    _held.append(writer)
    return reader


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await reader.read() == b""
    except ConnectionResetError:
        return True


@contextlib.asynccontextmanager
async def _serving(limits: ConnectionLimits) -> AsyncIterator[int]:
    """A guarded server's port; its listener and every client connection closed after."""
    listener = await asyncio.get_running_loop().create_server(
        ConnectionGuard(web.Server(_ok), limits), "127.0.0.1", 0
    )
    try:
        yield int(listener.sockets[0].getsockname()[1])
    finally:
        listener.close()
        for writer in _held:
            writer.close()
        _held.clear()


def test_an_address_beyond_its_share_is_closed_at_once() -> None:
    async def attack() -> None:
        async with _serving(ConnectionLimits(HOUR, per_address=2, total=100)) as port:
            for _ in range(2):
                await _connect(port, "127.0.0.2", PARTIAL)
            assert await _closed(await _connect(port, "127.0.0.2", PARTIAL))
            answer = await (await _connect(port, "127.0.0.1", REQUEST)).read()
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")

    asyncio.run(attack())


def test_a_full_server_evicts_the_longest_wait_for_headers() -> None:
    async def attack() -> None:
        async with _serving(ConnectionLimits(HOUR, per_address=2, total=3)) as port:
            slow = [
                await _connect(port, source, PARTIAL)
                for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4")
            ]
            answer = await (await _connect(port, "127.0.0.1", REQUEST)).read()
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
            assert await _closed(slow[0])  # the oldest of the slow ones made room

    asyncio.run(attack())
