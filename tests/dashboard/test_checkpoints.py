"""The dashboard's checkpoint page over HTTP on each store backend: each pool's
figures are the API's for the same job, and whatever the form is given, the page
answers with a message (escaped), never an error page."""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import urlencode

from fleet.human_time import duration
from server.dashboard import DEFAULT_JOB
from tests.conftest import Fleet
from tests.dashboard.test_node_list import NO_REDIRECT, Dashboard
from tests.server.test_checkpoint_advice import HOUR_S, advice, send


def rows(page: str) -> dict[str, list[str]]:
    """The advice table's rows by their first cell (the pool), cells as text."""
    table = page[page.index('<table id="checkpoint-advice">') :].split("</table>", 1)[0]
    found = {}
    for row in re.findall(r"<tr>(.*?)</tr>", table)[1:]:
        cells = [html.unescape(re.sub("<[^>]+>", "", c)) for c in re.findall("<td>(.*?)</td>", row)]
        found[cells[0]] = cells[1:]
    return found


def shown(doc: dict[str, Any], nodes: int) -> list[str]:
    """How the page writes the API's answer ``doc`` for a pool of ``nodes``."""
    per = doc["gpu_hours_per_interruption"]
    spans = [doc[k] for k in ("job_mtbf_s", "daly_interval_s", "young_interval_s")]
    return [
        str(nodes),
        str(doc["interruptions"]),
        f"{doc['gpu_hours']:,.1f}",
        "-" if per is None else f"{per:,.1f}",
        *("-" if s is None else duration(s) for s in spans),
        doc["note"],
    ]


def test_each_pool_shows_what_the_api_answers_for_the_entered_job(fleet: Fleet) -> None:
    prod = [fleet.node(f"prod-{i}", pool="prod") for i in range(2)]
    dev = fleet.node("dev-0", pool="dev")
    quiet = fleet.node("quiet-0", pool="quiet")
    for node in [*prod, dev, quiet]:
        send(fleet, node)
    fleet.clock.advance(2 * HOUR_S)
    send(fleet, prod[0], "failed", (79,))
    send(fleet, dev, "failed", (48,))
    fleet.clock.advance(2 * HOUR_S)
    for node in [*prod, dev, quiet]:
        send(fleet, node)
    board = Dashboard(fleet)
    viewer = fleet.token("viewer")

    page = board.get("/checkpoints?gpus=8&checkpoint_cost=60")
    table = rows(page)
    assert list(table) == ["whole fleet", "dev", "prod", "quiet"]
    for pool, nodes in (("prod", 2), ("dev", 1), ("quiet", 1)):
        status, doc = advice(fleet, viewer, f"pool={pool}&gpus=8&checkpoint_cost=60")
        assert status == 200, doc
        assert table[pool] == shown(doc, nodes), pool
    status, doc = advice(fleet, viewer, "gpus=8&checkpoint_cost=60")
    assert table["whole fleet"] == shown(doc, 4)
    # prod: two one-GPU nodes for four hours, one interruption: a job of 8 GPUs fails
    # every hour, and the quiet pool has no figure to give.
    assert table["prod"][1:5] == ["1", "8.0", "8.0", "60.0 min (3600 s)"]
    assert table["quiet"][4:7] == ["-", "-", "-"]
    assert 'href="/?pool=prod"' in page  # each pool's nodes, a click away
    assert 'value="8"' in page and 'value="60"' in page

    # Without a job entered: the default one, in the form to change.
    first = board.get("/checkpoints")
    assert f'value="{DEFAULT_JOB["gpus"]}"' in first
    assert f'value="{DEFAULT_JOB["checkpoint_cost"]}"' in first
    status, doc = advice(fleet, viewer, urlencode({"pool": "prod", **DEFAULT_JOB}))
    assert rows(first)["prod"] == shown(doc, 2)
    assert 'id="nav-checkpoints"' in board.get("/")  # linked from the overview


HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
BAD_JOBS = [
    ("many", "300", "gpus"),
    ("-8", "300", "gpus"),
    ("0", "300", "gpus"),
    ("10000001", "300", "gpus"),
    ("1" * 5000, "300", "gpus"),  # int() itself refuses this many digits
    ("\u00b2", "300", "gpus"),  # a digit to str.isdigit, not to int()
    ("8.5", "300", "gpus"),
    ("", "300", "gpus"),
    (HOSTILE, "300", "gpus"),
    ("8", "soon", "checkpoint_cost"),
    ("8", "-1", "checkpoint_cost"),
    ("8", "0", "checkpoint_cost"),
    ("8", "nan", "checkpoint_cost"),
    ("8", "inf", "checkpoint_cost"),
    ("8", "1e400", "checkpoint_cost"),
    ("8", "604801", "checkpoint_cost"),  # more than a week
    ("8", HOSTILE, "checkpoint_cost"),
]


def test_bad_input_is_a_message_on_the_page(fleet: Fleet) -> None:
    fleet.node("prod-0", pool="prod")
    board = Dashboard(fleet)
    viewer = fleet.token("viewer")
    for gpus, cost, named in BAD_JOBS:
        query = urlencode({"gpus": gpus, "checkpoint_cost": cost})
        page = board.get(f"/checkpoints?{query}", 400)
        [message] = re.findall(r'<p class="failed" id="bad-job">(.*?)</p>', page)
        assert html.unescape(message).startswith(f"Cannot advise: {named} must be"), query
        assert "<script>" not in page and "<img" not in page
        # What was entered stays in the form, escaped, to be corrected.
        entered = gpus if named == "gpus" else cost
        assert f'value="{html.escape(entered, quote=True)}"' in page
        assert 'id="checkpoint-advice"' not in page
        # The API refuses the same, with the same words.
        status, doc = advice(fleet, viewer, f"pool=prod&{query}")
        assert status == 400 and html.unescape(message) == f"Cannot advise: {doc['error']}."


def test_the_page_needs_a_session(fleet: Fleet) -> None:
    anonymous = NO_REDIRECT.request("GET", f"{fleet.url}/checkpoints?gpus=8&checkpoint_cost=60")
    assert anonymous.status == 303 and anonymous.headers["Location"] == "/login"
    token = fleet.token("viewer")
    with_token = NO_REDIRECT.request(
        "GET", f"{fleet.url}/checkpoints", headers={"Authorization": f"Bearer {token}"}
    )
    assert with_token.status == 303  # pages read the session cookie, never a bearer token
