"""Operator bearer tokens and dashboard sessions: roles, issuing, expiry, revocation.

A token is 256 random bits, shown once when issued; the store keeps only its
SHA-256, so a leaked database yields no usable token. Lookup is by that hash
(an index lookup that reveals nothing about the token's bytes), and the stored
hash is compared again in constant time. Roles are ordered: each may do what
the ones before it may. A token expires (90 days unless its issuer says
otherwise) and can be revoked; it is named in lists and revocations by a short
random id, never by its hash.

The dashboard never holds the token itself: signing in opens a session, a
random id of its own stored hashed, which expires, ends on sign-out, and ends
with its token's revocation.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from fleet.errors import GpuwardError
from fleet.human_time import when
from server.store import OperatorToken, Store

ROLES = ("viewer", "operator", "admin")
PREFIX = "gwt_"
DEFAULT_EXPIRY_S = 90 * 86_400
SESSION_S = 8 * 3600
# A token's last use is written at most this often: a list shows which tokens
# are idle without a write for every request.
USED_EVERY_S = 300
_TOKEN = re.compile(r"gwt_[A-Za-z0-9_-]{43}")
_SESSION = re.compile(r"[A-Za-z0-9_-]{43}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}")
_DURATION = re.compile(r"([1-9][0-9]{0,5})([mhdw])")
_UNIT_S = {"m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


class TokenRefused(GpuwardError):
    """The credential presented is unknown, expired or revoked (answered 401)."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


def parse_expiry(text: str) -> int | None:
    """Seconds a token lives (``90d``, ``12h``, ``30m``, ``2w``), or None for ``never``."""
    if text == "never":
        return None
    match = _DURATION.fullmatch(text)
    if match is None:
        raise GpuwardError(
            f"--expires-in {text!r}: give a number and a unit, e.g. 90d, 12h, 30m or 2w "
            "(or 'never', which a token should rarely be)"
        )
    return int(match.group(1)) * _UNIT_S[match.group(2)]


async def issue_token(
    store: Store, role: str, name: str, now: int, expires_at: int | None = None
) -> str:
    if role not in ROLES:
        raise GpuwardError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    if not _NAME.fullmatch(name):
        raise GpuwardError("token name: up to 64 letters, digits, spaces and ._@-")
    token = PREFIX + secrets.token_urlsafe(32)
    stored = OperatorToken(token_hash(token), name, role, now, secrets.token_hex(6), expires_at)
    await store.add_token(stored)
    return token


async def _usable(store: Store, found: OperatorToken, now: int) -> OperatorToken:
    if found.revoked_at is not None:
        raise TokenRefused(
            f"operator token {found.name!r} ({found.token_id}) was revoked at "
            f"{when(found.revoked_at)}; ask an admin for a new one"
        )
    if found.expires_at is not None and found.expires_at <= now:
        raise TokenRefused(
            f"operator token {found.name!r} ({found.token_id}) expired at "
            f"{when(found.expires_at)}; create a new one with 'gpuward server token create'"
        )
    if found.last_used_at is None or now - found.last_used_at >= USED_EVERY_S:
        await store.token_used(found.token_hash, now)
    return found


async def check_token(store: Store, token: str, now: int) -> OperatorToken:
    """The live stored token ``token`` names; ``TokenRefused`` for anything else."""
    if not _TOKEN.fullmatch(token):
        raise TokenRefused("no operator token given, or not one this server issued")
    digest = token_hash(token)
    found = await store.token(digest)
    if found is None or not hmac.compare_digest(found.token_hash, digest):
        raise TokenRefused("unknown operator token (create one with 'gpuward server token create')")
    return await _usable(store, found, now)


async def revoke_token(store: Store, name_or_id: str, now: int) -> OperatorToken:
    """Revoke the token with this id, or the one live token with this name."""
    tokens = await store.tokens()
    matches = [t for t in tokens if t.token_id == name_or_id] or [
        t for t in tokens if t.name == name_or_id and t.revoked_at is None
    ]
    if not matches:
        raise GpuwardError(
            f"no token has the id or name {name_or_id!r}; see 'gpuward server token list'"
        )
    if len(matches) > 1:
        ids = ", ".join(t.token_id for t in matches)
        raise GpuwardError(
            f"{len(matches)} live tokens are named {name_or_id!r} ({ids}); revoke one by its id"
        )
    await store.revoke_token(matches[0].token_id, now)
    return matches[0]


async def open_session(store: Store, token: OperatorToken, now: int) -> str:
    """A new dashboard session for ``token``: its id, for the cookie, and only there."""
    session = secrets.token_urlsafe(32)
    expires_at = now + SESSION_S
    if token.expires_at is not None:
        expires_at = min(expires_at, token.expires_at)
    await store.add_session(token_hash(session), token.token_hash, expires_at, now)
    return session


async def session_operator(store: Store, session: str, now: int) -> OperatorToken:
    """The live token behind a live session; ``TokenRefused`` for anything else."""
    found = None
    if _SESSION.fullmatch(session):
        found = await store.session(token_hash(session), now)
    if found is None:
        raise TokenRefused("no session, or it ended; sign in again")
    return await _usable(store, found, now)


def form_token(session: str) -> str:
    """The token the dashboard's forms carry for ``session`` (CSRF protection).

    An HMAC keyed by the session id, which only the HttpOnly cookie holds: a page
    on another site can neither read it nor work it out, and the page that shows
    it does not give the session away. Nothing is stored; it ends with its session.
    """
    return hmac.new(session.encode(), b"gpuward dashboard form", hashlib.sha256).hexdigest()


def form_token_matches(session: str, sent: str) -> bool:
    return bool(_SESSION.fullmatch(session)) and hmac.compare_digest(
        form_token(session).encode(), sent.encode()
    )


async def end_session(store: Store, session: str) -> None:
    if _SESSION.fullmatch(session):
        await store.end_session(token_hash(session))
