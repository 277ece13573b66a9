"""A server on each store backend, on a clock the test moves."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Site, make_site
from tests.server.simnode import FakeClock, SimNode


@dataclass
class Fleet:
    site: Site
    clock: FakeClock

    @property
    def url(self) -> str:
        return self.site.url

    def node(self, node_id: str, pool: str = "default", *, enroll: bool = True) -> SimNode:
        node = SimNode(self.url, node_id, pool, self.clock)
        if enroll:
            response = node.enroll()
            assert response.status == 201, response.data
        return node

    def token(self, role: str) -> str:
        return self.site.server.issue_token(role)


@pytest.fixture
def fleet(_template_repo: Path, tmp_path: Path, db_url: str) -> Iterator[Fleet]:
    clock = FakeClock()
    for site in make_site(_template_repo, tmp_path, db_url, clock):
        yield Fleet(site, clock)
