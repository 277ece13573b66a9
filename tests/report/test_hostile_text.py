"""No string a node sends can stop the fleet's signed report or the dashboard.

A node sends hostile strings (lone surrogates, control characters, NUL, RTL
marks, markup, words longer than a page) in every free-text field of its
report through the real report API; the compliance report (JSON, HTML, PDF,
fleet and node scope) and the dashboard pages are then fetched from the real
server. Lone surrogates are not Unicode text: the reader replaces each with
U+FFFD, and a report stored before that still renders.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import urllib3
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.attestation_verdict import AttestationVerdict
from fleet.report import HealthReport
from fleet.schema import canonical_json
from fleet.text import unicode_text, unicode_texts
from server.http import Services
from server.report_render import inert
from server.store import EnrolledNode
from tests.conftest import Fleet, make_site
from tests.dashboard.test_dashboard import chromium
from tests.simnode import FakeClock, SimNode, dashboard_sign_in, report_doc

# The longest ids enrollment allows, so they must wrap too.
NODE_ID = "gpu-" + "x" * 124
POOL = "p" * 64
SPECIALS = [
    "\ud800",  # a lone surrogate: valid JSON ("\\ud800"), not Unicode text
    "a\udfffb\ud83d",
    "\x00NUL\x00",
    "\x1b[2J\x1b[31mred\x07",
    "\u202egnp.exe\u200f\u2066rtl\u2069",
    "<script>alert(1)</script><img src=x onerror=alert(1)>",
    "]]>&amp;&#0;&#xd800;<![CDATA[",
    "\ufeff\ufffe\uffff\U0010ffff",
    "W" * 1024,  # one word wider than any page
    "😀" * 300,
]
ANY_CHARACTER = st.characters(codec=None, exclude_categories=())  # surrogates, controls too
HOSTILE = st.one_of(
    st.sampled_from(SPECIALS),
    st.text(ANY_CHARACTER, max_size=64),
    st.text(ANY_CHARACTER, min_size=700, max_size=1024),
    st.text(st.sampled_from("Wm\u0301\ud800<&"), min_size=700, max_size=1024),  # long words
)


@dataclass(frozen=True)
class Texts:
    """One report's worth of node-sent strings."""

    reason: str
    name: str
    finding: str
    other: str

    def report(self, node_id: str) -> dict[str, Any]:
        """Every free-text field of a report, each cut to the length the reader allows."""
        doc = report_doc(node_id, update="failed")
        doc["reason"] = self.reason[:1024]
        doc["bundle"] = self.other[:512]
        doc["gpus"][0].update(name=self.name[:128], uuid=self.name[:128], healthy=False,
                              problems=[self.finding[:512]])  # fmt: skip
        doc["kernel_hold"] = {"kernel": self.other[:128], "family": "apt", "applied": False,
                              "held": [self.name[:256]], "error": self.reason[:1024]}  # fmt: skip
        doc["firewall"] = {"mode": "host", "digest": None, "in_sync": False, "action": "failed",
                           "drift": [self.other[:1024]], "notes": [self.finding[:1024]],
                           "error": self.reason[:1024], "checked_at": None}  # fmt: skip
        sample = {"index": 0, "uuid": self.name[:128], "name": self.name[:128],
                  "errors": [self.finding[:256]]}  # fmt: skip
        finding = {"rule": self.name[:64], "severity": "critical", "message": self.finding[:512]}
        doc["health"] = {"status": "failed", "reasons": [self.reason[:512]],
                         "gpus": [{"sample": sample, "findings": [finding]}],
                         "xids": [{"at": 1.0, "gpu_index": 0, "gpu_uuid": self.name[:128],
                                   "xid": 79}]}  # fmt: skip
        return doc


TEXTS = st.builds(Texts, HOSTILE, HOSTILE, HOSTILE, HOSTILE)


@dataclass(frozen=True)
class Server:
    fleet: Fleet
    node: SimNode
    viewer: str
    http: urllib3.PoolManager

    def send(self, texts: Texts) -> None:
        self.fleet.clock.advance(10)  # within the node's rate limit, whatever came before
        body = json.dumps(texts.report(self.node.node_id)).encode()
        sent = self.node.send("POST", "/v1/reports", body)
        assert sent.status == 202, sent.data

    def get(self, path: str) -> urllib3.BaseHTTPResponse:
        answer = self.http.request(
            "GET", self.fleet.url + path, headers={"Authorization": f"Bearer {self.viewer}"}
        )
        assert answer.status == 200, answer.data[-2000:]
        return answer

    def page(self, path: str) -> str:
        """A dashboard page, signed in by the viewer's cookie."""
        cookie = dashboard_sign_in(self.fleet.url, self.viewer)
        answer = self.http.request("GET", self.fleet.url + path, headers={"Cookie": cookie})
        assert answer.status == 200, answer.data[-2000:]
        return answer.data.decode()  # strict: the page is UTF-8


@pytest.fixture(scope="module")
def server(_template_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for every example: a node reporting hostile text, and a plain one."""
    clock = FakeClock()
    base = tmp_path_factory.mktemp("hostile")
    for site in make_site(_template_repo, base, str(base / "server.db"), clock):
        fleet = Fleet(site, clock)
        fleet.node("plain").report(driver="580.65.06")
        node = fleet.node(NODE_ID, pool=POOL)
        retries = urllib3.Retry(total=0, redirect=0, raise_on_redirect=False)
        yield Server(fleet, node, fleet.token("viewer"), urllib3.PoolManager(retries=retries))


def _shown(text: str) -> str:
    """``text`` as the report shows it: as the server received it (a high and a low
    surrogate escaped side by side in JSON arrive as one character), as text."""
    return unicode_text(json.loads(json.dumps(text)))


def _in_html(text: str, page: str) -> bool:
    return html.escape(_shown(text), quote=True) in page


@pytest.mark.parametrize("fmt", ["json", "html", "pdf", "csv"])
@settings(max_examples=25, deadline=None)
@given(texts=TEXTS, scope=st.sampled_from(["fleet", "node"]))
def test_any_reported_text_renders_in_the_compliance_report(
    server: Server, fmt: str, texts: Texts, scope: str
) -> None:
    server.send(texts)
    path = "/v1/reports/fleet" if scope == "fleet" else f"/v1/reports/nodes/{NODE_ID}"
    body = server.get(f"{path}?format={fmt}").data
    if fmt == "json":
        nodes = {n["node_id"]: n for n in json.loads(body)["nodes"]}
        node = nodes[NODE_ID]
        if scope == "fleet":  # the other node is shown as before
            assert nodes["plain"]["driver"]["version"] == "580.65.06"
        assert node["updates"]["history"][0]["reason"] == _shown(texts.reason[:1024])
        assert node["kernel"]["hold_error"] == (_shown(texts.reason[:1024]) or None)
    elif fmt == "html":
        page = body.decode()  # strict: the report is UTF-8
        assert _in_html(texts.reason[:1024], page)
        assert "<script>" not in page and "<img" not in page
    elif fmt == "csv":
        rows = {r["Node"]: r for r in csv.DictReader(io.StringIO(body.decode(), newline=""))}
        expected = inert(_shown(texts.reason[:1024]) or "unknown")
        assert rows[NODE_ID]["Kernel hold error"] == expected
        assert not rows[NODE_ID]["Kernel hold error"].startswith(("=", "+", "-", "@"))
    else:
        assert body.startswith(b"%PDF-") and body.rstrip().endswith(b"%%EOF")


@settings(max_examples=25, deadline=None)
@given(texts=TEXTS)
def test_any_reported_text_renders_on_the_dashboard(server: Server, texts: Texts) -> None:
    server.send(texts)
    page = server.page(f"/nodes/{NODE_ID}")
    assert _in_html(texts.reason[:1024], page) and _in_html(texts.other[:512], page)
    # The GPU table: the GPU's name and its problems.
    assert _in_html(texts.name[:128], page) and _in_html(texts.finding[:512], page)
    assert "<script>" not in page and "<img" not in page
    overview = server.page("/")
    assert f'href="/nodes/{NODE_ID}"' in overview and 'id="stragglers"' in overview
    # Whatever is typed into the node search comes back in its box, as text.
    typed = _shown(texts.other)[:128]
    searched = server.page("/?q=" + quote(typed, safe=""))
    assert f'value="{html.escape(typed.strip(), quote=True)}"' in searched
    assert "<script>" not in searched and "<img" not in searched


def test_a_lone_surrogate_is_read_as_a_replacement_character() -> None:
    report = HealthReport.from_dict(
        {**report_doc("n1", update="failed"), "reason": "a\ud800b\udfff", "bundle": "\udc80"}
    )
    assert (report.reason, report.bundle) == ("a\ufffdb\ufffd", "\ufffd")
    assert report.canonical_json.decode("ascii").count("\\ufffd") == 3
    # Valid text, surrogate pairs spelled in JSON included, is read as sent.
    sent = json.loads('{"reason": "\\ud83d\\ude00 ok \\u202e"}')["reason"]
    assert HealthReport.from_dict({**report_doc("n1"), "reason": sent}).reason == "😀 ok \u202e"


@given(texts=TEXTS)
@settings(max_examples=200, deadline=None, database=None)
def test_no_lone_surrogate_survives_the_reader(texts: Texts) -> None:
    """The reader looks for surrogates in the report's canonical JSON, not string by
    string: whatever a node sends in any of its text fields, what is read holds no
    lone surrogate, and the encoding its digest binds is that of what was read."""
    report = HealthReport.from_dict(texts.report("n1"))
    assert report.reason == unicode_text(texts.reason[:1024])
    doc = report.to_dict()
    assert unicode_texts(doc) == doc
    assert report.canonical_json == canonical_json(doc)


def test_reports_stored_before_the_fix_still_render(fleet: Fleet) -> None:
    """A row a server stored before the reader replaced lone surrogates, and an
    attestation verdict holding one, on each store backend."""
    read = HealthReport.from_dict(report_doc("old", update="failed"))
    poisoned = dataclasses.replace(read, reason="stored \ud800 reason")  # as read before
    verdict = AttestationVerdict(
        False, 1, "ef" * 32, "default", ("event \udc80 refused",), secure_boot=None
    )
    now = int(fleet.clock())

    async def write(svc: Services) -> None:
        await svc.store.enroll(
            EnrolledNode(node_id="old", public_key=bytes(32), pool="default", attested=False,
                         attestation="unattested", enrolled_at=now)
        )  # fmt: skip
        await svc.store.add_report(poisoned, now, "127.0.0.1", "n-1", verdict)

    fleet.site.server.call(write)
    server = Server(fleet, SimNode(fleet.url, "old"), fleet.token("viewer"),
                    urllib3.PoolManager(retries=False))  # fmt: skip
    for path in ("/v1/reports/fleet", "/v1/reports/nodes/old"):
        [node] = json.loads(server.get(f"{path}?format=json").data)["nodes"]
        assert node["updates"]["history"][0]["reason"] == "stored \ufffd reason"
        assert node["attestation"]["reasons"] == ["event \ufffd refused"]
        page = server.get(f"{path}?format=html").data.decode()
        assert "event \ufffd refused" in page  # an exception: the boot failed its policy
        # The update history is the node report's; the fleet's is in the evidence file.
        assert ("stored \ufffd reason" in page) == path.endswith("/old")
        assert "event \ufffd refused" in server.get(f"{path}?format=csv").data.decode()
        assert server.get(f"{path}?format=pdf").data.startswith(b"%PDF-")
    page = server.page("/nodes/old")
    assert "stored \ufffd reason" in page and "event \ufffd refused" in page
    server.page("/")


def _pdf_text(pdf: bytes, folder: Path) -> str:
    (folder / "r.pdf").write_bytes(pdf)
    subprocess.run(["pdftotext", str(folder / "r.pdf"), str(folder / "r.txt")], check=True)
    return (folder / "r.txt").read_text()


def test_a_word_longer_than_the_page_wraps_in_the_pdf(server: Server, tmp_path: Path) -> None:
    word = "Q" * 1024
    server.send(Texts(word, "n", "f", "o"))
    text = _pdf_text(server.get(f"/v1/reports/nodes/{NODE_ID}?format=pdf").data, tmp_path)
    lines = [line for line in text.splitlines() if set(line) == {"Q"}]
    assert len(lines) > 3 and "".join(lines).count(word) >= 1  # every character, wrapped


def _page_width(page: str, tmp_path: Path) -> int:
    """How wide headless chromium lays ``page`` out in a 1280-pixel window.

    A copy in a file (no CSP header) with a script that leaves the width in the title.
    """
    copy = tmp_path / "page.html"
    measure = "<script>document.title = 'width ' + document.documentElement.scrollWidth</script>"
    copy.write_text(page.replace("</body>", measure + "</body>"))
    dom = chromium(tmp_path, "--window-size=1280,1000", "--dump-dom", copy.as_uri())
    found = re.search(r"<title>width (\d+)</title>", dom)
    assert found, dom[:2000]
    return int(found.group(1))


def test_a_word_longer_than_the_page_wraps_in_html(server: Server, tmp_path: Path) -> None:
    server.send(Texts("W" * 1024, "n", "f", "B" * 512))
    report = server.get(f"/v1/reports/nodes/{NODE_ID}?format=html").data.decode()
    assert "W" * 1024 in report
    assert _page_width(report, tmp_path) <= 1280
    page = server.page(f"/nodes/{NODE_ID}")
    assert "W" * 1024 in page and "B" * 512 in page
    assert _page_width(page, tmp_path) <= 1280
