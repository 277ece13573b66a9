"""The report document on its own: edge cases the fleet test does not reach."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import jsonschema

from fleet.catalog import default_catalog
from fleet.compliance import NodeFacts, SeenReport, report_document, schema_text
from fleet.report import HealthReport
from server.report_render import render
from tests.simnode import report_doc

KEY_ID = "ab" * 32


def _validate(doc: object) -> None:
    jsonschema.Draft202012Validator(json.loads(schema_text())).validate(doc)


def test_an_empty_fleet_renders_in_every_format() -> None:
    doc = report_document("fleet", [], default_catalog(), 1_800_000_000, KEY_ID, "ed25519")
    _validate(doc)
    assert doc["summary"]["nodes"] == 0
    assert render(doc, "pdf").startswith(b"%PDF-")
    assert render(doc, "html").count(b"<svg") == 3


def _node(driver: str) -> NodeFacts:
    report = HealthReport.from_dict(report_doc("n1", driver=driver, update="up-to-date"))
    return NodeFacts("n1", "default", "healthy", "unattested", False, 0, 0, None,
                     (SeenReport(0, report, None),))  # fmt: skip


def test_support_status_follows_the_catalog_month_by_month() -> None:
    # R580 is supported through June 2028: ending soon from January, ended in July.
    def status(day: str) -> str:
        at = int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())
        doc = report_document(
            "node", [_node("580.65.06")], default_catalog(), at, KEY_ID, "ed25519"
        )
        _validate(doc)
        return str(doc["nodes"][0]["driver"]["status"])

    assert status("2027-12-01") == "supported"
    assert status("2028-06-30") == "ending-soon"
    assert status("2028-07-01") == "ended"


def test_renderers_escape_what_nodes_send() -> None:
    report = HealthReport.from_dict(
        {**report_doc("n1", update="failed"), "reason": "<script>alert(1)</script>"}
    )
    node = NodeFacts("n1", "default", "healthy", "unattested", False, 0, 0, None,
                     (SeenReport(0, report, None),))  # fmt: skip
    doc = report_document("node", [node], default_catalog(), 1_800_000_000, KEY_ID, "ed25519")
    html = render(doc, "html")
    assert b"<script>" not in html
    assert b"&lt;script&gt;" in html
    assert render(doc, "pdf").startswith(b"%PDF-")
