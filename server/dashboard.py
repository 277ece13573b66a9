"""The operator dashboard: server-rendered HTML pages, no front-end build, no script.

Sign-in takes an operator token (viewer or above) only from a POSTed form,
never from a URL (addresses end up in proxy logs and history, and a link that
signs in is login CSRF). The form checks ``Origin`` (or ``Sec-Fetch-Site``)
against the host. Signing in opens a server-side session (server.operators):
the cookie holds its random id, never the token, and is HttpOnly,
SameSite=Strict, and Secure when the request came over TLS, directly or through
a proxy named in ``trusted_proxies``. Only these pages read the cookie: the JSON
API ignores it.

Operators (not viewers, who see no buttons) steer rollouts from the rollout
page: pause, resume, abort, roll back. Each is a POSTed form that must come
from this site (``Origin``, as for sign-in; the cookie is SameSite=Strict too)
and carry the session's form token (``server.operators.form_token``), and runs
the rollout engine's command as the API does, so the rollout's audit events
name the operator and say it came from the dashboard. Withdrawing a bundle is
not here: that is the image repository's targets role, whose keys are offline
(``gpuward repo remove`` on the operator's workstation).

The node list is searched, filtered and paged in the store (keyset paging by
node id), so a page costs the same at 100,000 nodes as at ten. The counts above
it and the newest rollouts read the whole fleet, so they are counted at most
every ``SUMMARY_TTL_S`` seconds per process (and again at once after an action
here). Pages refresh themselves every ``REFRESH_S`` seconds by a meta refresh.
The checkpoint page does not: it shows each pool's observed interruptions and,
for the job its GET form names, the job's MTBF and checkpoint interval, from
``server.checkpoint.fleet_checkpoint_advice`` (what the API answers), which
reads every node's retained reports. The remediation page shows each pool's
remediation board and the newest audit entries (``server.remediation``); it has
no buttons: approving and releasing stay with ``gpuward fleet remediation``.
The overview, the node list and each node's page show the security advisories
open on each node's driver (``server.advisories``), each linked to its NVIDIA
bulletin. Every value shown is HTML-escaped, and a strict Content Security
Policy forbids scripts outright.
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode, urlparse

import structlog
from aiohttp import web

from fleet.advisories import SEVERITIES, AdvisoryExposure, FleetAdvisories
from fleet.attestation_verdict import AttestationVerdict, AttestedDriver
from fleet.gpu_attestation import GpuOutcome
from fleet.human_time import duration, when
from fleet.remediation import NodeRemediation, RemediationAudit, RemediationBoard
from fleet.report import GpuReport, HealthReport
from fleet.rollout import COMMANDS, Progress, Rollout, RolloutError
from fleet.text import unicode_text
from server.advisories import ExposureMemo, served_catalog
from server.checkpoint import BadJob, PoolAdvice, fleet_checkpoint_advice, job
from server.fleetview import (
    NODE_STATES,
    FleetSummary,
    history_json,
    missing_before,
    node_json,
)
from server.http import Route, Services, read_body, services
from server.operator_api import rollout_json
from server.operators import (
    SESSION_S,
    TokenRefused,
    allows,
    check_token,
    end_session,
    form_token,
    form_token_matches,
    open_session,
    session_operator,
)
from server.periodic import Computed
from server.renewal import status_json, statuses
from server.rollout.engine import NotFound
from server.store import (
    FAILING,
    ListedNode,
    NodeQuery,
    NodeStatus,
    OperatorToken,
    RolloutProgress,
    WaveProgress,
    assigned_elsewhere,
)
from server.stragglers import fleet_stragglers

log = structlog.get_logger(__name__)

COOKIE = "gpuward_session"
REFRESH_S = 30
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# The overview shows the newest rollouts only: each is read whole, nodes and all.
RECENT_ROLLOUTS = 10
# Its counts and rollouts (``FleetSummary``) read the whole fleet: at most this often.
SUMMARY_TTL_S = 10
# A rollout page lists at most this many nodes per wave, those still open first.
WAVE_LIST = 500
# The remediation page's audit log: the newest entries, enough for the last incidents.
REMEDIATION_AUDIT = 100
# The checkpoint page's job until the viewer enters one: a large training job
# whose checkpoint takes five minutes.
DEFAULT_JOB = {"gpus": "1024", "checkpoint_cost": "300"}
_MAX_FORM_BYTES = 4096
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: under it browsers send "Origin: null" with the pages' own
    # forms (sign-in, rollout actions), which the origin check must refuse.
    "Referrer-Policy": "same-origin",
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
.card{background:#fff;border-radius:6px;padding:10px 16px;min-width:110px;color:inherit;
text-decoration:none}
.card b{display:block;font-size:24px}
.healthy,.done,.completed{color:#137333}
.unhealthy,.failed,.halted,.missing,.differs{color:#b3261e}
.new,.assigned,.paused,.running{color:#8a5a00}
.bar{display:flex;height:10px;width:240px;background:#e3e5ea;border-radius:3px;overflow:hidden}
.bar span{display:block}.bar .done{background:#34a853}.bar .failed{background:#ea4335}
.bar .assigned{background:#fbbc04}
.awaiting-approval,.acting,.resuming{color:#8a5a00}.drained,.service{color:#b3261e}
.banner{background:#fce8e6;border-left:4px solid #b3261e}
form.filters{display:flex;gap:8px;flex-wrap:wrap;align-items:center;margin:0 0 8px}
.actions{display:flex;gap:8px}.actions form{margin:0}
nav.pages{display:flex;gap:16px;margin:8px 0 0}
"""


def _e(value: object) -> str:
    return html.escape("-" if value is None else str(value), quote=True)


def _node_link(node_id: str) -> str:
    return f'<a href="/nodes/{_e(node_id)}">{_e(node_id)}</a>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], table_id: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _page(
    title: str,
    body: str,
    who: OperatorToken | None = None,
    banner: str = "",
    *,
    refresh: bool = False,
    status: int = 200,
) -> web.Response:
    nav = '<a href="/">Fleet</a>' + (
        '<a href="/checkpoints" id="nav-checkpoints">Checkpoint advice</a>'
        '<a href="/remediation" id="nav-remediation">Remediation</a>'
        f"<span>{_e(who.name)} ({_e(who.role)})</span>"
        '<form method="post" action="/logout"><button>Sign out</button></form>'
        if who
        else ""
    )
    # A meta refresh needs no script, so the CSP stays as strict as it is.
    reload = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if refresh else ""
    doc = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{reload}'
        f"<title>{_e(title)} · gpuward</title><style>{_STYLE}</style></head>"
        f"<body><header><strong>gpuward</strong>{nav}</header><main>"
        f"{banner}<h1>{_e(title)}</h1>{body}</main></body></html>"
    )
    # Whatever a node's stored report holds, the page can be written (fleet.text).
    return web.Response(
        text=unicode_text(doc), content_type="text/html", headers=_HEADERS, status=status
    )


async def _session(request: web.Request) -> tuple[OperatorToken, str]:
    """The operator of this request's session and the session id, or off to sign in."""
    s = services(request)
    session = request.cookies.get(COOKIE, "")
    try:
        return await session_operator(s.store, session, int(s.clock())), session
    except TokenRefused:
        raise web.HTTPSeeOther("/login") from None


async def _signed_in(request: web.Request) -> OperatorToken:
    return (await _session(request))[0]


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


async def _form(request: web.Request) -> dict[str, str]:
    """A small urlencoded form's fields (the last of a repeated name)."""
    body = await read_body(request, _MAX_FORM_BYTES)
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


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


def _bar(wave: WaveProgress) -> str:
    total = max(1, wave.nodes)
    parts = "".join(
        f'<span class="{k}" style="width:{100 * n / total:.1f}%"></span>'
        for k, n in (("done", wave.done), ("failed", wave.failed), ("assigned", wave.assigned))
    )
    return f'<div class="bar">{parts}</div>'


def _rollout_rows(rollouts: Iterable[RolloutProgress]) -> list[list[str]]:
    return [
        [
            f'<a href="/rollouts/{_e(r.id)}">{_e(r.id)}</a>',
            _e(r.pool),
            _e(r.target),
            f'<span class="{_e(r.phase.value)}">{_e(r.phase.value)}</span>',
            " ".join(f"wave {w.wave}: {w.done}/{w.nodes} {_bar(w)}" for w in r.waves),
        ]
        for r in rollouts
    ]


class BadListing(ValueError):
    """A node list's query string names a filter or page it cannot have (answered 400)."""


@dataclass(frozen=True)
class NodeListing:
    """The overview's node list as its query string asks for it: filters, page size,
    and where the page starts (after a node id) or ends (before one)."""

    search: str = ""
    state: str = ""
    pool: str = ""
    attestation: str = ""
    driver: str = ""
    differs: bool = False
    per_page: int = PAGE_SIZE
    after: str = ""
    before: str = ""

    @classmethod
    def parse(cls, query: dict[str, str]) -> NodeListing:
        for name, most in (("q", 128), ("pool", 64), ("attestation", 64), ("driver", 16)):
            if len(query.get(name, "")) > most:
                raise BadListing(f"{name} is longer than {most} characters")
        for name in ("after", "before"):
            if len(query.get(name, "")) > 128:
                raise BadListing(f"{name} is not a node id")
        state = query.get("state", "")
        if state and state not in NODE_STATES:
            raise BadListing(f"state must be one of {', '.join(NODE_STATES)}")
        per_page = query.get("per_page", str(PAGE_SIZE))
        if not per_page.isdigit() or not 1 <= int(per_page) <= MAX_PAGE_SIZE:
            raise BadListing(f"per_page must be between 1 and {MAX_PAGE_SIZE}")
        return cls(
            search=query.get("q", "").strip(),
            state=state,
            pool=query.get("pool", ""),
            attestation=query.get("attestation", ""),
            driver=query.get("driver", ""),
            differs=query.get("differs", "") == "1",
            per_page=int(per_page),
            after=query.get("after", ""),
            before="" if query.get("after") else query.get("before", ""),
        )

    def store_query(self, missing: int) -> NodeQuery:
        return NodeQuery(
            missing_before=missing,
            search=self.search,
            state=self.state or None,
            pool=self.pool or None,
            attestation=self.attestation or None,
            driver=self.driver or None,
            differs=self.differs,
        )

    def link(self, **page: str) -> str:
        """This list's address with the same filters, starting at ``page``."""
        params = {
            "q": self.search,
            "state": self.state,
            "pool": self.pool,
            "attestation": self.attestation,
            "driver": self.driver,
            "differs": "1" if self.differs else "",
            "per_page": "" if self.per_page == PAGE_SIZE else str(self.per_page),
            **page,
        }
        shown = urlencode({k: v for k, v in params.items() if v})
        return _e(f"/?{shown}" if shown else "/")


def _card(card_id: str, count: int, label: str, link: str, kind: str = "") -> str:
    return (
        f'<a class="card {kind}" href="{link}" id="count-{card_id}"><b>{count}</b>{_e(label)}</a>'
    )


def _select(name: str, label: str, chosen: str, options: Iterable[tuple[str, str]]) -> str:
    shown = "".join(
        f'<option value="{_e(value)}"{" selected" if value == chosen else ""}>{_e(text)}</option>'
        for value, text in (("", label), *options)
    )
    return f'<select name="{name}" aria-label="{_e(label)}">{shown}</select>'


async def _summary(s: Services) -> Computed[FleetSummary]:
    async def count(now: float) -> FleetSummary:
        # At once: on PostgreSQL each on a connection of its own.
        counts, pools, rollouts = await asyncio.gather(
            s.store.fleet_counts(missing_before(now, s.config)),
            s.store.pools(),
            s.store.rollout_progress(RECENT_ROLLOUTS),
        )
        return FleetSummary.of(counts, list(pools), rollouts)

    return await s.fleet_summary.get(s.clock, SUMMARY_TTL_S, count)


def _filters(listing: NodeListing, summary: FleetSummary) -> str:
    attestation = [(a, f"enrolled {a}") for a in summary.enrollments]
    attestation.append((FAILING, "last report not attested"))
    drivers = [(d, d) for d in summary.drivers]
    if listing.driver and listing.driver not in summary.drivers:
        drivers.append((listing.driver, listing.driver))
    per_page = (
        ""
        if listing.per_page == PAGE_SIZE
        else f'<input type="hidden" name="per_page" value="{listing.per_page}">'
    )
    return (
        '<form class="filters" method="get" action="/" id="filters">'
        f'<input type="search" name="q" value="{_e(listing.search)}" '
        'placeholder="node id contains" aria-label="node id contains" maxlength="128">'
        + _select("state", "any state", listing.state, ((s, s) for s in NODE_STATES))
        + _select("pool", "any pool", listing.pool, ((p, p) for p in summary.pools))
        + _select("attestation", "any attestation", listing.attestation, attestation)
        + _select("driver", "any driver", listing.driver, drivers)
        + '<label><input type="checkbox" name="differs" value="1"'
        f"{' checked' if listing.differs else ''}> assigned bundle not running</label>"
        f'{per_page}<button>Filter</button> <a href="/">clear</a></form>'
    )


def _bundle(node: ListedNode) -> str:
    running = _e(node.bundle)
    if not node.differs:
        return running
    return f'{running} <span class="differs">(assigned {_e(node.assigned)})</span>'


def _listed_attestation(node: ListedNode) -> str:
    """As ``_attestation`` says it, without the reasons (the node's page has them)."""
    if node.report_attested is None:
        return node.attestation
    verdict = "last report attested" if node.report_attested else "last report not attested"
    return f"{node.attestation}: {verdict}"


def _open_count(exposure: AdvisoryExposure | None) -> str:
    """A node's open advisories in a few words, the worst marked."""
    if exposure is None:
        return _e(None)
    if not exposure.open:
        return "none open"
    kind = "unhealthy" if exposure.worst in ("critical", "high") else "new"
    return f'<span class="{kind}">{len(exposure.open)} open ({_e(exposure.worst)})</span>'


async def _node_list(s: Services, listing: NodeListing, missing: int, memo: ExposureMemo) -> str:
    """One page of the node list, and links to the pages either side."""
    query = listing.store_query(missing)
    more = listing.per_page + 1
    if listing.before:
        found = await s.store.node_page(query, more, before=listing.before)
        earlier, later = len(found) > listing.per_page, True
        shown = found[1:] if earlier else found
    else:
        found = await s.store.node_page(query, more, after=listing.after or None)
        earlier, later = bool(listing.after), len(found) > listing.per_page
        shown = found[: listing.per_page]
    nodes = _table(
        (
            "Node",
            "Pool",
            "State",
            "Driver",
            "Advisories",
            "Bundle",
            "Last update",
            "Attestation",
            "Last seen",
        ),
        (
            [
                _node_link(n.node_id),
                _e(n.pool),
                f'<span class="{_e(n.state)}">{_e(n.state)}</span>',
                _e(n.driver),
                _open_count(memo.of(n.driver)),
                _bundle(n),
                _e(n.update),
                _e(_listed_attestation(n)),
                _e(when(n.last_seen)),
            ]
            for n in shown
        ),
        "nodes",
    )
    links = [f'<a href="{listing.link()}" id="page-first">first page</a>' if earlier else ""]
    if earlier and shown:
        links.append(f'<a href="{listing.link(before=shown[0].node_id)}" id="page-prev">'
                     "previous page</a>")  # fmt: skip
    if later and shown:
        links.append(f'<a href="{listing.link(after=shown[-1].node_id)}" id="page-next">'
                     "next page</a>")  # fmt: skip
    empty = "" if shown else '<p id="no-nodes">No node matches.</p>'
    return f'{nodes}{empty}<nav class="pages">{"".join(links)}</nav>'


async def overview(request: web.Request) -> web.Response:
    who = await _signed_in(request)
    s = services(request)
    try:
        listing = NodeListing.parse(dict(request.query))
    except BadListing as exc:
        return _page("Bad node filter", f"<p>{_e(exc)}; see <a href=\"/\">all nodes</a>.</p>",
                     who, status=400)  # fmt: skip
    counted = await _summary(s)
    summary = counted.value
    cards = (
        "".join(
            _card(state, summary.states[state], state, f"/?state={state}", state)
            for state in NODE_STATES
        )
        + _card("unattested", summary.unattested, "unattested", "/?attestation=unattested")
        + _card("attestation-failing", summary.attestation_failing,
                "last report not attested", f"/?attestation={FAILING}", "failed")
        + _card("differs", summary.differs, "assigned bundle not running", "/?differs=1",
                "differs" if summary.differs else "")
    )  # fmt: skip
    drivers = _table(
        ("Driver", "Nodes"),
        (
            [f'<a href="{NodeListing(driver=d).link()}">{_e(d)}</a>', _e(n)]
            for d, n in summary.drivers.items()
        ),
        "drivers",
    )
    rollouts = _table(
        ("Rollout", "Pool", "Target", "Phase", "Waves"),
        _rollout_rows(summary.rollouts),
        "rollouts",
    )
    memo = ExposureMemo(served_catalog(s.config.repo))
    body = (
        f'<section class="cards">{cards}</section>'
        f'<p id="counted">Counts and rollouts as of {_e(when(int(counted.at)))} (counted at '
        f"most every {SUMMARY_TTL_S} s); the node list is live.</p>"
        f"<section><h2>Rollouts</h2><p>The {RECENT_ROLLOUTS} newest; every one: "
        f"<code>gpuward rollout status</code>.</p>{rollouts}</section>"
        f"<section><h2>Driver versions</h2>{drivers}</section>"
        f"{_fleet_advisories(memo.fleet(summary.drivers))}"
        f'<section id="node-list"><h2>Nodes</h2>{_filters(listing, summary)}'
        f"{await _node_list(s, listing, missing_before(s.clock(), s.config), memo)}</section>"
        f"{await _stragglers(s)}"
    )
    return _page(f"Fleet: {summary.nodes} nodes", body, who, await _renewal_banner(s), refresh=True)


def _bulletin_link(url: str, text: str) -> str:
    # The feed's addresses are https:// only (fleet.advisories); escaped all the same.
    return f'<a href="{_e(url)}" rel="noreferrer">{_e(text)}</a>'


def _fleet_advisories(fleet: FleetAdvisories | None) -> str:
    """Nodes by the worst advisory open on them, and each CVE open somewhere with the
    drivers it is open on (each a link to the nodes running it)."""
    if fleet is None:
        return (
            '<section id="advisories"><h2>Security advisories</h2><p>The catalog carries '
            "no advisory feed: exposure is unknown. Publish a newer catalog with "
            "<code>gpuward repo add-catalog</code>.</p></section>"
        )
    worst = ", ".join(f"{getattr(fleet, s)} {s}" for s in SEVERITIES if getattr(fleet, s))
    head = (
        f'<p id="advisory-counts">{fleet.exposed} of {fleet.nodes} node(s) reporting a driver '
        f"run one with open advisories{f' (worst open: {worst})' if worst else ''}; judged "
        f"against {fleet.bulletins} NVIDIA bulletin(s) in catalog version "
        f"{fleet.catalog_version}.</p>"
    )
    table = _table(
        ("CVE", "Severity", "Score", "Nodes", "Affected", "Branch not listed", "Drivers"),
        (
            [
                _bulletin_link(c.bulletin, c.cve),
                _e(c.severity),
                _e(f"{c.score:.1f}"),
                _e(c.nodes),
                _e(c.affected),
                _e(c.branch_not_listed),
                " ".join(
                    f'<a href="{NodeListing(driver=d).link()}">{_e(d)}</a>' for d in c.drivers
                ),
            ]
            for c in fleet.cves
        ),
        "advisory-cves",
    )
    return f'<section id="advisories"><h2>Security advisories</h2>{head}{table}</section>'


async def _stragglers(s: Services) -> str:
    doc = await fleet_stragglers(s)
    table = _table(
        ("Rank", "Node", "Score", "Why"),
        (
            [
                _e(n["rank"]),
                _node_link(n["node_id"]),
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


def _job_form(query: dict[str, str]) -> str:
    """The checkpoint page's form, holding what the viewer entered (escaped, even
    when refused, so they can correct it)."""
    return (
        '<form class="filters" method="get" action="/checkpoints" id="job">'
        f'<label>GPUs in the job <input name="gpus" value="{_e(query["gpus"])}" '
        'inputmode="numeric" size="10" required></label>'
        '<label>Seconds one checkpoint takes <input name="checkpoint_cost" '
        f'value="{_e(query["checkpoint_cost"])}" inputmode="decimal" size="10" required>'
        "</label><button>Advise</button></form>"
    )


def _advice_row(found: PoolAdvice) -> list[str]:
    advice = found.advice
    pool = (
        "whole fleet"
        if advice.pool is None
        else f'<a href="{NodeListing(pool=advice.pool).link()}">{_e(advice.pool)}</a>'
    )
    per = advice.gpu_hours_per_interruption
    return [
        pool,
        _e(found.nodes),
        _e(advice.interruptions),
        _e(f"{advice.gpu_hours:,.1f}"),
        _e(None if per is None else f"{per:,.1f}"),
        _e(None if advice.job_mtbf_s is None else duration(advice.job_mtbf_s)),
        _e(None if advice.daly_interval_s is None else duration(advice.daly_interval_s)),
        _e(None if advice.young_interval_s is None else duration(advice.young_interval_s)),
        _e(advice.note),
    ]


async def checkpoint_page(request: web.Request) -> web.Response:
    """Each pool's observed interruptions and, for the job the viewer enters, its
    MTBF and checkpoint interval: what ``GET /v1/fleet/checkpoint-advice`` answers."""
    who = await _signed_in(request)
    s = services(request)
    query = {name: request.query.get(name, default) for name, default in DEFAULT_JOB.items()}
    form = _job_form(query)
    try:
        gpus, cost = job(query)
    except BadJob as exc:
        return _page(
            "Checkpoint advice",
            f'<section>{form}<p class="failed" id="bad-job">Cannot advise: {_e(exc)}.</p>'
            "</section>",
            who,
            status=400,
        )
    whole, pools = await fleet_checkpoint_advice(s, gpus, cost)
    rows = _table(
        ("Pool", "Nodes reporting", "Interruptions", "GPU-hours", "GPU-hours per interruption",
         "Job MTBF", "Checkpoint every (Daly)", "Young", "Note"),
        [_advice_row(whole), *(_advice_row(p) for p in pools)],
        "checkpoint-advice",
    )  # fmt: skip
    return _page(
        "Checkpoint advice",
        f"<section>{form}<p>A job of {gpus} GPUs whose checkpoint takes {_e(duration(cost))}. "
        "An interruption is a node-fault XID (fallen off the bus, double-bit ECC, NVLink, "
        "GSP ...) or a node turning failed, in the reports the server retains (its last "
        f"{s.config.report_retention_count} per node, at most "
        f"{s.config.report_retention_days} days old); GPU-hours are each node's GPUs times "
        "the span of those reports. The job stops when any of its GPUs fails: its MTBF is "
        "the GPU-hours per interruption over its GPUs. The same figures: "
        "<code>gpuward fleet checkpoint-advice</code>.</p>"
        f"{rows}</section>",
        who,
        await _renewal_banner(s),
    )


def _remediating_row(pool: str, node: NodeRemediation) -> list[str]:
    return [
        _e(pool),
        _node_link(node.node_id),
        f'<span class="{_e(node.stage.value)}">{_e(node.stage.value)}</span>',
        _e(node.action.value),
        _e(node.symptom.summary),
        _e(when(node.since)),
        _e(None if node.healthy_since is None else when(node.healthy_since)),
        _e(node.attempts),
        _e(node.last_error or None),
    ]


def _audit_row(entry: RemediationAudit) -> list[str]:
    return [
        _e(when(entry.at)),
        _e(entry.pool),
        _node_link(entry.node_id),
        f'<span class="{_e(entry.event.value)}">{_e(entry.event.value)}</span>',
        _e(entry.action.value),
        _e(entry.symptom.summary),
        _e(entry.detail or None),
        _e(entry.by),
    ]


def _remediation_body(boards: Sequence[RemediationBoard], audit: Sequence[RemediationAudit]) -> str:
    remediating = _table(
        ("Pool", "Node", "Stage", "Action", "Symptom", "Since", "Healthy since", "Failed tries",
         "Last error"),
        (_remediating_row(b.pool, n) for b in boards for n in b.nodes),
        "remediating",
    )  # fmt: skip
    held = _table(
        ("Pool", "Node", "Why"),
        ([_e(b.pool), _node_link(node), _e(why)] for b in boards for node, why in b.held.items()),
        "held",
    )
    log = _table(
        ("At", "Pool", "Node", "Event", "Action", "Symptom", "Detail", "By"),
        (_audit_row(e) for e in reversed(audit)),
        "audit",
    )
    pools = ", ".join(
        f'<a href="{NodeListing(pool=b.pool).link()}">{_e(b.pool)}</a>: {len(b.nodes)} under '
        f"remediation, {len(b.held)} held back or notified"
        for b in boards
    )
    return (
        f'<section id="boards"><h2>Under remediation</h2><p>{pools or "No pool remediated yet."}'
        f"</p>{remediating}</section>"
        '<section id="held-back"><h2>Held back or notified</h2><p>Nodes the pool\'s budget or '
        "failure domain holds back (with why), and those whose action is notify (with what "
        f"they show).</p>{held}</section>"
        f'<section id="audit-log"><h2>Audit log</h2><p>The newest {REMEDIATION_AUDIT} '
        "entries, newest first; all of them: <code>gpuward fleet remediation audit</code>.</p>"
        f"{log}</section>"
    )


async def remediation_page(request: web.Request) -> web.Response:
    """Each pool's board and the newest audit entries: what ``GET /v1/remediation``
    and ``GET /v1/remediation/audit`` answer. Approving and releasing are the
    operator's, from ``gpuward fleet remediation``."""
    who = await _signed_in(request)
    s = services(request)
    if s.remediation is None:
        body = (
            '<section><p id="not-configured">Remediation is not configured on this server: '
            "nodes' findings are shown, never acted on. To drain nodes by their findings, add a "
            "<code>[remediation]</code> table to its server.toml.</p></section>"
        )
        return _page("Remediation", body, who, await _renewal_banner(s))
    boards = await s.remediation.boards()
    audit = await s.store.remediation_audit(None, REMEDIATION_AUDIT)
    return _page(
        "Remediation",
        _remediation_body(boards, audit),
        who,
        await _renewal_banner(s),
        refresh=True,
    )


def _attestation(status: NodeStatus) -> str:
    """How the node enrolled and, for an attested node, its last report's verdict."""
    enrolled, verdict = status.node.attestation, status.report_attestation
    if verdict is None:
        return enrolled
    if verdict.passed:
        return f"{enrolled}: last report attested"
    return f"{enrolled}: last report not attested ({'; '.join(verdict.reasons)})"


def _figure(value: int | None, unit: str = "", scale: int = 1) -> str:
    return "-" if value is None else f"{value / scale:g}{unit}"


def _gpus(report: HealthReport | None) -> str:
    """Each GPU of the node's latest report: what the agent says of it and, from an
    agent that reads NVML, its sample's figures and what the rules found."""
    if report is None:
        return '<section id="gpus"><h2>GPUs</h2><p>No report yet.</p></section>'
    sampled: dict[int, GpuReport] = (
        {} if report.health is None else {g.sample.index: g for g in report.health.gpus}
    )
    rows = []
    for gpu in report.gpus:
        found = sampled.get(gpu.index)
        sample = None if found is None else found.sample
        pcie = (
            None
            if sample is None or sample.pcie_gen is None
            else f"gen {sample.pcie_gen} x{_figure(sample.pcie_width)}"
        )
        rows.append(
            [
                _e(gpu.index),
                _e(gpu.name),
                _e(gpu.uuid),
                _e(gpu.driver_version),
                "yes" if gpu.healthy else '<span class="unhealthy">no</span>',
                "<br>".join(_e(p) for p in gpu.problems),
                _e(None if sample is None else _figure(sample.temperature_c, " °C")),
                _e(None if sample is None else _figure(sample.power_mw, " W", 1000)),
                _e(None if sample is None else _figure(sample.sm_clock_mhz, " MHz")),
                _e(None if sample is None else _figure(sample.gpu_util_pct, " %")),
                _e(None if sample is None else _figure(sample.ecc_uncorrected_volatile)),
                _e(pcie),
                "" if found is None else "<br>".join(
                    f"{_e(f.severity)}: {_e(f.message)}" for f in found.findings
                ),
            ]
        )  # fmt: skip
    table = _table(
        ("GPU", "Name", "UUID", "Driver", "Healthy", "Problems", "Temp", "Power", "SM clock",
         "Util", "ECC uncorrected", "PCIe", "Findings"),
        rows,
        "gpu-table",
    )  # fmt: skip
    return f'<section id="gpus"><h2>GPUs (latest report)</h2>{table}</section>'


async def node_page(request: web.Request) -> web.Response:
    who = await _signed_in(request)
    s = services(request)
    node_id = request.match_info["node_id"]
    status = await s.store.node(node_id)
    if status is None:
        return _page("No such node", f"<p>No enrolled node {_e(node_id)}.</p>", who)
    node = node_json(status, s.clock(), s.config)
    running = None if status.report is None else status.report.bundle
    facts = _table(
        ("Pool", "State", "Attestation", "Enrolled", "Last seen", "Assigned", "Running"),
        [
            [
                _e(node["pool"]),
                f'<span class="{node["state"]}">{_e(node["state"])}</span>',
                _e(_attestation(status)),
                _e(when(node["enrolled_at"])),
                _e(when(node["last_seen"])),
                _e(node["assigned"]),
                _e(running),
            ]
        ],
        "facts",
    )
    differs = (
        '<p class="differs" id="differs">Assigned a bundle it does not report running: '
        "updating, or stuck.</p>"
        if assigned_elsewhere(status.assigned, running)
        else ""
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
    exposure = ExposureMemo(served_catalog(s.config.repo)).of(
        None if status.report is None else status.report.driver_version
    )
    return _page(
        f"Node {node_id}",
        f"<section>{facts}{differs}</section>{_gpus(status.report)}"
        f"{_node_advisories(exposure, status.report)}{_settings(status.report)}"
        f"{_boot(status.report_attestation)}"
        f"{_gpu_attestation(status.report_attestation, status.report)}"
        f"<section><h2>Health history</h2>{history}</section>",
        who,
        await _renewal_banner(s),
        refresh=True,
    )


def _node_advisories(exposure: AdvisoryExposure | None, report: HealthReport | None) -> str:
    """The advisories open on the node's driver, each with its bulletin, and what closes
    them all."""
    if exposure is None:
        why = (
            "No driver reported yet."
            if report is None or report.driver_version is None
            else "The catalog carries no advisory feed: exposure is unknown."
        )
        return f'<section id="advisories"><h2>Security advisories</h2><p>{why}</p></section>'
    driver = _e(exposure.driver_version)
    if not exposure.open:
        verdict = f"None open on driver {driver} (catalog version {exposure.catalog_version})."
    elif exposure.fixed_by is not None:
        verdict = (
            f"{len(exposure.open)} open on driver {driver}; {_e(exposure.fixed_by)} is the "
            "smallest release of its branch that closes them all "
            "(<code>gpuward compat plan</code> names the bundle this node can take)."
        )
    else:
        verdict = (
            f"{len(exposure.open)} open on driver {driver}; a bulletin lists no fix in its "
            "branch: move to a branch the bulletins list (<code>gpuward compat plan</code>)."
        )
    table = _table(
        ("CVE", "Severity", "Score", "Status", "Fixed in branch", "Bulletin", "Summary"),
        (
            [
                _e(a.cve),
                f'<span class="{"unhealthy" if a.severity in ("critical", "high") else "new"}">'
                f"{_e(a.severity)}</span>",
                _e(f"{a.score:.1f}"),
                _e(a.status),
                _e(a.fixed),
                _bulletin_link(a.bulletin, a.bulletin_title),
                _e(a.summary),
            ]
            for a in exposure.open
        ),
        "advisory-table",
    )
    return (
        f'<section id="advisories"><h2>Security advisories</h2><p id="advisory-verdict">'
        f"{verdict}</p>{table if exposure.open else ''}</section>"
    )


def _settings(report: HealthReport | None) -> str:
    """The driver settings the running bundle declares, and where the node differs."""
    settings = None if report is None else report.settings
    if settings is None:
        return ""
    declared = settings.declared
    shown = [f"{name}={value}" for name, value in declared.parameters]
    shown += [f"{name}: {value}" for name, value in declared.gpu_modes]
    drift = _table(
        ("Setting", "GPU", "Declared", "Effective", "Pending a reset", "Detail"),
        (
            [
                _e(d.setting),
                _e(d.gpu),
                _e(d.declared),
                '<span class="unhealthy">' + _e(d.effective or "unknown") + "</span>",
                "yes" if d.pending else "no",
                _e(d.detail),
            ]
            for d in settings.drift
        ),
        "settings-drift",
    )
    verdict = (
        f"<p>It runs otherwise, {len(settings.drift)} time(s):</p>{drift}"
        if settings.drift
        else '<p id="settings-as-declared">It runs as declared.</p>'
    )
    return (
        f'<section id="settings"><h2>Driver settings (signed with the bundle)</h2>'
        f"<p>Declared: {_e(', '.join(shown) or 'nothing')}.</p>{verdict}</section>"
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


def _gpu_attestation(verdict: AttestationVerdict | None, report: HealthReport | None) -> str:
    """Each GPU's attestation verdict on the node's last attested report. Details
    quote the evidence (certificate subjects come from the node): escaped."""
    if verdict is None or not verdict.gpus:
        return ""
    sent = [] if report is None else list(report.gpu_evidence)
    kind = {GpuOutcome.PASS: "", GpuOutcome.FAIL: "unhealthy", GpuOutcome.UNKNOWN: "differs"}
    rows = []
    for position, gpu in enumerate(verdict.gpus):
        index = sent[position].index if position < len(sent) else None
        outcome = _e(gpu.verdict.value)
        rows.append(
            [
                _e(index),
                _e(gpu.uuid),
                f'<span class="{kind[gpu.verdict]}">{outcome}</span>' if kind[gpu.verdict]
                else outcome,
                _e(gpu.driver_version),
                _e(gpu.vbios_version),
                _e(", ".join(map(str, gpu.mismatched()))),
                "<br>".join(_e(r) for r in gpu.reasons()),
            ]
        )  # fmt: skip
    table = _table(
        ("GPU", "UUID", "Verdict", "Driver", "VBIOS", "Failing indexes", "Why not pass"),
        rows,
        "gpu-attestation-table",
    )
    return (
        '<section id="gpu-attestation"><h2>GPU attestation (last attested report)</h2>'
        f"{table}<p>Checked offline: SPDM report, device certificates, RIMs and OCSP; "
        "each verdict in full: <code>GET /v1/nodes/{id}</code>, "
        "<code>report_attestation.gpus</code>.</p></section>"
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


def _actions(rollout: Rollout, who: OperatorToken, session: str) -> str:
    """The commands the rollout's phase allows, as forms, for operators only."""
    if not allows(who.role, "operator"):
        return ""
    forms = "".join(
        f'<form method="post" action="/rollouts/{_e(rollout.id)}/{name}">'
        f'<input type="hidden" name="csrf" value="{form_token(session)}">'
        f'<button id="do-{name}">{name}</button></form>'
        for name, (allowed, _) in COMMANDS.items()
        if rollout.phase in allowed
    )
    return f'<div class="actions" id="actions">{forms}</div>' if forms else ""


# Nodes an operator looks at first: the undecided and the failed.
_FIRST = {Progress.FAILED: 0, Progress.ASSIGNED: 1, Progress.PENDING: 2, Progress.DONE: 3}


def _wave_lists(rollout: Rollout) -> str:
    sections = []
    for wave in range(rollout.wave_count):
        members = sorted(rollout.wave_nodes(wave), key=lambda n: (_FIRST[n.progress], n.node_id))
        table = _table(
            ("Node", "Progress", "Assigned", "Detail"),
            (
                [
                    _node_link(n.node_id),
                    f'<span class="{_e(n.progress.value)}">{_e(n.progress.value)}</span>',
                    _e(when(n.assigned_at) if n.assigned_at is not None else None),
                    _e(n.detail or None),
                ]
                for n in members[:WAVE_LIST]
            ),
            f"wave-{wave}-nodes",
        )
        more = (
            f"<p>{len(members) - WAVE_LIST} more not listed (the failed and undecided "
            "are listed first).</p>"
            if len(members) > WAVE_LIST
            else ""
        )
        opened = " open" if wave == rollout.wave or len(members) <= 20 else ""
        sections.append(
            f"<details{opened}><summary>Wave {wave}: {len(members)} nodes</summary>"
            f"{table}{more}</details>"
        )
    return f'<section id="wave-nodes"><h2>Nodes by wave</h2>{"".join(sections)}</section>'


async def rollout_page(request: web.Request) -> web.Response:
    who, session = await _session(request)
    s = services(request)
    store = s.store
    rollout_id = request.match_info["rollout_id"]
    rollout = await store.rollout(rollout_id)
    if rollout is None:
        return _page("No such rollout", f"<p>No rollout {_e(rollout_id)}.</p>", who)
    progress = [
        WaveProgress(w["wave"], w["pending"], w["assigned"], w["done"], w["failed"])
        for w in rollout_json(rollout)["waves"]
    ]
    waves = _table(
        ("Wave", "Nodes", "Pending", "Assigned", "Done", "Failed", "Progress"),
        (
            [
                _e(w.wave), _e(w.nodes), _e(w.pending), _e(w.assigned), _e(w.done),
                _e(w.failed), _bar(w),
            ]
            for w in progress
        ),
        "waves",
    )  # fmt: skip
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
        f"<section>{head}{_actions(rollout, who, session)}{waves}</section>"
        f"{_wave_lists(rollout)}<section><h2>Events</h2>{events}</section>",
        who,
        await _renewal_banner(s),
        refresh=True,
    )


def _refused(status: int, why: str, who: OperatorToken | None = None) -> web.Response:
    return _page("Not done", f'<p id="refused">{_e(why)}</p>', who, status=status)


async def rollout_action(request: web.Request) -> web.StreamResponse:
    """Pause, resume, abort or roll back a rollout from its page, as an operator."""
    if _cross_site(request):
        return _refused(403, "a form from another site cannot steer rollouts")
    who, session = await _session(request)
    if not allows(who.role, "operator"):
        return _refused(403, f"steering rollouts needs the operator role; you are a {who.role}",
                        who)  # fmt: skip
    form = await _form(request)
    if not form_token_matches(session, form.get("csrf", "")):
        return _refused(403, "the form's token is missing or not this session's: reload the "
                        "rollout page and try again", who)  # fmt: skip
    rollout_id, name = request.match_info["rollout_id"], request.match_info["command"]
    by = f"{who.name} ({who.role}) on the dashboard"
    try:
        await services(request).engine.command(rollout_id, name, by)
    except NotFound as exc:
        return _refused(404, str(exc), who)
    except RolloutError as exc:
        return _refused(409, str(exc), who)
    services(request).fleet_summary.forget()  # the overview shows the new phase at once
    log.info("dashboard_rollout_command", audit=True, rollout=rollout_id, command=name, by=by)
    raise web.HTTPSeeOther(f"/rollouts/{quote(rollout_id, safe='')}")


ROUTES = (
    Route("GET", "/", overview, "Dashboard: fleet overview", "viewer", in_openapi=False),
    Route("GET", "/nodes/{node_id}", node_page, "Dashboard: a node", "viewer", in_openapi=False),
    Route(
        "GET",
        "/checkpoints",
        checkpoint_page,
        "Dashboard: checkpoint advice per pool",
        "viewer",
        in_openapi=False,
    ),
    Route(
        "GET",
        "/remediation",
        remediation_page,
        "Dashboard: remediation boards and audit log",
        "viewer",
        in_openapi=False,
    ),
    Route(
        "GET",
        "/rollouts/{rollout_id}",
        rollout_page,
        "Dashboard: a rollout",
        "viewer",
        in_openapi=False,
    ),
    Route(
        "POST",
        "/rollouts/{rollout_id}/{command}",
        rollout_action,
        "Dashboard: pause, resume, abort or roll back a rollout",
        "operator",
        in_openapi=False,
    ),
    Route("GET", "/login", login_form, "Dashboard: sign in", "public", in_openapi=False),
    Route("POST", "/login", login, "Dashboard: sign in", "public", in_openapi=False),
    Route("POST", "/logout", logout, "Dashboard: sign out", "public", in_openapi=False),
)
