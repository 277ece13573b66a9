"""The dashboard's remediation page on a server without ``[remediation]``: it says
so and how to turn it on (the boards with data, escaping and the audit log's
bound are tested against a real Slurm cluster in tests/remediation)."""

from __future__ import annotations

from tests.conftest import Site
from tests.dashboard.test_node_list import NO_REDIRECT
from tests.simnode import dashboard_sign_in


def test_without_remediation_the_page_says_so(site: Site) -> None:
    cookie = dashboard_sign_in(site.url, site.server.issue_token("viewer"))
    page = NO_REDIRECT.request("GET", f"{site.url}/remediation", headers={"Cookie": cookie})
    assert page.status == 200
    text = page.data.decode()
    assert '<p id="not-configured">Remediation is not configured on this server' in text
    assert "<code>[remediation]</code> table to its server.toml" in text
    assert 'id="remediating"' not in text
    assert 'href="/remediation" id="nav-remediation"' in text


def test_the_page_needs_a_session(site: Site) -> None:
    anonymous = NO_REDIRECT.request("GET", f"{site.url}/remediation")
    assert anonymous.status == 303 and anonymous.headers["Location"] == "/login"
    token = site.server.issue_token("viewer")
    with_token = NO_REDIRECT.request(
        "GET", f"{site.url}/remediation", headers={"Authorization": f"Bearer {token}"}
    )
    assert with_token.status == 303  # pages read the session cookie, never a bearer token
