"""The OpenAPI document is valid and complete, and fuzzing every operation in it
against the live server (schemathesis) finds no 5xx.

Operator operations are called with an admin token; node operations are signed
by an enrolled node over the exact body sent, so the fuzzer reaches the report
parser and the assignment lookup, not only the signature check.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import urllib3
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from server.app import ROUTES
from server.http import Route
from tests.conftest import Site, make_site
from tests.simnode import SimNode


class Live:
    def __init__(self, site: Site) -> None:
        self.site = site
        self.admin = site.server.issue_token("admin")
        self.nodes = {}
        for node_id in ("gpu-1", "gpu-2"):
            node = SimNode(site.url, node_id)
            assert node.enroll().status == 201
            assert node.report().status == 202
            self.nodes[node_id] = node


@pytest.fixture(scope="module")
def live(_template_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    base = tmp_path_factory.mktemp("openapi")
    # A generous bucket: the fuzzer sends many requests as one node.
    for site in make_site(_template_repo, base, str(base / "s.db"), node_burst=100_000):
        site.publish("580.95.05")
        yield Live(site)


def test_document_lists_every_route_with_its_security(live: Live) -> None:
    doc = json.loads(urllib3.request("GET", f"{live.site.url}/v1/openapi.json").data)
    assert doc["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {(r.method, r.path) for r in ROUTES if r.in_openapi}
    assert documented == served
    security: dict[str, list[dict[str, list[str]]]] = {
        "public": [],
        "node": [{"nodeSignature": []}],
    }
    for route in ROUTES:
        if not route.in_openapi:
            continue
        op = doc["paths"][route.path][route.method.lower()]
        expected = security.get(route.auth, [{"operatorToken": []}])
        assert op["security"] == expected, route.path
    assert {"/v1/enroll", "/v1/reports", "/v1/nodes/{node_id}/assignment"} <= set(doc["paths"])


def _send_signed(live: Live, case: Any) -> urllib3.BaseHTTPResponse:
    """Send the generated request signed by gpu-1 (node operations take no query)."""
    node = live.nodes["gpu-1"]
    if isinstance(case.body, bytes):
        body = case.body
    elif case.media_type:
        body = json.dumps(case.body).encode()
    else:
        body = b""
    headers = node.headers(case.method, case.formatted_path, body)
    if body:
        headers["Content-Type"] = "application/json"
    return urllib3.request(
        case.method,
        live.site.url + case.formatted_path,
        body=body or None,
        headers=headers,
        retries=False,
    )


def _operations(live: Live) -> list[Any]:
    doc = json.loads(urllib3.request("GET", f"{live.site.url}/v1/openapi.json").data)
    operations: list[Any] = []
    for result in schemathesis.openapi.from_dict(doc).get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    return operations


def _check(live: Live, route: Route, case: Any) -> None:
    if route.auth == "node":
        response = _send_signed(live, case)
        assert response.status < 500, (case.method, case.formatted_path, response.data)
        return
    sent = case.call(
        base_url=live.site.url, headers={"Authorization": f"Bearer {live.admin}"}, timeout=30
    )
    case.validate_response(sent, checks=[not_a_server_error])


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_operation_answers_5xx(live: Live, mode: GenerationMode) -> None:
    # schemathesis' pytest plugin does not load under this pytest, so its
    # strategies drive hypothesis directly: the same generated cases and check.
    operations = _operations(live)
    assert len(operations) == sum(1 for r in ROUTES if r.in_openapi)
    for operation in operations:
        route = next(
            r for r in ROUTES if r.path == operation.path and r.method == operation.method.upper()
        )
        if mode is GenerationMode.NEGATIVE and not route.request:
            continue  # free-form string parameters: there is nothing invalid to make
        _fuzzer(live, route, operation.as_strategy(generation_mode=mode))()


def _fuzzer(live: Live, route: Route, cases: Any) -> Callable[[], None]:
    @given(case=cases)
    @settings(
        max_examples=20,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
    )
    def fuzz(case: Any) -> None:
        _check(live, route, case)

    return fuzz
