"""Operational events the server tells other systems about, by signed webhook.

Some things need a person soon, and the server is the first to know: a rollout
halted itself, a node missed its rollout's progress deadline, a node went
silent, a node's attestation fails, metadata is about to lapse. Each becomes a
``Notice`` where it is found (the rollout state machine, the server's watch on
the fleet), then a ``WebhookEvent`` with an id that stays the same through
every retry, so a receiver acts on each event once. How a delivery is signed
and checked is ``fleet.webhook_signature``.

A condition that holds for a while (a node missing, attestation failing,
metadata expiring) is told once when it begins, and once more, as
``<type>.resolved``, when it ends.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fleet.wire import Document, Field, Integer, Opaque, Text, Wire

ROLLOUT_HALTED = "rollout.halted"  # failures passed the wave's max_failures
ROLLOUT_DEADLINE_MISSED = "rollout.deadline_missed"  # a node failed by its progress deadline
NODE_MISSING = "node.missing"
NODE_ATTESTATION_FAILING = "node.attestation_failing"
METADATA_EXPIRING = "metadata.expiring"
NODE_REMEDIATION = "node.remediation"  # a remediation decision or outcome (its audit entry)
# A node showed a checkpoint signed with the log's key that this log does not extend.
LOG_SPLIT_VIEW = "log.split_view"
# Conditions (told when they begin and, with this suffix, when they end).
CONDITIONS = (NODE_MISSING, NODE_ATTESTATION_FAILING, METADATA_EXPIRING)
RESOLVED = ".resolved"
EVENT_TYPES = frozenset(
    {
        ROLLOUT_HALTED,
        ROLLOUT_DEADLINE_MISSED,
        NODE_REMEDIATION,
        LOG_SPLIT_VIEW,
        *CONDITIONS,
        *(c + RESOLVED for c in CONDITIONS),
    }
)
EVENT_ID = re.compile(r"evt_[0-9a-f]{32}")
MAX_DETAILS = 32


@dataclass(frozen=True)
class Notice:
    """Something that happened, before it is an event: what, about whom, and the facts."""

    type: str
    subject: str  # "rollout/ID", "node/ID" or "metadata/ROLE"
    details: Mapping[str, Any]


@dataclass(frozen=True)
class WebhookEvent(Wire):
    """One operational event as a webhook receiver gets it (the body of a delivery)."""

    id: str  # the idempotency key: every retry of the event carries the same
    type: str
    time: int  # when it happened (server clock, seconds since the epoch)
    subject: str
    details: Mapping[str, Any]

    WIRE = Document(
        Field(
            "id",
            Text(max_len=36, pattern=EVENT_ID),
            description="the idempotency key: every retry of this event carries the same",
        ),
        Field("type", Text(choices=EVENT_TYPES)),
        Field("time", Integer(), description="when it happened, seconds since the epoch"),
        Field("subject", Text(max_len=256), description="rollout/ID, node/ID or metadata/ROLE"),
        Field("details", Opaque(MAX_DETAILS, "the facts of the event; their keys depend on type")),
        version=1,
        where="webhook event",
    )

    @classmethod
    def of(cls, notice: Notice, event_id: str, time: int) -> WebhookEvent:
        return cls(event_id, notice.type, time, notice.subject, dict(notice.details))

    def body(self) -> bytes:
        """The delivery's body: the bytes that are signed, the same on every retry."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()


def new_event_id() -> str:
    """A fresh event id: random, so replicas finding events at once never share one."""
    return f"evt_{secrets.token_hex(16)}"


def type_problem(pattern: str) -> str | None:
    """What is wrong with an events filter entry (a type, or ``prefix.*``), if anything."""
    if pattern.endswith(".*"):
        prefix = pattern[:-1]
        if any(t.startswith(prefix) for t in EVENT_TYPES):
            return None
    elif pattern in EVENT_TYPES:
        return None
    return f"{pattern!r} names no event; use one of {', '.join(sorted(EVENT_TYPES))} or PREFIX.*"


def matches(patterns: Iterable[str], event_type: str) -> bool:
    """Whether a filter (types, or ``prefix.*``) takes ``event_type``; empty takes all."""
    patterns = tuple(patterns)
    return not patterns or any(
        event_type.startswith(p[:-1]) if p.endswith(".*") else event_type == p for p in patterns
    )
