"""Fixtures shared by every test area: a signed repository, the real server, agents.

Creating keys costs seconds (argon2id on purpose), so one repository is made per
session and copied for each test that needs one.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig, DirectorSettings, SimulatedGpus
from keys.bundle import build_bundle
from keys.director_repo import DirectorRepository
from keys.image_repo import ImageRepository, PublishedBundle
from server.runner import BackgroundServer

PASSPHRASE = "correct horse battery staple"
GPU_NAME = "NVIDIA H100 80GB HBM3"


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
    director: DirectorRepository

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

    def agent_toml(self, folder: Path, server_url: str | None = None, extra: str = "") -> Path:
        """An agent config file for a simulated host living under ``folder``."""
        path = folder / "agent.toml"
        path.write_text(
            f'node_id = "n1"\nserver_url = "{server_url or self.url}"\n'
            f'trusted_root = "{self.base / "trusted-root.json"}"\nbranch = "R580"\n'
            f'root_dir = "{folder / "host"}"\nhealth_backend = "simulated"\n{extra}'
        )
        return path

    def assign(
        self, node: str, published: PublishedBundle, counter: int, hardware: str = GPU_NAME
    ) -> None:
        info = self.repo.targets(published.manifest.branch).signed.targets[published.target_path]
        self.director.assign(node, info, hardware, counter)

    def agent(
        self,
        node: str = "node-1",
        unhealthy: frozenset[str] = frozenset(),
        directed: bool = False,
    ) -> AgentConfig:
        return AgentConfig(
            node_id=node,
            server_url=self.url,
            trusted_root=self.base / "trusted-root.json",
            branch="R580",
            root_dir=self.base / "hosts" / node,
            health_backend="simulated",
            simulated=SimulatedGpus(count=2, name=GPU_NAME, unhealthy_drivers=unhealthy),
            director=DirectorSettings(self.base / "director-root.json") if directed else None,
        )


@pytest.fixture
def site(_template_repo: Path, _template_director: Path, tmp_path: Path) -> Iterator[Site]:
    root = tmp_path / "repo"
    shutil.copytree(_template_repo, root)
    shutil.copytree(_template_director, tmp_path / "director")
    repo = ImageRepository(root)
    director = DirectorRepository(tmp_path / "director")
    # The agent's roots of trust are copies made at install time, not the served files.
    shutil.copyfile(repo.metadata_dir / "1.root.json", tmp_path / "trusted-root.json")
    shutil.copyfile(director.base.metadata_dir / "1.root.json", tmp_path / "director-root.json")
    with BackgroundServer(root, tmp_path / "server.db", director=director.root) as server:
        yield Site(repo, tmp_path, server, director)


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, str], Path]:
    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
