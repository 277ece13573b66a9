"""Operator bearer tokens: roles, issuing, and checking.

A token is 256 random bits, shown once when issued; the store keeps only its
SHA-256, so a leaked database yields no usable token. Lookup is by that hash
(an index lookup that reveals nothing about the token's bytes), and the stored
hash is compared again in constant time. Roles are ordered: each may do what
the ones before it may.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from fleet.errors import GpuwardError
from server.store import OperatorToken, Store

ROLES = ("viewer", "operator", "admin")
PREFIX = "gwt_"
_TOKEN = re.compile(r"gwt_[A-Za-z0-9_-]{43}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


async def issue_token(store: Store, role: str, name: str, now: int) -> str:
    if role not in ROLES:
        raise GpuwardError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    if not _NAME.fullmatch(name):
        raise GpuwardError("token name: up to 64 letters, digits, spaces and ._@-")
    token = PREFIX + secrets.token_urlsafe(32)
    await store.add_token(OperatorToken(token_hash(token), name, role, now))
    return token


async def check_token(store: Store, token: str) -> OperatorToken | None:
    """The stored token ``token`` names, or None for anything else."""
    if not _TOKEN.fullmatch(token):
        return None
    digest = token_hash(token)
    found = await store.token(digest)
    if found is None or not hmac.compare_digest(found.token_hash, digest):
        return None
    return found
