"""The operator dashboard: server-rendered HTML pages, no front-end build, no script.

Sign-in takes an operator token (viewer or above) only from a POSTed form,
never from a URL (addresses end up in proxy logs and history, and a link that
signs in is login CSRF). The form checks ``Origin`` (or ``Sec-Fetch-Site``)
against the host. Signing in opens a server-side session (server.operators):
the cookie holds its random id, never the token, and is HttpOnly,
SameSite=Strict, and Secure when the request came over TLS, directly or through
a proxy named in ``trusted_proxies``. Only these pages read the cookie: the JSON
API ignores it, and every dashboard page is read-only, so a cross-site request
can neither act nor read. Every value shown is HTML-escaped, and a strict
Content Security Policy forbids scripts outright.
"""

from __future__ import annotations

import html
import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlparse

from aiohttp import web

from fleet.attestation_verdict import AttestationVerdict, AttestedDriver
from fleet.rollout import Rollout
from fleet.text import unicode_text
from server.fleetview import NODE_STATES, fleet_json, history_json, node_json
from server.http import Route, Services, services
from server.operator_api import rollout_json
from server.operators import (
    SESSION_S,
    TokenRefused,
    check_token,
    end_session,
    open_session,
    session_operator,
    when,
)
from server.renewal import status_json, statuses
from server.store import NodeStatus, OperatorToken
from server.stragglers import fleet_stragglers

COOKIE = "gpuward_session"
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# overflow-wrap:anywhere: a word longer than the page (a node's reason without
# spaces) wraps instead of widening it.
_STYLE = """
body{font:14px system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8;
overflow-wrap:anywhere}
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:center}
header a{color:#fff;text-decoration:none}header form{margin-left:auto}
main{padding:16px 20px}section{background:#fff;border-radius:6px;padding:12px 16px;margin:0 0 16px}
table{border-collapse:collapse;width:100%}
td,th{text-align:left;padding:4px 8px;border-bottom:1px solid #e3e5ea}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border-radius:6px;padding:10px 16px;min-width:110px}
.card b{display:block;font-size:24px}
.healthy,.done,.completed{color:#137333}.unhealthy,.failed,.halted,.missing{color:#b3261e}
.new,.assigned,.paused,.running{color:#8a5a00}
.bar{display:flex;height:10px;width:240px;background:#e3e5ea;border-radius:3px;overflow:hidden}
.bar span{display:block}.bar .done{background:#34a853}.bar .failed{background:#ea4335}
.bar .assigned{background:#fbbc04}
.banner{background:#fce8e6;border-left:4px solid #b3261e}
"""


def _e(value: object) -> str:
    return html.escape("-" if value is None else str(value), quote=True)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], table_id: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _page(
    title: str, body: str, who: OperatorToken | None = None, banner: str = ""
) -> web.Response:
    nav = '<a href="/">Fleet</a>' + (
        f"<span>{_e(who.name)} ({_e(who.role)})</span>"
        '<form method="post" action="/logout"><button>Sign out</button></form>'
        if who
        else ""
    )
    doc = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)} · gpuward</title><style>{_STYLE}</style></head>"
        f"<body><header><strong>gpuward</strong>{nav}</header><main>"
        f"{banner}<h1>{_e(title)}</h1>{body}</main></body></html>"
    )
    # Whatever a node's stored report holds, the page can be written (fleet.text).
    return web.Response(text=unicode_text(doc), content_type="text/html", headers=_HEADERS)


async def _signed_in(request: web.Request) -> OperatorToken:
    """The operator of this request's session, or off to sign in."""
    s = services(request)
    try:
        return await session_operator(s.store, request.cookies.get(COOKIE, ""), int(s.clock()))
    except TokenRefused:
        raise web.HTTPSeeOther("/login") from None


def _via_trusted_proxy(request: web.Request) -> bool:
    """Whether the peer is a reverse proxy the operator named (``trusted_proxies``),
    whose ``X-Forwarded-*`` headers are then believed; anyone else's are ignored."""
    try:
        peer = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return peer in {ipaddress.ip_address(a) for a in services(request).config.trusted_proxies}


def over_tls(request: web.Request) -> bool:
    """Whether the browser reached us over TLS, directly or through a trusted proxy."""
    if request.secure:
        return True
    forwarded = request.headers.get("X-Forwarded-Proto", "").strip().lower()
    return forwarded == "https" and _via_trusted_proxy(request)


def _cross_site(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is not None:
        hosts = {request.host}
        if _via_trusted_proxy(request) and "X-Forwarded-Host" in request.headers:
            hosts.add(request.headers["X-Forwarded-Host"].strip())
        return urlparse(origin).netloc not in hosts
    # No Origin (an older browser): Fetch Metadata, where sent, says the same.
    return request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none")


async def _renewal_banner(s: Services) -> str:
    """A warning on every page while re-signing fails: timestamps lapse within a
    day, and then every node refuses every update."""
    doc = status_json(await statuses(s.store), s.clock(), s.config)["renewal"]
    items = []
    for signer in doc["signers"]:
        where = f"{_e(signer['host'])} ({_e(signer['repo'])})"
        expiry = signer["nearest_expiry"]
        lapses = (
            ""
            if expiry is None
            else f" The served {_e(expiry['role'])} expires {_e(when(expiry['expires_at']))}; "
            "nodes refuse it after that."
        )
        if signer["overdue"]:
            items.append(
                f"<li>{where}: no renewal since {_e(when(signer['at']))}; its next try was "
                f"due {_e(when(signer['next_try_at']))}. Is its server running?{lapses}</li>"
            )
        elif signer["outcome"] == "failed":
            problems = "; ".join(f"{_e(p['role'])}: {_e(p['reason'])}" for p in signer["problems"])
            items.append(
                f"<li>{where}: {signer['failures']} failed attempt(s) in a row, last at "
                f"{_e(when(signer['at']))}: {problems}. Next try "
                f"{_e(when(signer['next_try_at']))}.{lapses}</li>"
            )
    if not items:
        return ""
    return (
        '<section class="banner" id="renewal-failing"><strong>Re-signing online metadata '
        "is failing.</strong> Fix the cause; the server retries by itself (its log: "
        f"metadata_renewal_failed).<ul>{''.join(items)}</ul></section>"
    )


async def login_form(request: web.Request) -> web.Response:
    failed = (
        '<p class="failed">That token was not accepted.</p>' if "failed" in request.query else ""
    )
    return _page(
        "Sign in",
        f'<section>{failed}<form method="post" action="/login">'
        '<label>Operator token <input type="password" name="token" autocomplete="off" '
        'size="60" required></label> <button>Sign in</button></form>'
        "<p>Create one with <code>gpuward server token create --role viewer</code>.</p>"
        "</section>",
    )


async def login(request: web.Request) -> web.StreamResponse:
    if _cross_site(request):
        raise web.HTTPForbidden(reason="sign-in from another site")
    form = await request.post()
    s = services(request)
    now = int(s.clock())
    try:
        token = await check_token(s.store, str(form.get("token", "")), now)
    except TokenRefused:
        raise web.HTTPSeeOther("/login?failed=1") from None
    response = web.HTTPSeeOther("/")
    response.set_cookie(
        COOKIE,
        await open_session(s.store, token, now),
        max_age=SESSION_S,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=over_tls(request),
    )
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    await end_session(services(request).store, request.cookies.get(COOKIE, ""))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


def _bar(wave: dict[str, Any]) -> str:
    total = max(1, wave["nodes"])
    parts = "".join(
        f'<span class="{k}" style="width:{100 * wave[k] / total:.1f}%"></span>'
        for k in ("done", "failed", "assigned")
    )
    return f'<div class="bar">{parts}</div>'


def _rollout_rows(rollouts: list[Rollout]) -> list[list[str]]:
    rows = []
    for rollout in rollouts:
        doc = rollout_json(rollout)
        waves = " ".join(
            f"wave {w['wave']}: {w['done']}/{w['nodes']} {_bar(w)}" for w in doc["waves"]
        )
        rows.append(
            [
                f'<a href="/rollouts/{_e(rollout.id)}">{_e(rollout.id)}</a>',
                _e(rollout.pool),
                _e(rollout.target),
                f'<span class="{_e(rollout.phase.value)}">{_e(rollout.phase.value)}</span>',
                waves,
            ]
        )
    return rows


async def overview(request: web.Request) -> web.Response:
    who = await _signed_in(request)
    s = services(request)
    statuses = await s.store.fleet()
    doc = fleet_json(statuses, s.clock(), s.config)
    summary = doc["summary"]
    cards = "".join(
        f'<div class="card {state}" id="count-{state}"><b>{summary["states"][state]}</b>'
        f"{state}</div>"
        for state in NODE_STATES
    ) + (f'<div class="card" id="count-unattested"><b>{summary["unattested"]}</b>unattested</div>')
    drivers = _table(
        ("Driver", "Nodes"),
        ([_e(d), _e(n)] for d, n in summary["drivers"].items()),
        "drivers",
    )
    nodes = _table(
        ("Node", "Pool", "State", "Driver", "Last update", "Attestation", "Last seen"),
        (
            [
                f'<a href="/nodes/{_e(n["node_id"])}">{_e(n["node_id"])}</a>',
                _e(n["pool"]),
                f'<span class="{n["state"]}">{_e(n["state"])}</span>',
                _e((n["report"] or {}).get("driver_version")),
                _e((n["report"] or {}).get("update")),
                _e(_attestation(status)),
                _e(when(n["last_seen"])),
            ]
            for status, n in zip(statuses, doc["nodes"], strict=True)
        ),
        "nodes",
    )
    rollouts = _table(
        ("Rollout", "Pool", "Target", "Phase", "Waves"),
        _rollout_rows(await s.store.rollouts()),
        "rollouts",
    )
    body = (
        f'<section class="cards">{cards}</section>'
        f"<section><h2>Rollouts</h2>{rollouts}</section>"
        f"<section><h2>Driver versions</h2>{drivers}</section>"
        f"<section><h2>Nodes</h2>{nodes}</section>"
        f"{await _stragglers(s)}"
    )
    return _page(f"Fleet: {summary['nodes']} nodes", body, who, await _renewal_banner(s))


async def _stragglers(s: Services) -> str:
    doc = await fleet_stragglers(s)
    table = _table(
        ("Rank", "Node", "Score", "Why"),
        (
            [
                _e(n["rank"]),
                f'<a href="/nodes/{_e(n["node_id"])}">{_e(n["node_id"])}</a>',
                _e(n["score"]),
                "<br>".join(_e(g["message"]) for g in n["stragglers"]),
            ]
            for n in doc["nodes"]
        ),
        "stragglers-table",
    )
    return (
        '<section id="stragglers"><h2>Stragglers</h2>'
        f"<p>GPUs persistently slower than their peers of the same model, over each node's "
        f"last {doc['window_reports']} reports; {doc['nodes_compared']} nodes compared.</p>"
        f"{table}</section>"
    )


def _attestation(status: NodeStatus) -> str:
    """How the node enrolled and, for an attested node, its last report's verdict."""
    enrolled, verdict = status.node.attestation, status.report_attestation
    if verdict is None:
        return enrolled
    if verdict.passed:
        return f"{enrolled}: last report attested"
    return f"{enrolled}: last report not attested ({'; '.join(verdict.reasons)})"


async def node_page(request: web.Request) -> web.Response:
    who = await _signed_in(request)
    s = services(request)
    node_id = request.match_info["node_id"]
    status = await s.store.node(node_id)
    if status is None:
        return _page("No such node", f"<p>No enrolled node {_e(node_id)}.</p>", who)
    node = node_json(status, s.clock(), s.config)
    facts = _table(
        ("Pool", "State", "Attestation", "Enrolled", "Last seen", "Assigned"),
        [
            [
                _e(node["pool"]),
                f'<span class="{node["state"]}">{_e(node["state"])}</span>',
                _e(_attestation(status)),
                _e(when(node["enrolled_at"])),
                _e(when(node["last_seen"])),
                _e(node["assigned"]),
            ]
        ],
        "facts",
    )
    history = _table(
        ("Received", "Update", "Driver", "Bundle", "Healthy", "GPUs", "Reason"),
        (
            [
                _e(when(h["received_at"])),
                _e(h["report"]["update"]),
                _e(h["report"]["driver_version"]),
                _e(h["report"]["bundle"]),
                "yes"
                if all(g["healthy"] for g in h["report"]["gpus"]) and h["report"]["gpus"]
                else '<span class="unhealthy">no</span>',
                _e(len(h["report"]["gpus"])),
                _e(h["report"]["reason"]),
            ]
            for h in history_json(await s.store.history(node_id, 50))
        ),
        "history",
    )
    return _page(
        f"Node {node_id}",
        f"<section>{facts}</section>{_boot(status.report_attestation)}"
        f"<section><h2>Health history</h2>{history}</section>",
        who,
        await _renewal_banner(s),
    )


def _boot(verdict: AttestationVerdict | None) -> str:
    """The measured-boot verdict on the node's last attested report, and why it failed."""
    if verdict is None:
        return ""
    judged = verdict.policy or "none: the event log is checked against the quote, not judged"
    result = "pass" if verdict.passed else '<span class="unhealthy">fail</span>'
    reasons = "".join(f"<li>{_e(r)}</li>" for r in verdict.reasons)
    return (
        f'<section id="boot"><h2>Measured boot</h2><p>Policy: {_e(judged)}. '
        f"Last attested report: {result}.</p>{f'<ul>{reasons}</ul>' if reasons else ''}"
        f"{_attested_driver(verdict.driver)}</section>"
    )


def _attested_driver(driver: AttestedDriver | None) -> str:
    """The bundle the driver PCR proves active: the applier's measurement, replayed."""
    if driver is None:
        shown = "none measured yet"
    else:
        shown = (
            f"{_e(driver.target_path)} (driver {_e(driver.driver_version)}, sha256 "
            f"{_e(driver.sha256[:12])}, PCR {_e(driver.pcr)}), measured "
            f"{_e(when(driver.measured_at))}"
        )
    return f'<p id="attested-driver">Attested active driver bundle: {shown}</p>'


async def rollout_page(request: web.Request) -> web.Response:
    who = await _signed_in(request)
    s = services(request)
    store = s.store
    rollout_id = request.match_info["rollout_id"]
    rollout = await store.rollout(rollout_id)
    if rollout is None:
        return _page("No such rollout", f"<p>No rollout {_e(rollout_id)}.</p>", who)
    doc = rollout_json(rollout)
    waves = _table(
        ("Wave", "Nodes", "Pending", "Assigned", "Done", "Failed", "Progress"),
        (
            [
                _e(w["wave"]),
                _e(w["nodes"]),
                _e(w["pending"]),
                _e(w["assigned"]),
                _e(w["done"]),
                _e(w["failed"]),
                _bar(w),
            ]
            for w in doc["waves"]
        ),
        "waves",
    )
    events = _table(
        ("At", "Event"),
        ([_e(when(e.at)), _e(e.event)] for e in await store.rollout_events(rollout_id)),
        "events",
    )
    head = (
        f'<p>{_e(rollout.target)} to pool {_e(rollout.pool)}: <span class="'
        f'{_e(rollout.phase.value)}" id="phase">{_e(rollout.phase.value)}</span> '
        f"{_e(rollout.reason)}</p>"
    )
    return _page(
        f"Rollout {rollout_id}",
        f"<section>{head}{waves}</section><section><h2>Events</h2>{events}</section>",
        who,
        await _renewal_banner(s),
    )


ROUTES = (
    Route("GET", "/", overview, "Dashboard: fleet overview", "viewer", in_openapi=False),
    Route("GET", "/nodes/{node_id}", node_page, "Dashboard: a node", "viewer", in_openapi=False),
    Route(
        "GET",
        "/rollouts/{rollout_id}",
        rollout_page,
        "Dashboard: a rollout",
        "viewer",
        in_openapi=False,
    ),
    Route("GET", "/login", login_form, "Dashboard: sign in", "public", in_openapi=False),
    Route("POST", "/login", login, "Dashboard: sign in", "public", in_openapi=False),
    Route("POST", "/logout", logout, "Dashboard: sign out", "public", in_openapi=False),
)
