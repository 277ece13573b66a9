"""Fixtures shared by every test area: a signed repository, the real server, agents.

Creating keys costs seconds (argon2id on purpose), so one repository is made per
session and copied for each test that needs one.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import urllib3

from agent.identity import enroll
from keys.bundle import build_bundle
from keys.director_repo import DirectorRepository
from keys.image_repo import ImageRepository, PublishedBundle
from node.config import AgentConfig, ApplierSettings, DirectorSettings, SimulatedGpus
from server.config import ServerConfig
from server.lifecycle import BackgroundServer
from tests.simnode import ENROLLMENT_TOKEN, FakeClock, SimNode

PASSPHRASE = "correct horse battery staple"
GPU_NAME = "NVIDIA H100 80GB HBM3"

# Where tests create (and drop) their PostgreSQL databases; CI runs one here.
POSTGRES_ADMIN = os.environ.get(
    "GPUWARD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database of its own, dropped afterwards."""
    name = f"gpuward_test_{secrets.token_hex(6)}"
    asyncio.run(_admin(f"CREATE DATABASE {name}"))
    try:
        yield POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(_admin(f"DROP DATABASE {name} WITH (FORCE)"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on each store backend."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'fleet.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="session")
def _template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("template") / "repo"
    ImageRepository.init(root, PASSPHRASE)
    return root


@pytest.fixture(scope="session")
def _template_director(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("template") / "director"
    DirectorRepository.init(root, PASSPHRASE)
    return root


@dataclass
class Site:
    """A repository, its operator's publishing hand, and the server serving it."""

    repo: ImageRepository
    base: Path
    server: BackgroundServer
    director: DirectorRepository | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def bundle(
        self, version: str, branch: str = "R580", content: bytes | None = None, **build: Any
    ) -> Path:
        """A bundle of a one-file payload; ``build`` overrides ``build_bundle`` arguments."""
        payload = self.base / "payloads" / version
        payload.mkdir(parents=True, exist_ok=True)
        (payload / "libnvidia-ml.so.1").write_bytes(content or f"NVML {version}\n".encode())
        output = self.base / f"nvidia-{version}.bundle"
        options: dict[str, Any] = {"dkms": not build.get("kernels"), **build}
        build_bundle(
            payload,
            driver_version=version,
            branch=branch,
            payload_kind="files",
            output=output,
            **options,
        )
        return output

    def publish(self, version: str, branch: str = "R580", **build: Any) -> PublishedBundle:
        return self.repo.add_bundle(self.bundle(version, branch, **build), lambda: PASSPHRASE)

    def served_target(self, published: PublishedBundle) -> Path:
        folder, name = published.target_path.rsplit("/", 1)
        return self.repo.targets_dir / folder / f"{published.sha256}.{name}"

    def fleet(self) -> dict[str, dict[str, Any]]:
        """``GET /v1/fleet`` as a viewer, by node id."""
        token = self.server.issue_token("viewer")
        response = urllib3.request(
            "GET", f"{self.url}/v1/fleet", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status == 200, response.data
        return {n["node_id"]: n for n in json.loads(response.data)["nodes"]}

    @property
    def enrollment_token_file(self) -> Path:
        return self.base / "enrollment-token"

    def agent_toml(
        self,
        folder: Path,
        server_url: str | None = None,
        extra: str = "",
        *,
        mode: str = "inline",
        health_backend: str = "simulated",
    ) -> Path:
        """An agent config file for a host living under ``folder``.

        ``mode`` is the ``[applier]`` mode: by default the agent runs the applier's
        state machine in-process (``gpuward.node``); ``"applier"`` leaves it to
        ``gpuward agent apply``, as a packaged node does.
        """
        path = folder / "agent.toml"
        table = f'[applier]\nmode = "{mode}"\n'
        extra = extra.replace("[applier]\n", table) if "[applier]\n" in extra else extra + table
        path.write_text(
            f'node_id = "n1"\nserver_url = "{server_url or self.url}"\n'
            f'trusted_root = "{self.base / "trusted-root.json"}"\nbranch = "R580"\n'
            f'root_dir = "{folder / "host"}"\nhealth_backend = "{health_backend}"\n'
            f'enrollment_token_file = "{self.enrollment_token_file}"\n{extra}'
        )
        return path

    def assign(
        self, node: str, published: PublishedBundle, counter: int, hardware: str = GPU_NAME
    ) -> None:
        info = self.repo.targets(published.manifest.branch).signed.targets[published.target_path]
        assert self.director is not None
        self.director.assign(node, info, hardware, counter)

    def agent(
        self,
        node: str = "node-1",
        unhealthy: frozenset[str] = frozenset(),
        directed: bool = False,
        *,
        enrolled: bool = True,
    ) -> AgentConfig:
        """A simulated host's agent config, enrolled with the server unless told not to."""
        config = AgentConfig(
            node_id=node,
            server_url=self.url,
            trusted_root=self.base / "trusted-root.json",
            branch="R580",
            root_dir=self.base / "hosts" / node,
            health_backend="simulated",
            simulated=SimulatedGpus(count=2, name=GPU_NAME, unhealthy_drivers=unhealthy),
            director=DirectorSettings(self.base / "director-root.json") if directed else None,
            enrollment_token_file=self.enrollment_token_file,
            applier=ApplierSettings(mode="inline"),
        )
        if enrolled and not config.key_file.exists():
            enroll(config)
        return config


def make_site(
    template: Path,
    base: Path,
    db: str,
    clock: Callable[[], float] = time.time,
    director: Path | None = None,
    **settings: Any,
) -> Iterator[Site]:
    """A copy of the template repository (and director) served on loopback, store ``db``."""
    root = base / "repo"
    shutil.copytree(template, root)
    repo = ImageRepository(root)
    # The agent's roots of trust are copies made at install time, not the served files.
    shutil.copyfile(repo.metadata_dir / "1.root.json", base / "trusted-root.json")
    directed = None
    if director is not None:
        shutil.copytree(director, base / "director")
        directed = DirectorRepository(base / "director")
        shutil.copyfile(directed.base.metadata_dir / "1.root.json", base / "director-root.json")
    (base / "enrollment-token").write_text(ENROLLMENT_TOKEN)
    config = ServerConfig(
        repo=root,
        db=db,
        port=0,
        rollout_tick_s=0,  # tests advance rollouts themselves
        director=None if directed is None else directed.root,
        **{
            "unattested_enrollment_token": ENROLLMENT_TOKEN,
            "tpm_enrollment_token": ENROLLMENT_TOKEN,
            **settings,
        },
    )
    with BackgroundServer(config, clock=clock) as server:
        yield Site(repo, base, server, directed)


@pytest.fixture
def site(_template_repo: Path, _template_director: Path, tmp_path: Path) -> Iterator[Site]:
    yield from make_site(
        _template_repo, tmp_path, str(tmp_path / "server.db"), director=_template_director
    )


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, str], Path]:
    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@dataclass
class Fleet:
    """A server on one store backend (``db_url``), on a clock the test moves."""

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
