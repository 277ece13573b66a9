"""Operator tokens: required, role-checked, stored hashed, shown once."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import urllib3

from server.operators import token_hash
from tests.conftest import Fleet
from tests.simnode import operator_get, operator_post

READS = ("/v1/fleet", "/v1/nodes/gpu-1", "/v1/pools", "/v1/rollouts", "/v1/rollouts/r1")


def test_operator_endpoints_refuse_missing_and_unknown_tokens(fleet: Fleet) -> None:
    fleet.node("gpu-1")
    for path in READS:
        for token in (None, "gwt_" + "A" * 43, "not-a-token"):
            response = operator_get(fleet.url, path, token)
            assert response.status == 401, (path, token)
            assert response.headers["WWW-Authenticate"] == "Bearer"
    basic = urllib3.request(
        "GET", f"{fleet.url}/v1/fleet", headers={"Authorization": "Basic abc"}, retries=False
    )
    assert basic.status == 401


def test_roles_are_ordered_viewer_operator_admin(fleet: Fleet) -> None:
    fleet.node("gpu-1")
    viewer, operator, admin = (fleet.token(r) for r in ("viewer", "operator", "admin"))
    assert operator_get(fleet.url, "/v1/fleet", viewer).status == 200
    assert operator_get(fleet.url, "/v1/nodes/gpu-1", viewer).status == 200
    body = {"pool": "default", "target": "drivers/R580/none.bundle"}
    denied = operator_post(fleet.url, "/v1/rollouts", viewer, body)
    assert denied.status == 403 and "operator role" in json.loads(denied.data)["error"]
    assert operator_post(fleet.url, "/v1/rollouts", operator, body).status == 404  # no such target
    delete = {"Authorization": f"Bearer {operator}"}
    url = f"{fleet.url}/v1/nodes/gpu-1"
    assert urllib3.request("DELETE", url, headers=delete, retries=False).status == 403
    delete = {"Authorization": f"Bearer {admin}"}
    assert urllib3.request("DELETE", url, headers=delete, retries=False).status == 200


def test_pools_and_node_history(fleet: Fleet) -> None:
    a, _b = fleet.node("gpu-1", pool="prod"), fleet.node("gpu-2", pool="dev")
    a.report(update="up-to-date")
    fleet.clock.advance(60)
    a.report(update="committed")
    viewer = fleet.token("viewer")
    pools = json.loads(operator_get(fleet.url, "/v1/pools", viewer).data)
    assert pools == {"pools": [{"pool": "dev", "nodes": 1}, {"pool": "prod", "nodes": 1}]}
    node = json.loads(operator_get(fleet.url, "/v1/nodes/gpu-1?limit=1", viewer).data)
    assert [h["report"]["update"] for h in node["history"]] == ["committed"]
    assert operator_get(fleet.url, "/v1/nodes/gpu-1?limit=0", viewer).status == 400
    assert operator_get(fleet.url, "/v1/nodes/nope", viewer).status == 404


@pytest.mark.parametrize("role", ["viewer", "admin"])
def test_token_create_prints_it_once_and_stores_only_its_hash(tmp_path: Path, role: str) -> None:
    db = tmp_path / "s.db"
    result = subprocess.run(
        [sys.executable, "-m", "gpuward", "server", "token", "create", "--role", role,
         "--db", str(db), "--name", "ci", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    token = json.loads(result.stdout)["token"]
    assert token.startswith("gwt_")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT token_hash, name, role FROM operator_tokens").fetchall()
    assert rows == [(token_hash(token), "ci", role)]
    assert token not in db.read_bytes().decode(errors="replace")
