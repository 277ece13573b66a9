"""Operator credentials under attack: expired and revoked tokens, tokens in URLs,
cross-site sign-in, and the session cookie's attributes, on a real server on
loopback (both store backends), with the real ``gpuward server token`` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from server.operators import SESSION_S, issue_token
from tests.conftest import Fleet, Site, make_site
from tests.simnode import dashboard_sign_in, operator_get

NO_REDIRECT = urllib3.PoolManager(
    retries=urllib3.Retry(total=0, redirect=0, raise_on_redirect=False)
)


def gpuward(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpuward", "server", "token", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def page(url: str, cookie: str, path: str = "/") -> urllib3.BaseHTTPResponse:
    return NO_REDIRECT.request("GET", url + path, headers={"Cookie": cookie})


def sign_in_post(url: str, token: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
    return NO_REDIRECT.request_encode_body(
        "POST", f"{url}/login", fields={"token": token}, encode_multipart=False, headers=headers
    )


def test_an_expired_token_is_refused_by_the_api_and_the_sign_in(fleet: Fleet) -> None:
    now = int(fleet.clock())
    token = fleet.site.server.call(
        lambda svc: issue_token(svc.store, "viewer", "short", now, now + 3600)
    )
    assert operator_get(fleet.url, "/v1/fleet", token).status == 200
    cookie = dashboard_sign_in(fleet.url, token)
    assert page(fleet.url, cookie).status == 200

    fleet.clock.advance(3600)
    refused = operator_get(fleet.url, "/v1/fleet", token)
    assert refused.status == 401
    assert "operator token 'short'" in json.loads(refused.data)["error"]
    assert "expired at" in json.loads(refused.data)["error"]
    # The session it opened ends with it, and it cannot open another.
    assert page(fleet.url, cookie).headers["Location"] == "/login"
    again = sign_in_post(fleet.url, token, {"Origin": fleet.url})
    assert again.headers["Location"] == "/login?failed=1" and "Set-Cookie" not in again.headers


def test_a_revoked_tokens_sessions_end_at_once(fleet: Fleet, db_url: str) -> None:
    made = gpuward("create", "--role", "operator", "--name", "leaver", "--db", db_url, "--json")
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["token"]
    keeper = fleet.token("viewer")
    cookie = dashboard_sign_in(fleet.url, token)
    kept = dashboard_sign_in(fleet.url, keeper)
    assert page(fleet.url, cookie).status == 200
    (listed,) = [
        t for t in json.loads(gpuward("list", "--db", db_url, "--json").stdout)["tokens"]
        if t["name"] == "leaver"
    ]  # fmt: skip
    assert listed["last_used_at"] == int(fleet.clock()) and listed["state"] == "live"

    revoked = gpuward("revoke", "leaver", "--db", db_url)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in revoked.stdout and "leaver" in revoked.stdout

    assert page(fleet.url, cookie).headers["Location"] == "/login"
    refused = operator_get(fleet.url, "/v1/fleet", token)
    assert refused.status == 401 and "was revoked" in json.loads(refused.data)["error"]
    # Everyone else is unaffected.
    assert page(fleet.url, kept).status == 200
    assert operator_get(fleet.url, "/v1/fleet", keeper).status == 200
    again = gpuward("revoke", "leaver", "--db", db_url)
    assert again.returncode != 0
    assert again.stderr.strip().startswith("gpuward: error: no token has the id or name")


def test_token_create_expires_and_list_never_shows_the_secret(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    made = gpuward("create", "--role", "viewer", "--name", "ci", "--db", db, "--json")
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    lifetime = (
        doc["expires_at"]
        - json.loads(gpuward("list", "--db", db, "--json").stdout)["tokens"][0]["created_at"]
    )
    assert lifetime == 90 * 86_400  # the default

    short = gpuward("create", "--role", "admin", "--name", "ci", "--expires-in", "12h", "--db", db)
    assert short.returncode == 0 and "expires 20" in short.stderr
    forever = gpuward("create", "--role", "viewer", "--name", "bot", "--expires-in", "never",
                      "--db", db)  # fmt: skip
    assert forever.returncode == 0 and "never expires" in forever.stderr
    bad = gpuward("create", "--role", "viewer", "--expires-in", "forever", "--db", db)
    assert bad.returncode != 0
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("gpuward: error: --expires-in")

    listing = gpuward("list", "--db", db)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split("\n")[0].split() == [
        "ID", "NAME", "ROLE", "STATE", "CREATED", "EXPIRES", "LAST", "USED"
    ]  # fmt: skip
    assert doc["token"] not in listing.stdout and doc["token"][4:20] not in listing.stdout
    rows = json.loads(gpuward("list", "--db", db, "--json").stdout)["tokens"]
    by_role = {(r["name"], r["role"]): r for r in rows}
    assert sorted(by_role) == [("bot", "viewer"), ("ci", "admin"), ("ci", "viewer")]
    assert {r["state"] for r in rows} == {"live"} and by_role["bot", "viewer"]["expires_at"] is None
    assert {r["last_used_at"] for r in rows} == {None}
    text = json.dumps(rows)
    assert "token_hash" not in text and doc["token"] not in text
    # Two live tokens share the name: revoking by name would be a guess.
    ambiguous = gpuward("revoke", "ci", "--db", db)
    assert ambiguous.returncode != 0 and "revoke one by its id" in ambiguous.stderr
    assert gpuward("revoke", by_role["ci", "viewer"]["id"], "--db", db).returncode == 0
    listed = json.loads(gpuward("list", "--db", db, "--json").stdout)["tokens"]
    states = {(r["name"], r["role"]): r["state"] for r in listed}
    assert states == {
        ("ci", "viewer"): "revoked",
        ("ci", "admin"): "live",
        ("bot", "viewer"): "live",
    }


def test_no_token_in_a_url_signs_in(fleet: Fleet) -> None:
    viewer = fleet.token("viewer")
    for path in (f"/?token={viewer}", f"/nodes/gpu-1?token={viewer}", f"/login?token={viewer}"):
        link = NO_REDIRECT.request("GET", fleet.url + path)
        assert "Set-Cookie" not in link.headers, path
        assert link.status in (200, 303) and link.headers.get("Location", "/login") == "/login"
    # Nor a POST whose token is in the query rather than the form.
    posted = NO_REDIRECT.request(
        "POST", f"{fleet.url}/login?token={viewer}", headers={"Origin": fleet.url}
    )
    assert posted.headers["Location"] == "/login?failed=1" and "Set-Cookie" not in posted.headers


def test_a_cross_site_sign_in_is_refused(fleet: Fleet) -> None:
    viewer = fleet.token("viewer")
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},  # a sandboxed frame or a file:// page
        {"Sec-Fetch-Site": "cross-site"},  # a browser that sent no Origin
        {"Sec-Fetch-Site": "same-site"},  # a sibling host is another site too
    ):
        refused = sign_in_post(fleet.url, viewer, headers)
        assert refused.status == 403, headers
        assert "Set-Cookie" not in refused.headers


def test_the_session_cookie_is_a_server_side_session(fleet: Fleet) -> None:
    viewer = fleet.token("viewer")
    ok = sign_in_post(fleet.url, viewer, {"Origin": fleet.url})
    cookie = ok.headers["Set-Cookie"]
    name, _, value = cookie.split(";")[0].partition("=")
    assert name == "gpuward_session" and value and viewer not in cookie and value not in viewer
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "SameSite=Strict" in cookie and "secure" not in attributes  # plain HTTP, no proxy
    session = f"{name}={value}"
    assert page(fleet.url, session).status == 200
    # A made-up session, and the token itself as a cookie, are not sessions.
    assert page(fleet.url, "gpuward_session=" + "A" * 43).headers["Location"] == "/login"
    assert page(fleet.url, f"gpuward_session={viewer}").headers["Location"] == "/login"

    # Signing out ends it on the server: the old cookie, replayed, is refused.
    out = NO_REDIRECT.request("POST", f"{fleet.url}/logout", headers={"Cookie": session})
    assert out.status == 303
    assert page(fleet.url, session).headers["Location"] == "/login"

    # A session expires by itself.
    later = dashboard_sign_in(fleet.url, viewer)
    fleet.clock.advance(SESSION_S)
    assert page(fleet.url, later).headers["Location"] == "/login"


@pytest.fixture
def proxied(_template_repo: Path, tmp_path: Path) -> Iterator[Site]:
    """A server behind a TLS-terminating proxy on 127.0.0.1 (its operator says so)."""
    base = tmp_path / "proxied"
    base.mkdir()
    yield from make_site(_template_repo, base, str(base / "s.db"), trusted_proxies=("127.0.0.1",))


@pytest.fixture
def other_proxy(_template_repo: Path, tmp_path: Path) -> Iterator[Site]:
    """A server that trusts only a proxy elsewhere: loopback peers are untrusted."""
    base = tmp_path / "other"
    base.mkdir()
    yield from make_site(_template_repo, base, str(base / "s.db"), trusted_proxies=("192.0.2.7",))


def secure(site: Site, headers: dict[str, str]) -> bool:
    response = sign_in_post(site.url, site.server.issue_token("viewer"), headers)
    assert response.status == 303
    attributes = [a.strip().lower() for a in response.headers["Set-Cookie"].split(";")]
    return "secure" in attributes


def test_secure_behind_the_trusted_proxy_only(proxied: Site, other_proxy: Site) -> None:
    https = {"X-Forwarded-Proto": "https"}
    assert secure(proxied, {"Origin": proxied.url, **https})
    assert not secure(proxied, {"Origin": proxied.url})
    assert not secure(proxied, {"Origin": proxied.url, "X-Forwarded-Proto": "http"})
    # From a peer the operator did not name, the header is ignored.
    assert not secure(other_proxy, {"Origin": other_proxy.url, **https})


def test_behind_the_trusted_proxy_its_public_origin_signs_in(
    proxied: Site, other_proxy: Site
) -> None:
    public = {"Origin": "https://gpuward.example", "X-Forwarded-Host": "gpuward.example",
              "X-Forwarded-Proto": "https"}  # fmt: skip
    assert secure(proxied, public)
    # Any peer can send the header: from one the operator did not name, it is ignored.
    refused = sign_in_post(other_proxy.url, other_proxy.server.issue_token("viewer"), public)
    assert refused.status == 403 and "Set-Cookie" not in refused.headers
