"""Kept compliance reports as operators list them: each report's files, by name,
digest and size, under the report key that signed them.

A report kept on request or on the schedule (``server.report_runs``) is the
record an auditor asks for later ("the report of 1 December"): it is listed
here, fetched file by file with its signature, and its files' digests are in
the transparency log (``fleet.tlog``, kind ``compliance-report``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fleet.wire import Document, Field, Integer, ListOf, Ref, Text, Wire

REPORT_FORMATS = ("json", "html", "pdf", "csv")
REPORT_SCOPES = ("fleet", "node")
MAX_LISTED = 1000
# ``made_by`` of the reports the server makes on its schedule.
SCHEDULED_BY = "schedule"
# Report ids are the server's own: scope, time and a random suffix, nothing a caller chose.
REPORT_ID = re.compile(r"(fleet|node)-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}")


@dataclass(frozen=True)
class KeptFileInfo(Wire):
    """One file of a kept report; its signature comes with it when fetched."""

    format: str
    name: str
    sha256: str
    size: int

    WIRE = Document(
        Field("format", Text(choices=frozenset(REPORT_FORMATS))),
        Field("name", Text(max_len=255), description="the file name it was signed under"),
        Field("sha256", Text(max_len=64), description="hex, of the file's bytes"),
        Field("size", Integer(minimum=0), description="bytes"),
        where="kept report file",
    )


@dataclass(frozen=True)
class KeptReportInfo(Wire):
    """A kept compliance report: what it covers, when and by whom it was made."""

    report_id: str
    scope: str
    subject: str  # "fleet", or the node id
    generated_at: int
    made_by: str  # the operator token's name, or "schedule"
    key_id: str
    files: tuple[KeptFileInfo, ...]

    WIRE = Document(
        Field("report_id", Text(max_len=64, pattern=REPORT_ID)),
        Field("scope", Text(choices=frozenset(REPORT_SCOPES))),
        Field("subject", Text(max_len=255)),
        Field("generated_at", Integer(minimum=0), description="epoch seconds"),
        Field("made_by", Text(max_len=255)),
        Field("key_id", Text(max_len=64), description="the report key's id"),
        Field("files", ListOf(Ref(KeptFileInfo), len(REPORT_FORMATS))),
        where="kept report",
    )


@dataclass(frozen=True)
class KeptReportList(Wire):
    """``GET /v1/reports/kept``: the newest kept reports first."""

    reports: tuple[KeptReportInfo, ...]

    WIRE = Document(
        Field("reports", ListOf(Ref(KeptReportInfo), MAX_LISTED)),
        where="kept report list",
    )
