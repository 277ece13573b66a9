"""Compliance reports as files: canonical JSON, one self-contained HTML page, PDF.

Each form is rendered from the same document (``fleet.compliance``) and is
signed as the exact bytes produced here, so the rendering must not depend on
anything but the document: the HTML has no external resources (charts are
inline SVG), and the PDF is written in ReportLab's invariant mode (no clock,
no random document id).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from html import escape
from typing import Any

from fleet.compliance import Chart, charts
from fleet.errors import GpuwardError
from fleet.text import unicode_texts

CONTENT_TYPES = {
    "json": "application/json",
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
}
BAR_COLOURS = ("#2f6f9f", "#d08a2c", "#5b9a4c", "#b04848", "#7a5ea8", "#888888")
Getter = Callable[[Mapping[str, Any]], object]
PAGE_WIDTH_MM = 277  # landscape A4 less the PDF's 10 mm margins
# The fleet table: (heading, value, width in the PDF in mm; at most PAGE_WIDTH_MM in all).
NODE_COLUMNS: tuple[tuple[str, Getter, float], ...] = (
    ("Node", lambda n: n["node_id"], 24),
    ("Pool", lambda n: n["pool"], 14),
    ("State", lambda n: n["state"], 14),
    ("Attestation", lambda n: n["attestation"]["result"], 18),
    ("Last attested", lambda n: n["attestation"]["last_attested_at"], 18),
    ("Secure Boot", lambda n: n["secure_boot"], 13),
    ("Boot policy", lambda n: n["measured_boot_policy"]["result"], 16),
    ("Driver", lambda n: n["driver"]["version"], 17),
    ("Branch", lambda n: n["driver"]["branch"], 11),
    ("Support", lambda n: n["driver"]["status"], 16),
    ("End of life", lambda n: n["driver"]["end_of_life"], 14),
    ("Advisories", lambda n: advisories_cell(n["advisories"]), 16),
    ("Kernel", lambda n: n["kernel"]["release"], 16),
    ("Kernel hold", lambda n: n["kernel"]["hold"], 12),
    ("Firewall ruleset", lambda n: _short(n["firewall"]["ruleset_sha256"]), 16),
    ("Telemetry off", lambda n: n["firewall"]["telemetry_off"], 13),
    ("EK certificate", lambda n: _short(n["identity"]["ek_certificate"]["sha256"]), 16),
    ("Roll-backs", lambda n: n["updates"]["rollbacks"], 12),
)
# A node's own page: everything in the table, in full, and what does not fit there.
NODE_FACTS: tuple[tuple[str, Getter], ...] = (
    *(
        (name, get)
        for name, get, _ in NODE_COLUMNS
        if name not in ("Firewall ruleset", "EK certificate")
    ),
    ("Enrollment", lambda n: n["identity"]["enrollment"]),
    ("Enrolled at", lambda n: n["enrolled_at"]),
    ("Last seen", lambda n: n["last_seen"]),
    ("EK certificate SHA-256", lambda n: n["identity"]["ek_certificate"]["sha256"]),
    ("EK certificate subject", lambda n: n["identity"]["ek_certificate"]["subject"]),
    ("EK certificate serial", lambda n: n["identity"]["ek_certificate"]["serial"]),
    ("Boot policy applied", lambda n: n["measured_boot_policy"]["policy"]),
    ("Kernel packages held", lambda n: ", ".join(n["kernel"]["held_packages"]) or None),
    ("Kernel hold error", lambda n: n["kernel"]["hold_error"]),
    ("Attestation reasons", lambda n: "; ".join(n["attestation"]["reasons"]) or "none"),
    ("Firewall mode", lambda n: n["firewall"]["mode"]),
    ("Firewall ruleset SHA-256", lambda n: n["firewall"]["ruleset_sha256"]),
    ("Firewall in sync", lambda n: n["firewall"]["in_sync"]),
    ("Advisories closed by", lambda n: _fixed_by(n["advisories"])),
)
# A node's open advisories and the fleet's CVEs, as tables.
ADVISORY_HEADINGS = ("CVE", "Severity", "Score", "Status", "Fixed in branch", "Bulletin")
CVE_HEADINGS = ("CVE", "Severity", "Score", "Nodes", "Bulletin")


def advisories_cell(advisories: Mapping[str, Any]) -> str | None:
    """A node's exposure in a few words; None (shown "unknown") when it is not known."""
    if advisories["status"] == "unknown":
        return None
    found = advisories["open"]
    return f"{len(found)} open, worst {advisories['worst']}" if found else "none open"


def _fixed_by(advisories: Mapping[str, Any]) -> str | None:
    if advisories["status"] != "exposed":
        return "nothing open" if advisories["status"] == "none-open" else None
    return advisories["fixed_by"] or "no fix listed in the driver's branch"


def _advisory_rows(advisories: Mapping[str, Any]) -> list[list[str]]:
    return [
        [a["cve"], a["severity"], f"{a['score']:.1f}", a["status"], cell(a["fixed"]),
         a["bulletin"]]
        for a in advisories["open"]
    ]  # fmt: skip


def _cve_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    return [
        [c["cve"], c["severity"], f"{c['score']:.1f}", str(c["nodes"]), c["bulletin"]]
        for c in summary["advisories"]["cves"]
    ]


def _advisories_line(summary: Mapping[str, Any]) -> str:
    advisories = summary["advisories"]
    if advisories["bulletins"] is None:
        return "The catalog carries no security advisory feed: exposure is unknown."
    return (
        f"Security advisories: {advisories['bulletins']} NVIDIA bulletin(s) in the catalog; "
        f"{advisories['exposed']} node(s) exposed, {advisories['none-open']} with none open, "
        f"{advisories['unknown']} unknown (no driver reported)."
    )


def _short(digest: str | None) -> str | None:
    return None if digest is None else digest[:16]


def cell(value: object) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def render(document: Mapping[str, Any], fmt: str) -> bytes:
    # The report reader makes what nodes send Unicode text; whatever else reached
    # the store (an older row, a verdict) must not stop the report either.
    document = unicode_texts(document)
    if fmt == "json":
        return json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"
    if fmt == "html":
        return _html(document).encode()
    if fmt == "pdf":
        return _pdf(document)
    raise GpuwardError(f"unknown report format {fmt!r}: choose json, html or pdf")


def _title(document: Mapping[str, Any]) -> str:
    if document["scope"] == "node" and document["nodes"]:
        return f"gpuward compliance report: node {document['nodes'][0]['node_id']}"
    return "gpuward compliance report: fleet"


_ALGORITHM_NAMES = {"ed25519": "Ed25519", "ecdsa-p256-sha256": "ECDSA P-256"}


def _subtitle(document: Mapping[str, Any]) -> str:
    return (
        f"Generated {document['generated_at']} from catalog version "
        f"{document['catalog_version']}; signed with "
        f"{_ALGORITHM_NAMES[document['signed_by']['algorithm']]} key "
        f"{document['signed_by']['key_id']} (signature in FILE.sig)."
    )


# -- HTML ---------------------------------------------------------------------


def _svg(chart: Chart) -> str:
    width, bar_height, label_width = 520, 22, 170
    height = bar_height * max(1, len(chart.bars)) + 30
    top = max((value for _, value in chart.bars), default=0) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(chart.title)}">',
        f'<text x="0" y="16" font-weight="bold">{escape(chart.title)}</text>',
    ]
    for i, (label, value) in enumerate(chart.bars):
        y = 26 + i * bar_height
        length = int((width - label_width - 50) * value / top)
        colour = BAR_COLOURS[i % len(BAR_COLOURS)]
        parts += [
            f'<text x="0" y="{y + 15}">{escape(label)}</text>',
            f'<rect x="{label_width}" y="{y + 3}" width="{length}" height="{bar_height - 6}" '
            f'fill="{colour}"/>',
            f'<text x="{label_width + length + 6}" y="{y + 15}">{value}</text>',
        ]
    parts.append("</svg>")
    return "".join(parts)


def _html(document: Mapping[str, Any]) -> str:
    nodes = document["nodes"]
    head = "".join(f"<th>{escape(name)}</th>" for name, _, _ in NODE_COLUMNS)
    rows = "".join(
        "<tr>" + "".join(f"<td>{escape(cell(get(n)))}</td>" for _, get, _ in NODE_COLUMNS) + "</tr>"
        for n in nodes
    )
    details = "".join(_html_node(n) for n in nodes)
    summary = document["summary"]
    cves = _html_table(CVE_HEADINGS, _cve_rows(summary))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(_title(document))}</title><style>"
        # A long word (a node's 1,024-character reason, a 128-character node
        # id) wraps instead of widening the page.
        "body{font-family:sans-serif;margin:2em;overflow-wrap:anywhere}"
        "table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:2px 6px;font-size:13px;text-align:left}"
        "svg{margin:0 2em 1em 0;font:13px sans-serif}</style></head><body>"
        f"<h1>{escape(_title(document))}</h1><p>{escape(_subtitle(document))}</p>"
        f"<h2>Summary</h2><p>{summary['nodes']} node(s), {summary['rollbacks']} rollback(s) "
        "in the update history.</p>"
        + "".join(_svg(chart) for chart in charts(document))
        + f"<h2>Security advisories</h2><p>{escape(_advisories_line(summary))}</p>{cves}"
        + f"<h2>Nodes</h2><table><tr>{head}</tr>{rows}</table>{details}</body></html>\n"
    )


def _html_table(headings: Sequence[str], rows: list[list[str]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{escape(h)}</th>" for h in headings)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _html_node(node: Mapping[str, Any]) -> str:
    history = node["updates"]["history"]
    items = "".join(
        f"<tr><td>{escape(cell(h['at']))}</td><td>{escape(h['update'])}</td>"
        f"<td>{escape(cell(h['driver_version']))}</td><td>{escape(h['reason'])}</td></tr>"
        for h in history
    )
    facts = "".join(
        f"<tr><th>{escape(name)}</th><td>{escape(cell(get(node)))}</td></tr>"
        for name, get in NODE_FACTS
    )
    advisories = _html_table(ADVISORY_HEADINGS, _advisory_rows(node["advisories"]))
    return (
        f"<h3>Node {escape(node['node_id'])}</h3><table>{facts}</table><p></p>"
        + (
            f"<table><tr><th>When</th><th>Update</th><th>Driver</th><th>Reason</th></tr>"
            f"{items}</table>"
            if items
            else "<p>No updates recorded.</p>"
        )
        + (f"<p>Open security advisories:</p>{advisories}" if advisories else "")
    )


# -- PDF ----------------------------------------------------------------------


def _pdf(document: Mapping[str, Any]) -> bytes:
    from reportlab.graphics.charts.barcharts import HorizontalBarChart
    from reportlab.graphics.shapes import Drawing, String
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table

    styles = getSampleStyleSheet()
    small = styles["BodyText"].clone("small", fontSize=7, leading=8)

    def chart_drawing(chart: Chart) -> Drawing:
        drawing = Drawing(250, 30 + 18 * max(1, len(chart.bars)))
        bars = HorizontalBarChart()
        bars.x, bars.y = 90, 10
        bars.width, bars.height = 140, 18 * max(1, len(chart.bars))
        bars.data = [[value for _, value in chart.bars] or [0]]
        bars.categoryAxis.categoryNames = [label for label, _ in chart.bars] or ["none"]
        bars.categoryAxis.labels.fontSize = 7
        bars.valueAxis.valueMin = 0
        bars.valueAxis.labels.fontSize = 7
        bars.bars[0].fillColor = colors.HexColor(BAR_COLOURS[0])
        drawing.add(bars)
        drawing.add(String(0, drawing.height - 10, chart.title, fontSize=9))
        return drawing

    def table(rows: list[list[str]], widths: list[float] | None = None) -> Table:
        cells = [[Paragraph(escape(c), small) for c in row] for row in rows]
        result = Table(cells, colWidths=widths, repeatRows=1)
        result.setStyle(
            [
                ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8e8e8")),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
        return result

    nodes = document["nodes"]
    summary = document["summary"]
    drawn = [chart_drawing(chart) for chart in charts(document)]
    # Two charts a row: four side by side are wider than the page.
    story: list[Any] = [
        Paragraph(escape(_title(document)), styles["Title"]),
        Paragraph(escape(_subtitle(document)), styles["BodyText"]),
        Spacer(1, 4 * mm),
        Table([drawn[i : i + 2] for i in range(0, len(drawn), 2)]),
        Spacer(1, 4 * mm),
        table(
            [[name for name, _, _ in NODE_COLUMNS]]
            + [[cell(get(n)) for _, get, _ in NODE_COLUMNS] for n in nodes],
            [width * mm for _, _, width in NODE_COLUMNS],
        ),
        Spacer(1, 4 * mm),
        Paragraph(escape(_advisories_line(summary)), styles["BodyText"]),
    ]
    cves = _cve_rows(summary)
    if cves:
        story.append(table([list(CVE_HEADINGS), *cves], [w * mm for w in (32, 20, 14, 14, 120)]))
    for node in nodes:
        story += [PageBreak(), Paragraph(f"Node {escape(node['node_id'])}", styles["Heading2"])]
        facts = [[name, cell(get(node))] for name, get in NODE_FACTS]
        story.append(table([["Fact", "Value"], *facts], [60 * mm, (PAGE_WIDTH_MM - 60) * mm]))
        history = node["updates"]["history"]
        story.append(Spacer(1, 3 * mm))
        story.append(
            table(
                [["When", "Update", "Driver", "Reason"]]
                + [
                    [cell(h["at"]), h["update"], cell(h["driver_version"]), h["reason"]]
                    for h in history
                ],
                # Fixed widths: sized to its content, one long word would make
                # the table wider than the page, which ReportLab cannot lay out.
                [w * mm for w in (32, 22, 22, PAGE_WIDTH_MM - 76)],
            )
            if history
            else Paragraph("No updates recorded.", styles["BodyText"])
        )
        advisories = _advisory_rows(node["advisories"])
        if advisories:
            story += [
                Spacer(1, 3 * mm),
                table(
                    [list(ADVISORY_HEADINGS), *advisories],
                    [w * mm for w in (32, 20, 14, 30, 26, 120)],
                ),
            ]
    out = io.BytesIO()
    SimpleDocTemplate(
        out,
        pagesize=landscape(A4),
        title=_title(document),
        author="gpuward",
        invariant=1,
        leftMargin=10 * mm,
        rightMargin=10 * mm,
        topMargin=10 * mm,
        bottomMargin=10 * mm,
    ).build(story)
    return out.getvalue()
