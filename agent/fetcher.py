"""Fetching from the server or, when it fails, from mirrors: all of them untrusted.

python-tuf dropped mirror support from ngclient; failover belongs in a
``FetcherInterface``. URLs under the primary base are tried on each mirror base
in order. When every one fails, a definite answer from any of them (HTTP 4xx,
e.g. the 404 that ends a root-version probe) is final; network failures and
5xx are retried in rounds with jittered exponential backoff. Nothing here is trusted:
whatever any mirror serves is verified by ngclient afterwards, and ngclient
cuts off any response longer than the length it expects.

A node's director metadata names the bundle it is to run, which is the node's
business only: ``SignedFetcher`` signs those requests as the node, as every
request to the server after enrollment is signed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote

import structlog
import urllib3
from tuf.api.exceptions import DownloadError, DownloadHTTPError, SlowRetrievalError
from tuf.ngclient import FetcherInterface

from agent.tls import ServerTrust
from node.channel import TlsRefused

log = structlog.get_logger(__name__)


class MirrorFetcher(FetcherInterface):
    def __init__(
        self,
        bases: Sequence[str],
        inner: FetcherInterface,
        *,
        rounds: int = 3,
        backoff_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not bases:
            raise ValueError("at least one base URL is needed")
        self.bases = [b.rstrip("/") for b in bases]
        self.inner = inner
        self.rounds = rounds
        self.backoff_s = backoff_s
        self.sleep = sleep

    def _fetch(self, url: str) -> Iterator[bytes]:
        primary = self.bases[0]
        if not url.startswith(primary):
            return self.inner.fetch(url)
        tail = url[len(primary) :]
        last: DownloadError | None = None
        for attempt in range(self.rounds):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)  # noqa: S311
                log.warning(
                    "fetch_retrying", url=tail, attempt=attempt + 1, delay_s=round(delay, 2)
                )
                self.sleep(delay)
            refused: DownloadHTTPError | None = None
            for base in self.bases:
                try:
                    return self.inner.fetch(base + tail)
                except DownloadHTTPError as exc:
                    last = exc
                    if 400 <= exc.status_code < 500 and refused is None:
                        refused = exc
                except DownloadError as exc:
                    last = exc
                if len(self.bases) > 1:
                    log.info("mirror_failed", base=base, url=tail, error=type(last).__name__)
            if refused is not None:
                # A mirror that answers "no" is as good as the server saying so
                # (the 404 that ends a root-version probe): no point in waiting.
                raise refused
        assert last is not None
        raise last


class DirectoryFetcher(FetcherInterface):
    """Serves URLs under ``base_url`` from a directory: a mirror on a disk or a USB stick.

    Only plain relative paths inside the directory are answered; anything else
    is a 404, so a crafted name cannot read outside the copy.
    """

    def __init__(self, root: Path, base_url: str) -> None:
        self.root = root.resolve()
        self.base_url = base_url.rstrip("/")

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(self.base_url + "/"):
            raise DownloadHTTPError(f"{url} is outside the mirror", 404)
        relative = url[len(self.base_url) + 1 :]
        path = (self.root / unquote(relative)).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            raise DownloadHTTPError(f"{relative} is not in the mirror", 404)
        return iter([path.read_bytes()])


class HttpFetcher(FetcherInterface):
    """GETs through the agent's connection pool (``agent.tls``: HTTPS verified against
    ``trust``); ``timeout_s`` bounds the connection and every gap between bytes. A
    failed TLS handshake raises ``TlsRefused`` naming what the certificate was
    checked against."""

    # Large reads: the bundle download hashes each chunk on another thread, and a
    # handoff per 64 KiB cost more than the overlap saved (bench/verify.py).
    CHUNK_BYTES = 1024 * 1024

    def __init__(self, trust: ServerTrust, *, timeout_s: float, user_agent: str) -> None:
        self._trust = trust
        self._pool = trust.pool()
        self._timeout = urllib3.Timeout(timeout_s)
        self._user_agent = user_agent

    def headers(self, _url: str) -> dict[str, str]:
        return {"User-Agent": self._user_agent}

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            response = self._pool.request(
                "GET", url, headers=self.headers(url), preload_content=False,
                timeout=self._timeout, retries=False,
            )  # fmt: skip
        except urllib3.exceptions.TimeoutError as exc:
            raise SlowRetrievalError(f"GET {url}: {exc}") from exc
        except urllib3.exceptions.SSLError as exc:
            raise TlsRefused(f"GET {url}: {self._trust.refused(exc)}") from exc
        if response.status >= 400:
            response.close()
            raise DownloadHTTPError(f"GET {url}: HTTP {response.status}", response.status)
        return self._chunks(response)

    def _chunks(self, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            # The bytes as sent: a Content-Encoding a mirror adds is not undone, so
            # the hash is checked over what crossed the wire, with no extra buffer.
            yield from response.stream(self.CHUNK_BYTES, decode_content=False)
        except urllib3.exceptions.TimeoutError as exc:
            raise SlowRetrievalError(f"reading {response.geturl()}: {exc}") from exc
        finally:
            response.release_conn()


class SignedFetcher(HttpFetcher):
    """GETs under ``base`` carry the node's request signature (``sign(url)``: the
    headers, signed afresh with a new nonce for each request); any other URL goes
    unsigned, so a mirror never holds a signature it could replay to the server."""

    def __init__(
        self,
        base: str,
        sign: Callable[[str], Mapping[str, str]],
        trust: ServerTrust,
        *,
        timeout_s: float,
        user_agent: str,
    ) -> None:
        super().__init__(trust, timeout_s=timeout_s, user_agent=user_agent)
        self.base = base.rstrip("/") + "/"
        self.sign = sign

    def headers(self, url: str) -> dict[str, str]:
        headers = super().headers(url)
        if url.startswith(self.base):
            headers.update(self.sign(url))
        return headers
