"""The overview's node list over HTTP on each store backend: search, filters, and
keyset pages followed by their own links, forwards and back."""

from __future__ import annotations

import html
import re
from urllib.parse import quote

import urllib3

from server.dashboard import SUMMARY_TTL_S
from tests.conftest import Fleet
from tests.simnode import dashboard_sign_in

NO_REDIRECT = urllib3.PoolManager(
    retries=urllib3.Retry(total=0, redirect=0, raise_on_redirect=False)
)


class Dashboard:
    def __init__(self, fleet: Fleet) -> None:
        self.url = fleet.url
        self.cookie = dashboard_sign_in(fleet.url, fleet.token("viewer"))

    def get(self, path: str, status: int = 200) -> str:
        answer = NO_REDIRECT.request("GET", self.url + path, headers={"Cookie": self.cookie})
        assert answer.status == status, (path, answer.data[-1000:])
        return answer.data.decode()

    def listed(self, path: str) -> list[str]:
        page = self.get(path)
        table = page[page.index('<table id="nodes">') :].split("</table>", 1)[0]
        return re.findall(r'<tr><td><a href="/nodes/([^"]+)">', table)


def _link(page: str, link_id: str) -> str | None:
    found = re.search(rf'<a href="([^"]*)" id="{link_id}">', page)
    return None if found is None else html.unescape(found.group(1))


def test_search_filters_and_pages(fleet: Fleet) -> None:
    ids = [f"gpu-{i:02}" for i in range(7)]
    nodes = [fleet.node(n, pool="prod" if i % 2 else "test") for i, n in enumerate(ids)]
    for i, node in enumerate(nodes[:6]):
        sent = node.report(driver="580.65.06" if i < 3 else "580.82.07", healthy=i != 4)
        assert sent.status == 202
    fleet.clock.advance(300)
    for node in nodes[1:6]:
        node.report(driver="580.65.06" if node.node_id < "gpu-03" else "580.82.07",
                    healthy=node.node_id != "gpu-04")  # fmt: skip
    fleet.clock.advance(800)  # gpu-00 (last heard 1,100 s ago) and gpu-06 (never) are missing
    board = Dashboard(fleet)

    # Pages of three, followed by their links: every node once, in order; and back.
    path: str | None = "/?per_page=3&q=gpu"
    pages = []
    while path is not None:
        page = board.get(path)
        pages.append(board.listed(path))
        path = _link(page, "page-next")
    assert pages == [ids[0:3], ids[3:6], ids[6:7]]
    last = board.get("/?" + f"per_page=3&q=gpu&after={ids[5]}")
    back = _link(last, "page-prev")
    assert back is not None and "q=gpu" in back and "per_page=3" in back
    assert board.listed(back) == ids[3:6]
    assert _link(board.get(back), "page-prev") is not None
    first = board.get(f"/?per_page=3&before={ids[3]}")
    assert board.listed(f"/?per_page=3&before={ids[3]}") == ids[0:3]
    assert _link(first, "page-prev") is None and _link(first, "page-next") is not None

    # Filters, alone and together; the counts on the cards.
    assert board.listed("/?pool=prod") == ["gpu-01", "gpu-03", "gpu-05"]
    assert board.listed("/?state=missing") == ["gpu-00", "gpu-06"]
    assert board.listed("/?state=unhealthy") == ["gpu-04"]
    assert board.listed("/?driver=580.82.07&state=healthy") == ["gpu-03", "gpu-05"]
    assert board.listed("/?driver=none") == ["gpu-06"]
    assert board.listed("/?attestation=unattested&q=-0") == ids
    assert board.listed("/?attestation=failing") == []
    assert board.listed("/?q=GPU-05") == ["gpu-05"]
    empty = board.get("/?q=nothing-like-it")
    assert 'id="no-nodes"' in empty and _link(empty, "page-next") is None
    overview = board.get("/")
    assert 'id="count-missing"><b>2</b>' in overview
    assert 'id="count-unhealthy"><b>1</b>' in overview
    assert "Fleet: 7 nodes" in overview

    # The counts are counted at most every SUMMARY_TTL_S; the list is live.
    assert nodes[4].report(driver="580.82.07").status == 202  # healthy again
    assert 'id="count-unhealthy"><b>1</b>' in board.get("/")
    assert board.listed("/?state=unhealthy") == []
    fleet.clock.advance(SUMMARY_TTL_S)
    assert 'id="count-unhealthy"><b>0</b>' in board.get("/")

    # What a filter cannot be is answered 400, naming it.
    for bad in ("state=sideways", "per_page=0", "per_page=501", "q=" + "x" * 129):
        assert "Bad node filter" in board.get(f"/?{bad}", status=400)


def test_the_search_box_shows_any_text_escaped(fleet: Fleet) -> None:
    board = Dashboard(fleet)
    hostile = '"><script>alert(1)</script>\u202e&amp;'
    page = board.get("/?q=" + quote(hostile))
    assert "<script>alert" not in page
    assert f'value="{html.escape(hostile, quote=True)}"' in page
