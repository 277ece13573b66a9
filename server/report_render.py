"""Compliance reports as files: canonical JSON, one self-contained HTML page, PDF,
and the CSV evidence file that carries every node's controls.

Each form is rendered from the same document (``fleet.compliance``) and is
signed as the exact bytes produced here, so the rendering must not depend on
anything but the document and the file name the report is saved under: the
HTML has no external resources (charts are inline SVG), and the PDF is written
in ReportLab's invariant mode (no random document id) with the document's own
time as its creation date. HTML and PDF are drawn from one list of blocks
(``blocks``), so they carry the same content; a new part of the document is one
more block. A fleet's PDF stays readable at 100,000 nodes: it shows the summary
and the exceptions, and leaves each node's detail to the evidence file.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any

from fleet.compliance import Chart, charts
from fleet.errors import GpuwardError
from fleet.text import unicode_texts

CONTENT_TYPES = {
    "json": "application/json",
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
    "csv": "text/csv; charset=utf-8",
}
BAR_COLOURS = ("#2f6f9f", "#d08a2c", "#5b9a4c", "#b04848", "#7a5ea8", "#888888")
Getter = Callable[[Mapping[str, Any]], object]
# Rows a fleet's PDF and HTML show of each long table; the evidence file has them all,
# so a 100,000-node fleet's PDF stays within a few dozen pages.
EXCEPTIONS_SHOWN = 600
NODES_SHOWN = 300
# A node in full: its facts in the node report, its columns in the evidence file.
NODE_FACTS: tuple[tuple[str, Getter], ...] = (
    ("Node", lambda n: n["node_id"]),
    ("Pool", lambda n: n["pool"]),
    ("State", lambda n: n["state"]),
    ("Enrollment", lambda n: n["identity"]["enrollment"]),
    ("Enrolled at", lambda n: n["enrolled_at"]),
    ("Last seen", lambda n: n["last_seen"]),
    ("Attestation", lambda n: n["attestation"]["result"]),
    ("Last attested", lambda n: n["attestation"]["last_attested_at"]),
    ("Attestation reasons", lambda n: "; ".join(n["attestation"]["reasons"]) or "none"),
    ("Secure Boot", lambda n: n["secure_boot"]),
    ("Boot policy", lambda n: n["measured_boot_policy"]["result"]),
    ("Boot policy applied", lambda n: n["measured_boot_policy"]["policy"]),
    ("Driver", lambda n: n["driver"]["version"]),
    ("Branch", lambda n: n["driver"]["branch"]),
    ("Support", lambda n: n["driver"]["status"]),
    ("End of life", lambda n: n["driver"]["end_of_life"]),
    ("Advisories", lambda n: advisories_cell(n["advisories"])),
    ("Advisories closed by", lambda n: _fixed_by(n["advisories"])),
    ("Kernel", lambda n: n["kernel"]["release"]),
    ("Kernel hold", lambda n: n["kernel"]["hold"]),
    ("Kernel packages held", lambda n: ", ".join(n["kernel"]["held_packages"]) or None),
    ("Kernel hold error", lambda n: n["kernel"]["hold_error"]),
    ("Firewall mode", lambda n: n["firewall"]["mode"]),
    ("Firewall ruleset SHA-256", lambda n: n["firewall"]["ruleset_sha256"]),
    ("Firewall in sync", lambda n: n["firewall"]["in_sync"]),
    ("Telemetry off", lambda n: n["firewall"]["telemetry_off"]),
    ("EK certificate SHA-256", lambda n: n["identity"]["ek_certificate"]["sha256"]),
    ("EK certificate subject", lambda n: n["identity"]["ek_certificate"]["subject"]),
    ("EK certificate serial", lambda n: n["identity"]["ek_certificate"]["serial"]),
    ("Rollbacks", lambda n: n["updates"]["rollbacks"]),
)
# The fleet's node list: one line a node, its verdicts counted.
NODE_LINE: tuple[tuple[str, Getter], ...] = (
    ("Node", lambda n: n["node_id"]),
    ("Pool", lambda n: n["pool"]),
    ("State", lambda n: n["state"]),
    ("Driver", lambda n: n["driver"]["version"]),
    ("Attestation", lambda n: n["attestation"]["result"]),
    ("Advisories", lambda n: advisories_cell(n["advisories"])),
    *(
        (result.capitalize(), lambda n, r=result: _count(n, r))
        for result in ("pass", "fail", "unknown")
    ),
)
HISTORY_HEADINGS = (
    "When", "Update", "Driver", "Bundle", "Reason", "Rollout", "Started by", "Resumed by",
)  # fmt: skip
ADVISORY_HEADINGS = ("CVE", "Severity", "Score", "Status", "Fixed in branch", "Bulletin")
CVE_HEADINGS = ("CVE", "Severity", "Score", "Nodes", "Bulletin")


def _count(node: Mapping[str, Any], result: str) -> int:
    return sum(1 for c in node["controls"] if c["result"] == result)


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


def cell(value: object) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def file_name(document: Mapping[str, Any], fmt: str) -> str:
    """The name a report is saved under unless its reader asks for another."""
    scope = document["scope"]
    if scope == "node" and document["nodes"]:
        scope = f"node-{document['nodes'][0]['node_id']}"
    stamp = document["generated_at"].replace("-", "").replace(":", "")
    return "".join(
        c if c.isascii() and (c.isalnum() or c in "-.") else "_"
        for c in f"gpuward-report-{scope}-{stamp}.{fmt}"
    )


# -- what both HTML and PDF show ------------------------------------------------


@dataclass(frozen=True)
class Heading:
    text: str
    level: int  # 1: the title; 2: a part; 3: within a part


@dataclass(frozen=True)
class Prose:
    text: str


@dataclass(frozen=True)
class Grid:
    """A table; ``vertical`` puts the headings in the first column (a node's facts)."""

    headings: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    vertical: bool = False


@dataclass(frozen=True)
class Charts:
    charts: tuple[Chart, ...]


Block = Heading | Prose | Grid | Charts
_ALGORITHM_NAMES = {"ed25519": "Ed25519", "ecdsa-p256-sha256": "ECDSA P-256"}


def title(document: Mapping[str, Any]) -> str:
    if document["scope"] == "node" and document["nodes"]:
        return f"gpuward compliance report: node {document['nodes'][0]['node_id']}"
    return "gpuward compliance report: fleet"


def _signed(document: Mapping[str, Any], name: str) -> str:
    return (
        f"Generated {document['generated_at']} from catalog version "
        f"{document['catalog_version']}; signed with "
        f"{_ALGORITHM_NAMES[document['signed_by']['algorithm']]} key "
        f"{document['signed_by']['key_id']}: the signature of {name} is in {name}.sig."
    )


def _checkpoint(document: Mapping[str, Any]) -> list[Block]:
    """The transparency log checkpoint the report was made under, if the server keeps a log:
    its origin, size and root hash (the signed note itself is in the JSON)."""
    note = document.get("log_checkpoint")
    if note is None:
        return []
    origin, size, root = [*note.split("\n"), "", "", ""][:3]
    return [
        Prose(
            f"Made under transparency log checkpoint {origin}, tree size {size}, root hash "
            f"{root} (gpuward log verify --against checks it against the log)."
        )
    ]


def _scope(document: Mapping[str, Any]) -> str:
    period = document["period"]
    nodes = document["summary"]["nodes"]
    what = "the whole fleet" if document["scope"] == "fleet" else "one node"
    return (
        f"Scope: {what}, {nodes} node(s) enrolled when the report was made. Period: the "
        f"evidence covers {period['from']} to {period['to']}. Policy: "
        f"{len(document['policy']['controls'])} controls mapped to "
        f"{document['policy']['framework']} (below). A control a node cannot show evidence "
        "for is unknown, never passed."
    )


def _trend_line(trend: Mapping[str, Any]) -> str:
    previous = trend["previous"]
    if previous is None:
        return "Trend: no earlier report of this scope was kept, so there is nothing to compare."
    nodes = trend["nodes"]
    moved = "unknown" if nodes is None else f"{nodes:+d}"
    return (
        f"Trend: against report {previous['report_id']} of {previous['generated_at']}, the "
        f"last one kept; nodes {moved}. Each control's change is in the last column."
    )


def _change(trend: Mapping[str, Any], control: str) -> str:
    if trend["previous"] is None:
        return "no previous report"
    change = trend["controls"].get(control)
    if change is None:
        return "not judged before"
    return ", ".join(f"{r} {change[r]:+d}" for r in ("pass", "fail", "unknown"))


def _titles(document: Mapping[str, Any]) -> dict[str, str]:
    return {c["id"]: c["title"] for c in document["policy"]["controls"]}


def _advisories_line(summary: Mapping[str, Any]) -> str:
    advisories = summary["advisories"]
    if advisories["bulletins"] is None:
        return "The catalog carries no security advisory feed: exposure is unknown."
    return (
        f"Security advisories: {advisories['bulletins']} NVIDIA bulletin(s) in the catalog; "
        f"{advisories['exposed']} node(s) exposed, {advisories['none-open']} with none open, "
        f"{advisories['unknown']} unknown (no driver reported)."
    )


def _capped(rows: int, shown: int, what: str) -> list[Block]:
    if rows <= shown:
        return []
    return [Prose(f"The first {shown} of {rows} {what}; the evidence file (CSV) has all.")]


def blocks(document: Mapping[str, Any], name: str) -> list[Block]:
    """The report as HTML and PDF show it, in order."""
    summary = document["summary"]
    titles = _titles(document)
    controls = summary["controls"]
    out: list[Block] = [
        Heading(title(document), 1),
        Prose(_signed(document, name)),
        *_checkpoint(document),
        Prose(_scope(document)),
        Heading("Summary", 2),
        Prose(
            f"{summary['nodes']} node(s); {len(document['exceptions'])} exception(s) (a node "
            f"failing a control); {summary['rollbacks']} rollback(s) in the update history."
        ),
        Prose(_trend_line(document["trend"])),
        Grid(
            ("Control", "NIST SP 800-53", "Pass", "Fail", "Unknown", "Since previous"),
            tuple(
                (
                    titles[c["id"]],
                    ", ".join(k["id"] for k in c["clauses"]),
                    *(str(controls[c["id"]][r]) for r in ("pass", "fail", "unknown")),
                    _change(document["trend"], c["id"]),
                )
                for c in document["policy"]["controls"]
            ),
        ),
        Charts(tuple(charts(document))),
        Heading("Exceptions", 2),
    ]
    exceptions = tuple(
        (e["node_id"], titles[e["control"]], e["evidence"])
        for e in document["exceptions"][:EXCEPTIONS_SHOWN]
    )
    if exceptions:
        out += _capped(len(document["exceptions"]), EXCEPTIONS_SHOWN, "exceptions")
        out.append(Grid(("Node", "Control", "Evidence"), exceptions))
    else:
        out.append(Prose("No node fails a control."))
    out += [Heading("Security advisories", 2), Prose(_advisories_line(summary))]
    cves = tuple(
        (c["cve"], c["severity"], f"{c['score']:.1f}", str(c["nodes"]), c["bulletin"])
        for c in summary["advisories"]["cves"]
    )
    if cves:
        out.append(Grid(CVE_HEADINGS, cves))
    if document["scope"] == "fleet":
        nodes = document["nodes"]
        lines = tuple(tuple(cell(get(n)) for _, get in NODE_LINE) for n in nodes[:NODES_SHOWN])
        out += [
            Heading("Nodes", 2),
            Prose("Each node's controls, with their evidence: the evidence file (CSV)."),
            *_capped(len(nodes), NODES_SHOWN, "nodes"),
        ]
        if lines:
            out.append(Grid(tuple(h for h, _ in NODE_LINE), lines))
    else:
        for node in document["nodes"]:
            out += _node_blocks(node, titles)
    out += _policy_blocks(document["policy"])
    return out


def _node_blocks(node: Mapping[str, Any], titles: Mapping[str, str]) -> list[Block]:
    out: list[Block] = [
        Heading(f"Node {node['node_id']}", 2),
        Grid(
            ("Fact", "Value"),
            tuple((name, cell(get(node))) for name, get in NODE_FACTS),
            vertical=True,
        ),
        Heading("Controls", 3),
        Grid(
            ("Control", "Result", "Evidence"),
            tuple((titles[c["control"]], c["result"], c["evidence"]) for c in node["controls"]),
        ),
        Heading("Update history", 3),
    ]
    history = tuple(
        (cell(h["at"]), h["update"], cell(h["driver_version"]), cell(h["bundle"]), h["reason"],
         cell(h["rollout"]), cell(h["started_by"]), ", ".join(h["approved_by"]) or "none")
        for h in node["updates"]["history"]
    )  # fmt: skip
    out.append(Grid(HISTORY_HEADINGS, history) if history else Prose("No updates recorded."))
    advisories = tuple(
        (a["cve"], a["severity"], f"{a['score']:.1f}", a["status"], cell(a["fixed"]),
         a["bulletin"])
        for a in node["advisories"]["open"]
    )  # fmt: skip
    if advisories:
        out += [Heading("Open security advisories", 3), Grid(ADVISORY_HEADINGS, advisories)]
    return out


def _policy_blocks(policy: Mapping[str, Any]) -> list[Block]:
    return [
        Heading("Policy", 2),
        Prose(
            f"Each control and the {policy['framework']} clauses it maps to "
            f"({policy['source']}); the mapping ships as fleet/data/controls.json."
        ),
        Grid(
            ("Control", "Checks", "Evidence used", "Clauses", "Why these clauses"),
            tuple(
                (
                    c["title"],
                    c["checks"],
                    c["evidence"],
                    "; ".join(f"{k['id']} {k['title']}" for k in c["clauses"]),
                    c["why"],
                )
                for c in policy["controls"]
            ),
        ),
        Grid(
            ("Clause", "Title", "Source"),
            tuple(
                sorted(
                    {
                        (k["id"], k["title"], k["source"])
                        for c in policy["controls"]
                        for k in c["clauses"]
                    }
                )
            ),
        ),
    ]


def render(document: Mapping[str, Any], fmt: str, name: str | None = None) -> bytes:
    """``document`` as a file of format ``fmt``, to be saved as ``name`` (by default
    ``file_name``): the HTML and PDF name their signature file after it."""
    if fmt not in CONTENT_TYPES:
        raise GpuwardError(f"unknown report format {fmt!r}: choose json, html, pdf or csv")
    return render_all(document, {fmt: name or file_name(document, fmt)})[fmt]


def render_all(document: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, bytes]:
    """Each format ``names`` lists, from one pass over ``document``: the file a report
    run keeps, by format, each saved as its name."""
    unknown = set(names) - set(CONTENT_TYPES)
    if unknown:
        raise GpuwardError(
            f"unknown report format {sorted(unknown)}: choose json, html, pdf or csv"
        )
    # The report reader makes what nodes send Unicode text; whatever else reached the
    # store (an older row, a verdict) must not stop the report either. The JSON form,
    # encoded as UTF-8 by the C encoder, is the check: only when it fails is the
    # document walked string by string (at 100,000 nodes the walk takes seconds).
    text = json.dumps(document, sort_keys=True, ensure_ascii=False)
    try:
        encoded = text.encode()
    except UnicodeEncodeError:
        document = unicode_texts(document)
        encoded = json.dumps(document, sort_keys=True, ensure_ascii=False).encode()
    del text
    made: dict[str, bytes] = {}
    for fmt, name in names.items():
        if fmt == "json":
            made[fmt] = encoded + b"\n"
        elif fmt == "html":
            made[fmt] = _html(document, name).encode()
        elif fmt == "pdf":
            made[fmt] = _pdf(document, name)
        else:
            made[fmt] = _csv(document)
    return made


# -- CSV ------------------------------------------------------------------------


# A cell a spreadsheet would read as a formula (OWASP's CSV injection list): a node's
# own text must stay text when an auditor opens the evidence file in Excel.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert(value: str) -> str:
    """``value`` as a spreadsheet shows it as text: a leading ' before a formula start."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _csv(document: Mapping[str, Any]) -> bytes:
    """The evidence file: one row a node, every fact, and each control's result and
    evidence; cells that start like a formula are made ``inert``."""
    out = io.StringIO()
    # Every field quoted: a node-sent "\r" left bare would end the row early.
    writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    ids = [c["id"] for c in document["policy"]["controls"]]
    writer.writerow(
        [name for name, _ in NODE_FACTS]
        + [f"{i} {part}" for i in ids for part in ("result", "evidence")]
    )
    for node in document["nodes"]:
        judged = {c["control"]: c for c in node["controls"]}
        row = [cell(get(node)) for _, get in NODE_FACTS]
        row += [judged[i][part] for i in ids for part in ("result", "evidence")]
        writer.writerow([inert(str(value)) for value in row])
    return out.getvalue().encode()


# -- HTML -----------------------------------------------------------------------


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


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{escape(block.text)}</h{block.level}>"
    if isinstance(block, Prose):
        return f"<p>{escape(block.text)}</p>"
    if isinstance(block, Charts):
        return "".join(_svg(chart) for chart in block.charts)
    if block.vertical:
        body = "".join(
            f"<tr><th>{escape(row[0])}</th>"
            + "".join(f"<td>{escape(c)}</td>" for c in row[1:])
            + "</tr>"
            for row in block.rows
        )
        return f"<table>{body}</table>"
    head = "".join(f"<th>{escape(h)}</th>" for h in block.headings)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in block.rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _html(document: Mapping[str, Any], name: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title(document))}</title><style>"
        # A long word (a node's 1,024-character reason, a 128-character node
        # id) wraps instead of widening the page.
        "body{font-family:sans-serif;margin:2em;overflow-wrap:anywhere}"
        "table{border-collapse:collapse;margin:0.5em 0}"
        "td,th{border:1px solid #bbb;padding:2px 6px;font-size:13px;text-align:left;"
        "vertical-align:top}"
        "svg{margin:0 2em 1em 0;font:13px sans-serif}</style></head><body>"
        + "".join(_html_block(b) for b in blocks(document, name))
        + "</body></html>\n"
    )


# -- PDF ------------------------------------------------------------------------

_FONT, _BOLD = "Vera", "VeraBd"  # Bitstream Vera, shipped with ReportLab: embedded
_CELL_FONT_SIZE = 7
_CELL_PADDING = 8.0  # points, left and right padding of a cell together


def _fonts() -> None:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    if _FONT not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont(_FONT, "Vera.ttf"))
        pdfmetrics.registerFont(TTFont(_BOLD, "VeraBd.ttf"))


def column_widths(
    rows: Sequence[Sequence[str]], total: float, font_size: float = _CELL_FONT_SIZE
) -> list[float]:
    """Widths, in points, in which no cell's word is split: each column is at least as
    wide as its longest word (a word wider than half the page, which no layout keeps
    whole, is split), and the rest of ``total`` goes where the text is longest."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    def width(text: str, bold: bool) -> float:
        return stringWidth(text, _BOLD if bold else _FONT, font_size) + _CELL_PADDING + 1

    columns = range(len(rows[0]))
    least = [
        min(
            total / 2,
            max(width(w, i == 0) for i, r in enumerate(rows) for w in r[c].split() or [""]),
        )
        for c in columns
    ]
    if sum(least) >= total:
        return [w * total / sum(least) for w in least]
    wanted = [
        max(0.0, max(width(r[c], i == 0) for i, r in enumerate(rows)) - least[c]) for c in columns
    ]
    spare = total - sum(least)
    share = 1.0 if sum(wanted) <= spare else spare / sum(wanted)
    return [least[c] + wanted[c] * share for c in columns]


def _pdf(document: Mapping[str, Any], name: str) -> bytes:
    from reportlab.graphics.charts.barcharts import HorizontalBarChart
    from reportlab.graphics.shapes import Drawing, String
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.pdfgen.canvas import Canvas
    from reportlab.platypus import Flowable, Paragraph, SimpleDocTemplate, Spacer, Table

    _fonts()
    styles = getSampleStyleSheet()
    for style in styles.byName.values():
        style.fontName = _BOLD if style.name.startswith(("Heading", "Title")) else _FONT
    small = styles["BodyText"].clone("small", fontSize=_CELL_FONT_SIZE, leading=8.5)
    small_bold = small.clone("small_bold", fontName=_BOLD)
    page_width, page_height = landscape(A4)
    margin = 10 * mm
    usable = page_width - 2 * margin
    generated = datetime.strptime(document["generated_at"], "%Y-%m-%dT%H:%M:%SZ")
    created = generated.strftime("D:%Y%m%d%H%M%S+00'00'")
    header = f"{title(document)} - generated {document['generated_at']}"

    class Numbered(Canvas):
        """Draws the header and "Page N of M" once the page count is known."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._pages: list[dict[str, Any]] = []
            # The document's own time, not ReportLab's invariant 2000-01-01.
            self.setDateFormatter(lambda *_: created)

        def showPage(self) -> None:
            self._pages.append(dict(self.__dict__))
            # ReportLab's own way to begin a page without drawing it (untyped in its stubs).
            self._startPage()  # type: ignore[attr-defined]

        def save(self) -> None:
            for number, state in enumerate(self._pages, 1):
                self.__dict__.update(state)
                self.setFont(_FONT, 7)
                self.setFillColor(colors.HexColor("#555555"))
                self.drawString(margin, page_height - 7 * mm, header)
                self.drawRightString(page_width - margin, page_height - 7 * mm, name)
                self.drawString(margin, 5 * mm, f"signature: {name}.sig")
                self.drawRightString(
                    page_width - margin, 5 * mm, f"Page {number} of {len(self._pages)}"
                )
                super().showPage()
            super().save()

    def chart_drawing(chart: Chart) -> Drawing:
        drawing = Drawing(250, 30 + 18 * max(1, len(chart.bars)))
        # The renderer would otherwise start in Helvetica; its stubs do not name this.
        drawing.initialFontName = _FONT  # type: ignore[attr-defined]
        bars = HorizontalBarChart()
        bars.x, bars.y = 90, 10
        bars.width, bars.height = 140, 18 * max(1, len(chart.bars))
        bars.data = [[value for _, value in chart.bars] or [0]]
        bars.categoryAxis.categoryNames = [label for label, _ in chart.bars] or ["none"]
        for axis in (bars.categoryAxis, bars.valueAxis):
            axis.labels.fontSize = 7
            axis.labels.fontName = _FONT
        bars.valueAxis.valueMin = 0
        bars.bars[0].fillColor = colors.HexColor(BAR_COLOURS[0])
        drawing.add(bars)
        drawing.add(String(0, drawing.height - 10, chart.title, fontSize=9, fontName=_BOLD))
        return drawing

    def grid(block: Grid) -> Table:
        rows = [] if block.vertical else [list(block.headings)]
        rows += [list(r) for r in block.rows]
        widths = column_widths(
            rows if not block.vertical else [list(block.headings), *rows], usable
        )
        cells = [
            [
                Paragraph(
                    escape(c),
                    small_bold
                    if (i == 0 and not block.vertical) or (block.vertical and j == 0)
                    else small,
                )
                for j, c in enumerate(row)
            ]
            for i, row in enumerate(rows)
        ]
        table = Table(cells, colWidths=widths, repeatRows=0 if block.vertical else 1, hAlign="LEFT")
        style: list[Any] = [
            ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ("FONT", (0, 0), (-1, -1), _FONT),  # a cell starts in it: not Helvetica
            ("LEFTPADDING", (0, 0), (-1, -1), _CELL_PADDING / 2),
            ("RIGHTPADDING", (0, 0), (-1, -1), _CELL_PADDING / 2),
        ]
        shaded = (0, 0), (0, -1) if block.vertical else (-1, 0)
        style.append(("BACKGROUND", *shaded, colors.HexColor("#e8e8e8")))
        table.setStyle(style)
        return table

    def flowables(block: Block) -> list[Flowable]:
        if isinstance(block, Heading):
            return [
                Paragraph(
                    escape(block.text), styles[("Title", "Heading2", "Heading3")[block.level - 1]]
                )
            ]
        if isinstance(block, Prose):
            return [Paragraph(escape(block.text), styles["BodyText"])]
        if isinstance(block, Charts):
            drawn = [chart_drawing(chart) for chart in block.charts]
            # Two charts a row: four side by side are wider than the page.
            pairs = Table([drawn[i : i + 2] for i in range(0, len(drawn), 2)])
            pairs.setStyle([("FONT", (0, 0), (-1, -1), _FONT)])
            return [pairs]
        return [grid(block), Spacer(1, 3 * mm)]

    story = [f for block in blocks(document, name) for f in flowables(block)]
    summary = document["summary"]
    out = io.BytesIO()
    SimpleDocTemplate(
        out,
        pagesize=(page_width, page_height),
        title=title(document),
        author="gpuward",
        subject=(
            f"Compliance of {summary['nodes']} node(s) with {len(document['policy']['controls'])} "
            f"controls ({document['policy']['framework']}), {document['period']['from']} to "
            f"{document['period']['to']}"
        ),
        creator="gpuward server",
        producer="gpuward (ReportLab)",
        invariant=1,
        initialFontName=_FONT,  # not ReportLab's Helvetica, which it does not embed
        leftMargin=margin,
        rightMargin=margin,
        topMargin=margin + 2 * mm,
        bottomMargin=margin,
    ).build(story, canvasmaker=Numbered)
    return out.getvalue()
