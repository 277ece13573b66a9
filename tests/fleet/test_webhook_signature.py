"""fleet.webhook_signature: what a receiver accepts, and everything it must refuse."""

from __future__ import annotations

import ast
import hashlib
import hmac
from pathlib import Path

import pytest

import fleet.webhook_signature as module
from fleet.webhook import EVENT_TYPES, matches, type_problem
from fleet.webhook_signature import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureRefused,
    sign,
    verify,
)

SECRET = b"whsec-0123456789abcdef"
BODY = b'{"id":"evt_1","type":"node.missing"}'
NOW = 1_800_000_000


def test_a_genuine_delivery_is_accepted_and_the_signature_is_the_documented_hmac() -> None:
    headers = sign([SECRET], "evt_1", NOW, BODY)
    digest = hmac.new(SECRET, b"evt_1.1800000000." + BODY, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == f"v1={digest}"
    assert verify(SECRET, headers, BODY, NOW + 299) == "evt_1"
    # Header names in any case, as some frameworks hand them over.
    lowered = {name.lower(): value for name, value in headers.items()}
    assert verify(SECRET, lowered, BODY, NOW - 299) == "evt_1"


def test_during_a_rotation_either_secret_verifies() -> None:
    headers = sign([b"new-secret-0123456789", SECRET], "evt_1", NOW, BODY)
    assert len(headers[SIGNATURE_HEADER].split()) == 2
    assert verify(SECRET, headers, BODY, NOW) == "evt_1"
    assert verify(b"new-secret-0123456789", headers, BODY, NOW) == "evt_1"


def _refusal(headers: dict[str, str], body: bytes = BODY, **options: object) -> str:
    with pytest.raises(SignatureRefused) as refused:
        verify(SECRET, headers, body, options.pop("now", NOW), **options)  # type: ignore[arg-type]
    return str(refused.value)


def test_what_a_receiver_refuses() -> None:
    good = sign([SECRET], "evt_1", NOW, BODY)
    assert "no signature matches" in _refusal(sign([b"another-secret-0123"], "evt_1", NOW, BODY))
    assert "no signature matches" in _refusal(good, BODY + b" ")
    assert "no signature matches" in _refusal({**good, ID_HEADER: "evt_2"})
    assert "no signature matches" in _refusal({**good, TIMESTAMP_HEADER: str(NOW + 1)})
    assert "stale" in _refusal(good, now=NOW + 301)
    assert "stale" in _refusal(good, now=NOW - 301)
    assert "stale" not in _refusal(
        {**good, SIGNATURE_HEADER: "v1=00"}, now=NOW + 1000, tolerance_s=2000
    )
    assert "replayed" in _refusal(good, seen={"evt_1"})
    assert "unsigned" in _refusal({ID_HEADER: "evt_1", TIMESTAMP_HEADER: str(NOW)})
    assert "not seconds" in _refusal({**good, TIMESTAMP_HEADER: "-5"})
    assert "no signature matches" in _refusal({**good, SIGNATURE_HEADER: "v1=ünïcode"})


def test_the_module_is_standalone_for_receivers_to_copy() -> None:
    tree = ast.parse(Path(module.__file__).read_text())
    imported = {
        (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= {"__future__", "hashlib", "hmac", "collections"}


def test_event_filters() -> None:
    assert matches((), "node.missing")
    assert matches(("rollout.*",), "rollout.halted")
    assert not matches(("rollout.*",), "node.missing")
    assert matches(("node.missing",), "node.missing")
    assert not matches(("node.missing",), "node.missing.resolved")
    assert matches(("node.missing.*",), "node.missing.resolved")
    assert all(type_problem(t) is None for t in EVENT_TYPES)
    assert type_problem("metadata.*") is None
    assert "names no event" in (type_problem("rollout.stuck") or "")
    assert "names no event" in (type_problem("nothing.*") or "")
