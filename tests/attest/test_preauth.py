"""The requests answered before their caller is known cannot be turned into a
denial of service: attacks on ``POST /v1/enroll/tpm/begin`` and ``/v1/enroll``.

No TPM work without the enrollment token (a missing token is refused before the
body is even read), a small body limit, a token bucket per source address (a
second address is not held back by the first), and a cap on pending enrollment
challenges that leaves enrolled nodes' report challenges alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from fleet.nodeauth import ENROLLMENT_TOKEN_HEADER
from node.attest.attestor import Attestor
from server.node_api import MAX_TPM_BEGIN_BYTES
from tests.attest.conftest import LOCAL_CA, Tpm
from tests.attest.test_over_http import ask_challenge, enroll_agent
from tests.conftest import Site, make_site
from tests.simnode import ENROLLMENT_TOKEN, FakeClock, SimNode

BEGIN = "/v1/enroll/tpm/begin"
TTL_S = 120.0


@pytest.fixture
def clock() -> FakeClock:
    # Real time, so that swtpm's EK certificates are valid; moved by hand.
    return FakeClock(time.time())


def _site(template: Path, base: Path, clock: FakeClock, **settings: Any) -> Iterator[Site]:
    base.mkdir()
    yield from make_site(
        template, base, str(base / "server.db"), clock, ek_ca=(LOCAL_CA,), **settings
    )


def _begin(
    site: Site,
    body: bytes,
    token: str | None = ENROLLMENT_TOKEN,
    source: str = "127.0.0.1",
) -> urllib3.BaseHTTPResponse:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers[ENROLLMENT_TOKEN_HEADER] = token
    with urllib3.PoolManager(source_address=(source, 0)) as http:
        return http.request("POST", site.url + BEGIN, body=body, headers=headers, retries=False)


def _error(response: urllib3.BaseHTTPResponse) -> str:
    return str(json.loads(response.data)["error"])


def _request(attestor: Attestor, node_id: str) -> bytes:
    return json.dumps(attestor.enrollment_request(node_id).to_dict()).encode()


def test_no_tpm_work_without_the_enrollment_token(
    _template_repo: Path, tmp_path: Path, tpm: Tpm, clock: FakeClock
) -> None:
    for site in _site(_template_repo, tmp_path / "site", clock):
        with Attestor(tpm.config(), tmp_path / "node") as attestor:
            genuine = _request(attestor, "n1")
        for token in (None, "", "wrong-token-0123456789", ENROLLMENT_TOKEN + "x"):
            refused = _begin(site, genuine, token)
            assert refused.status == 401, refused.data
            assert ENROLLMENT_TOKEN_HEADER in _error(refused)
        # Garbage and oversized bodies get the same answer: the token is checked
        # before the body is read or parsed.
        assert _begin(site, b"{not json", None).status == 401
        assert _begin(site, b"x" * (MAX_TPM_BEGIN_BYTES * 40), None).status == 401
        # The honest request with the token is answered.
        assert _begin(site, genuine).status == 200


def test_an_oversized_begin_body_is_refused_unread(
    _template_repo: Path, tmp_path: Path, clock: FakeClock
) -> None:
    for site in _site(_template_repo, tmp_path / "site", clock):
        big = _begin(site, b"{" + b" " * MAX_TPM_BEGIN_BYTES + b"}")
        assert big.status == 413, big.data
        assert _begin(site, b"{}").status == 400


def test_unauthenticated_requests_are_limited_per_address(
    _template_repo: Path, tmp_path: Path, clock: FakeClock
) -> None:
    for site in _site(_template_repo, tmp_path / "site", clock, preauth_burst=4):
        # Token guessing, and plain enrollments with ever new node ids, share the
        # address's bucket.
        for i in range(2):
            assert _begin(site, b"{}", f"guess-{i}").status == 401
        for i in range(2):
            assert SimNode(site.url, f"lab-{i}").enroll().status == 201
        limited = _begin(site, b"{}", "guess-2")
        assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
        assert SimNode(site.url, "lab-9").enroll().status == 429
        # Another address has a bucket of its own.
        assert _begin(site, b"{}", source="127.0.0.2").status == 400
        # Time refills the bucket (2 per second by default).
        clock.advance(1)
        assert _begin(site, b"{}").status == 400


def test_pending_enrollments_are_capped_and_report_challenges_are_not(
    _template_repo: Path, tmp_path: Path, clock: FakeClock, start_tpm: Callable[..., Tpm]
) -> None:
    for site in _site(
        _template_repo, tmp_path / "site", clock, max_pending_challenges=4, challenge_ttl_s=TTL_S
    ):
        # An enrolled node (one begin: an enrollment and a session-key challenge,
        # both redeemed by its enrollment).
        _config, node = enroll_agent(site, start_tpm(), tmp_path / "node")
        # A flood of begins for made-up node ids (with the token: a leaked one).
        with Attestor(start_tpm("b").config(), tmp_path / "flood") as attestor:
            for i in range(4):
                assert _begin(site, _request(attestor, f"x{i}")).status == 200
            full = _begin(site, _request(attestor, "x4"))
            assert full.status == 503, full.data
            assert "enroll challenges are pending" in _error(full)
            assert int(full.headers["Retry-After"]) >= 1
            # The enrolled node still gets its report challenges.
            for _ in range(4):
                ask_challenge(node)
            # Once the flood's challenges expire, enrollment has room again.
            clock.advance(TTL_S)
            assert _begin(site, _request(attestor, "x5")).status == 200
