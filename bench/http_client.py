"""A minimal HTTP/1.1 client for the load generator: keep-alive, sized bodies only.

The load generator shares the machine's two cores with the server it measures,
and aiohttp's client spent about 0.14 ms of CPU per report there, a sixth of
the server's own work per report. This one writes a request in one call and
reads the answer by its Content-Length. It speaks only what ``gpuward server
run`` answers on loopback: no chunked bodies, no TLS, no redirects; anything
else is an error, so nothing is counted that was not read whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from urllib.parse import urlsplit


class HttpError(Exception):
    """The answer was not one this client reads (or the connection failed)."""


class Connection:
    """One keep-alive connection to the server at ``url``, opened when first used
    and again after an error; one request at a time."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise HttpError(f"{url}: only http://HOST:PORT")
        self._host, self._port = parts.hostname, parts.port
        self._timeout_s = timeout_s
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes = b""
    ) -> tuple[int, bytes]:
        """The answer's status and body; raises ``HttpError`` or ``TimeoutError``."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._exchange(method, path, headers, body)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.close()
            raise HttpError(f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            self.close()
            raise

    async def _exchange(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self._host, self._port)
        reader, writer = self._streams
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host}:{self._port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        status_line = await reader.readuntil(b"\r\n")
        version, status, _ = status_line.decode("latin-1").split(" ", 2)
        if version != "HTTP/1.1":
            raise ValueError(f"not an HTTP/1.1 answer: {status_line[:40]!r}")
        length, close = None, False
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection":
                close = value == "close"
            elif name == "transfer-encoding":
                raise ValueError(f"a {value} body: not read by this client")
        if length is None:
            raise ValueError("an answer without Content-Length")
        data = await reader.readexactly(length)
        if close:
            self.close()
        return int(status), data

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None
