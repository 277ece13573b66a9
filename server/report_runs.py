"""Making a compliance report: one document, each file asked for, signed and logged;
kept, with its signatures, when asked.

A report is one moment's document (``fleet.compliance``) rendered to every format
from the same pass (``server.report_render.render_all``), so its JSON, HTML, PDF
and evidence CSV agree, and a fleet of 100,000 is read and judged once, not once
per format. Each file issued is a transparency log entry (its SHA-256, format,
key and the log size it was made under): the audit history of every report an
auditor may be shown. A kept report (``POST /v1/reports/...`` or the schedule)
is stored with its files and signatures, oldest forgotten beyond
``reports_kept``, and is what the next report's trend is measured against.

Scheduled reports (``report_schedule``: daily or weekly, by UTC day and ISO week)
are made by the process with the background duties; with several replicas the
store's slot claim lets one of them make each.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from fleet.compliance import NodeFacts, PreviousReport, report_document
from fleet.errors import GpuwardError
from fleet.kept_reports import SCHEDULED_BY
from fleet.schema import canonical_json
from fleet.tlog import EntryKind, LogEntry, details
from server.advisories import served_catalog
from server.config import REPORT_SCHEDULES
from server.every import every
from server.http import Services
from server.report_facts import fleet_facts
from server.report_render import CONTENT_TYPES, file_name, render_all
from server.store import KeptFile, KeptReport, Store

log = structlog.get_logger(__name__)

# How often the duties process looks for a new day or week to report on.
SCHEDULE_CHECK_S = 300.0
# Kept reports of a scope read to find a node's previous one.
PREVIOUS_SEARCHED = 1000


def report_id(scope: str, generated_at: int) -> str:
    stamp = datetime.fromtimestamp(generated_at, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{scope}-{stamp}-{secrets.token_hex(4)}"


async def previous_report(store: Store, scope: str, subject: str) -> PreviousReport | None:
    """The newest kept report of ``subject``, which a new report's trend compares with."""
    for kept in await store.kept_reports(scope, PREVIOUS_SEARCHED):
        if kept.subject != subject:
            continue
        try:
            summary = json.loads(kept.summary)
        except ValueError:
            log.warning("kept_report_unreadable", report_id=kept.report_id)
            return None
        return PreviousReport(kept.report_id, kept.generated_at, summary)
    return None


@dataclass(frozen=True)
class MadeReport:
    """A report rendered and signed, not yet issued: its record and files, by format,
    and the log size its checkpoint named."""

    record: KeptReport
    bodies: Mapping[str, bytes]
    log_size: int


async def make_report(
    svc: Services,
    scope: str,
    found: Sequence[NodeFacts],
    *,
    made_by: str,
    formats: Sequence[str] = tuple(CONTENT_TYPES),
    names: Mapping[str, str] | None = None,
) -> MadeReport:
    """The report of ``found`` (the fleet, or one node) in ``formats``, each saved as
    ``names`` gives (by default ``file_name``), each signed; ``issue`` hands it out."""
    now = int(svc.clock())
    subject = "fleet" if scope == "fleet" else found[0].node_id
    signer = svc.report_signer
    # A fleet of 100,000 takes a while to judge and render: off the loop that serves nodes.
    catalog = await asyncio.to_thread(served_catalog, svc.config.repo)
    log_size, checkpoint = await svc.tlog.checkpoint()
    previous = await previous_report(svc.store, scope, subject)
    document = await asyncio.to_thread(
        report_document, scope, found, catalog, now, signer.key_id, signer.algorithm,
        svc.config.report_interval_s, checkpoint, previous,
    )  # fmt: skip
    named = {fmt: (names or {}).get(fmt) or file_name(document, fmt) for fmt in formats}
    bodies = await asyncio.to_thread(render_all, document, named)
    files = []
    for fmt, body in bodies.items():
        # Hashing a file of hundreds of MiB, and a key in a PKCS#11 token (milliseconds,
        # not microseconds a signature): off the loop too.
        digest, signature = await asyncio.to_thread(_digest_and_sign, svc, body)
        files.append(KeptFile(fmt, named[fmt], digest, len(body), signature))
    record = KeptReport(
        report_id(scope, now), scope, subject, now, made_by, signer.key_id,
        canonical_json(document["summary"]).decode(), tuple(files),
    )  # fmt: skip
    return MadeReport(record, bodies, log_size)


async def issue(svc: Services, made: MadeReport, *, keep: bool, slot: str | None = None) -> bool:
    """Log each of ``made``'s files (kept first, when ``keep``, so an entry naming a
    kept report names one that exists), and forget kept reports beyond the limit.
    With ``slot``, the report is kept and issued only if no other was kept for that
    slot (``Store.keep_report``); whether it was issued."""
    record = made.record
    if keep and not await svc.store.keep_report(record, made.bodies, slot):
        return False
    entries = [
        LogEntry(
            EntryKind.COMPLIANCE_REPORT,
            record.generated_at,
            record.subject,
            f.sha256,
            _detail(f, record, made.log_size, keep),
        )
        for f in record.files
    ]
    await svc.tlog.append(entries)
    if keep:
        forgotten = await svc.store.forget_reports(record.scope, svc.config.reports_kept)
        log.info(
            "compliance_report_kept", report_id=record.report_id, scope=record.scope,
            subject=record.subject, made_by=record.made_by,
            formats=[f.fmt for f in record.files], forgotten=len(forgotten),
        )  # fmt: skip
    return True


def _digest_and_sign(svc: Services, body: bytes) -> tuple[str, bytes]:
    return hashlib.sha256(body).hexdigest(), svc.report_signer.sign(body)


def _detail(file: KeptFile, record: KeptReport, log_size: int, kept: bool) -> dict[str, str]:
    """A file's log entry details: its format, key and the log size it was made under,
    and the kept report it belongs to."""
    found = {"format": file.fmt, "key_id": record.key_id, "under": str(log_size)}
    return details(**found, **({"report": record.report_id} if kept else {}))


def schedule_slot(schedule: str, now: float) -> str | None:
    """The period a scheduled report covers at ``now``: its UTC day or ISO week."""
    day = datetime.fromtimestamp(now, UTC).date()
    if schedule == "daily":
        return f"daily:{day.isoformat()}"
    if schedule == "weekly":
        year, week, _ = day.isocalendar()
        return f"weekly:{year}-W{week:02}"
    if schedule == "off":
        return None
    raise GpuwardError(f"report_schedule {schedule!r}: choose {', '.join(REPORT_SCHEDULES)}")


async def scheduled_report(svc: Services) -> KeptReport | None:
    """The fleet report of this day or week, unless one was kept already.

    The slot is claimed as the report is kept, in one transaction: replicas making it
    at once keep one, and a server stopped or failing half-way makes it again at its
    next check."""
    now = svc.clock()
    schedule = svc.config.report_schedule
    slot = schedule_slot(schedule, now)
    if slot is None:
        return None
    for kept in await svc.store.kept_reports("fleet", PREVIOUS_SEARCHED):
        if kept.made_by == SCHEDULED_BY and schedule_slot(schedule, kept.generated_at) == slot:
            return None
    found = await fleet_facts(svc.store, now, svc.config)
    made = await make_report(svc, "fleet", found, made_by=SCHEDULED_BY)
    return made.record if await issue(svc, made, keep=True, slot=slot) else None


async def run_schedule(svc: Services, stop: asyncio.Event) -> None:
    """Make each scheduled report as its day or week begins, until ``stop``."""

    async def check() -> None:
        await scheduled_report(svc)

    await every(SCHEDULE_CHECK_S, stop, check, "scheduled_report_failed")
