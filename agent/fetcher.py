"""Fetching from the server or, when it fails, from mirrors: all of them untrusted.

python-tuf dropped mirror support from ngclient; failover belongs in a
``FetcherInterface``. URLs under the primary base are tried on each mirror base
in order. When every one fails, a definite answer from any of them (HTTP 4xx,
e.g. the 404 that ends a root-version probe) is final; network failures and
5xx are retried in rounds with jittered exponential backoff. Nothing here is trusted:
whatever any mirror serves is verified by ngclient afterwards, and ngclient
cuts off any response longer than the length it expects.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote

import structlog
from tuf.api.exceptions import DownloadError, DownloadHTTPError
from tuf.ngclient import FetcherInterface

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
