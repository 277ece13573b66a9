"""Mirror failover: order, retries with backoff, and no retry on definite answers."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf.api.exceptions import DownloadError, DownloadHTTPError
from tuf.ngclient import FetcherInterface

from agent.fetcher import MirrorFetcher, SignedFetcher
from agent.tls import ServerTrust
from fleet.nodeauth import HEADER_SIGNATURE
from gpuward.node import run_once
from server.lifecycle import BackgroundServer
from tests.conftest import Site


class Scripted(FetcherInterface):
    """Answers per base URL from a script: bytes, an HTTP status, or a network failure."""

    def __init__(self, answers: dict[str, object]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.calls.append(url)
        answer = self.answers[url.split("/x")[0]]
        if isinstance(answer, int):
            raise DownloadHTTPError("scripted", answer)
        if answer is None:
            raise DownloadError("connection refused")
        assert isinstance(answer, bytes)
        return iter([answer])


def _fetcher(answers: dict[str, object]) -> tuple[MirrorFetcher, Scripted, list[float]]:
    inner = Scripted(answers)
    sleeps: list[float] = []
    fetcher = MirrorFetcher(list(answers), inner, rounds=3, backoff_s=1.0, sleep=sleeps.append)
    return fetcher, inner, sleeps


def test_primary_answers() -> None:
    fetcher, inner, sleeps = _fetcher({"http://a": b"ok", "http://b": b"mirror"})
    assert fetcher.download_bytes("http://a/x", 10) == b"ok"
    assert inner.calls == ["http://a/x"] and sleeps == []


def test_failover_to_a_mirror_without_waiting() -> None:
    fetcher, inner, sleeps = _fetcher({"http://a": None, "http://b": b"mirror"})
    assert fetcher.download_bytes("http://a/x", 10) == b"mirror"
    assert inner.calls == ["http://a/x", "http://b/x"] and sleeps == []


def test_everyone_down_retries_in_rounds_with_backoff() -> None:
    fetcher, inner, sleeps = _fetcher({"http://a": None, "http://b": 503})
    with pytest.raises(DownloadError):
        fetcher.fetch("http://a/x")
    assert len(inner.calls) == 6
    assert len(sleeps) == 2 and 0.5 <= sleeps[0] <= 1.5 and 1.0 <= sleeps[1] <= 3.0


def test_not_found_everywhere_is_final_at_once() -> None:
    """The 404 ending ngclient's root-version probe must not cost retries."""
    fetcher, inner, sleeps = _fetcher({"http://a": 404, "http://b": 404})
    with pytest.raises(DownloadHTTPError) as raised:
        fetcher.fetch("http://a/x")
    assert raised.value.status_code == 404
    assert len(inner.calls) == 2 and sleeps == []


def test_agent_updates_through_a_mirror_when_its_server_is_down(site: Site, tmp_path: Path) -> None:
    site.publish("580.65.06")
    mirror_config = dataclasses.replace(site.server.config, db=str(tmp_path / "m.db"), port=0)
    config = site.agent()  # enrolled while the server is up
    with BackgroundServer(mirror_config) as mirror:
        site.server.stop()  # the primary is gone
        config = type(config)(**{**config.__dict__, "mirrors": (mirror.url,), "fetch_timeout_s": 5})
        result = run_once(config)
    assert result.outcome.update == "committed"
    assert not result.report_sent  # reports go to the server only, never to mirrors


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every GET with ``status`` and records the request headers."""

    status = 200
    seen: list[dict[str, str]]

    def do_GET(self) -> None:
        self.seen.append(dict(self.headers))
        self.send_response(self.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@contextlib.contextmanager
def _recording(status: int) -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    handler = type("Handler", (_Recorder,), {"status": status, "seen": seen})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}", seen
        finally:
            server.shutdown()
            thread.join()


def test_director_requests_are_signed_to_the_server_and_never_to_a_mirror() -> None:
    """A mirror must not get a signature it could replay to the server."""
    with _recording(503) as (server, to_server), _recording(200) as (mirror, to_mirror):
        signer = SignedFetcher(
            f"{server}/v1/director/n1",
            lambda url: {HEADER_SIGNATURE: f"signed {url}"},
            ServerTrust(None),
            timeout_s=5,
            user_agent="test",
        )
        fetcher = MirrorFetcher([server, mirror], signer, rounds=1)
        assert b"".join(fetcher.fetch(f"{server}/v1/director/n1/metadata/1.root.json")) == b"{}"
        assert b"".join(fetcher.fetch(f"{server}/v1/repo/metadata/1.root.json")) == b"{}"
    signed = [h.get(HEADER_SIGNATURE) for h in to_server]
    assert signed == [f"signed {server}/v1/director/n1/metadata/1.root.json", None]
    assert len(to_mirror) == 2
    assert all(HEADER_SIGNATURE not in h for h in to_mirror)
