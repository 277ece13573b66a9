"""Signing gpuward's webhook deliveries, and checking them at the receiver.

This module imports nothing but the standard library, so a receiver may copy
the file as it is, or ``from fleet.webhook_signature import verify``.

Every delivery is a POST whose body is the event's JSON, with three headers:

``Gpuward-Webhook-Id``
    the event's id: the same on every retry of one event (the idempotency key).
``Gpuward-Webhook-Timestamp``
    when this attempt was signed, in seconds since the epoch (new on each retry).
``Gpuward-Webhook-Signature``
    ``v1=`` and the hex HMAC-SHA256, keyed with the shared secret, of
    ``ID.TIMESTAMP.BODY`` (the id, a dot, the timestamp, a dot, the body bytes).
    During a secret rotation several such entries are sent, space-separated:
    one per secret the server holds; any one matching suffices.

Signing the timestamp and checking it against a tolerance bounds how long a
captured delivery can be replayed; refusing an id already handled (``seen``)
closes that window too. Signing the id binds it to the body, so a receiver may
deduplicate by the header alone. This is the scheme of the Standard Webhooks
specification and of Stripe's, with gpuward's header names.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Container, Iterable, Mapping

ID_HEADER = "Gpuward-Webhook-Id"
TIMESTAMP_HEADER = "Gpuward-Webhook-Timestamp"
SIGNATURE_HEADER = "Gpuward-Webhook-Signature"
SCHEME = "v1"
# How far a delivery's timestamp may be from the receiver's clock.
DEFAULT_TOLERANCE_S = 300


class SignatureRefused(ValueError):
    """The delivery is not one to act on: unsigned, badly signed, stale or replayed."""


def signature(secret: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1=HEX`` entry: HMAC-SHA256 of ``ID.TIMESTAMP.BODY`` under ``secret``."""
    content = f"{event_id}.{timestamp}.".encode() + body
    return f"{SCHEME}={hmac.new(secret, content, hashlib.sha256).hexdigest()}"


def sign(secrets: Iterable[bytes], event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of a delivery of ``body``, signed with each of ``secrets``."""
    return {
        ID_HEADER: event_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: " ".join(signature(s, event_id, timestamp, body) for s in secrets),
    }


def verify(
    secret: bytes,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    seen: Container[str] = (),
) -> str:
    """The event id of a delivery that is genuine, fresh and new; else ``SignatureRefused``.

    ``headers`` as received (names in any case); ``body`` the raw bytes, before
    any JSON parsing; ``now`` the receiver's clock in seconds; ``seen`` the ids
    already handled. Add the id to ``seen`` once the event is handled: a failed
    delivery is retried with the same id, and must then still be accepted.
    """
    by_name = {name.lower(): value for name, value in headers.items()}
    event_id = by_name.get(ID_HEADER.lower(), "")
    stamp = by_name.get(TIMESTAMP_HEADER.lower(), "")
    offered = by_name.get(SIGNATURE_HEADER.lower(), "").split()
    if not event_id or not stamp or not offered:
        raise SignatureRefused(
            f"unsigned: {ID_HEADER}, {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are all required"
        )
    if not stamp.isdigit() or len(stamp) > 12:
        raise SignatureRefused(f"{TIMESTAMP_HEADER} {stamp[:20]!r} is not seconds since the epoch")
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance_s:
        raise SignatureRefused(
            f"stale: signed at {timestamp}, {abs(now - timestamp):.0f}s from this clock "
            f"(tolerance {tolerance_s:.0f}s); a replay, or a clock to correct"
        )
    expected = signature(secret, event_id, timestamp, body).encode()
    # As bytes: compare_digest refuses str holding anything but ASCII.
    if not any(hmac.compare_digest(expected, entry.encode(errors="replace")) for entry in offered):
        raise SignatureRefused("no signature matches this secret and body")
    if event_id in seen:
        raise SignatureRefused(f"replayed: event {event_id} was already handled")
    return event_id
