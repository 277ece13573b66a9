"""The agent's configuration file (TOML) and the paths derived from it.

Everything the agent may contact is named here: the server URL is the only
outbound destination. ``root_dir`` exists so tests and the demo run whole
agents inside a temporary directory instead of the host's /var/lib.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fleet.branches import require_branch
from fleet.errors import GpuwardError
from fleet.report import NODE_ID
from fleet.rollout import POOL
from fleet.schema import Reader

HEALTH_BACKENDS = frozenset({"nvml", "simulated"})
_VERSION = re.compile(r"\d{3,4}\.\d{1,3}(?:\.\d{1,3})?")


@dataclass(frozen=True)
class SimulatedGpus:
    """A stand-in for GPUs on hosts without any: the driver 'loads' from the active slot."""

    count: int = 8
    name: str = "NVIDIA H100 80GB HBM3"
    unhealthy_drivers: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AgentConfig:
    node_id: str
    server_url: str
    trusted_root: Path
    branch: str
    root_dir: Path = Path("/")
    interval_s: float = 300.0
    health_backend: str = "nvml"
    simulated: SimulatedGpus = SimulatedGpus()
    pool: str = "default"  # the rollout pool the node enrolls into
    # The no-TPM enrollment mode: a file holding the operator's enrollment token.
    enrollment_token_file: Path | None = None

    @property
    def state_dir(self) -> Path:
        return self.root_dir / "var/lib/gpuward"

    @property
    def metadata_dir(self) -> Path:
        return self.state_dir / "tuf/image"

    @property
    def download_dir(self) -> Path:
        return self.state_dir / "downloads"

    @property
    def slots_dir(self) -> Path:
        return self.state_dir / "slots"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def key_file(self) -> Path:
        return self.state_dir / "node.key"

    @property
    def metadata_url(self) -> str:
        return f"{self.server_url}/v1/repo/metadata/"

    @property
    def targets_url(self) -> str:
        return f"{self.server_url}/v1/repo/targets/"

    @property
    def reports_url(self) -> str:
        return f"{self.server_url}/v1/reports"

    @property
    def enroll_url(self) -> str:
        return f"{self.server_url}/v1/enroll"

    @classmethod
    def from_dict(cls, doc: dict[str, Any], base: Path) -> AgentConfig:
        """Build from parsed TOML; relative paths are relative to the file's folder."""
        r = Reader(
            doc,
            "agent config",
            allowed=frozenset(
                {
                    "node_id",
                    "server_url",
                    "trusted_root",
                    "branch",
                    "root_dir",
                    "interval_s",
                    "health_backend",
                    "simulated",
                    "pool",
                    "enrollment_token_file",
                }
            ),
        )
        server_url = r.text("server_url", max_len=2048).rstrip("/")
        parsed = urlparse(server_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise GpuwardError(f"agent config: server_url {server_url!r} must be an http(s) URL")
        branch = r.text("branch", max_len=8)
        require_branch(branch)
        token_file = r.optional_text("enrollment_token_file")
        return cls(
            node_id=r.text("node_id", pattern=NODE_ID, max_len=128),
            server_url=server_url,
            trusted_root=base / r.text("trusted_root"),
            branch=branch,
            root_dir=base / r.text("root_dir", default="/"),
            interval_s=float(r.integer("interval_s", minimum=1, maximum=86_400, default=300)),
            health_backend=r.text("health_backend", choices=HEALTH_BACKENDS, default="nvml"),
            simulated=_simulated(doc.get("simulated", {})),
            pool=r.text("pool", pattern=POOL, default="default"),
            enrollment_token_file=None if token_file is None else base / token_file,
        )


def _simulated(doc: object) -> SimulatedGpus:
    r = Reader(
        doc, "agent config [simulated]", allowed=frozenset({"count", "name", "unhealthy_drivers"})
    )
    default = SimulatedGpus()
    unhealthy = r.items("unhealthy_drivers", max_items=64, default=[])
    for version in unhealthy:
        if not isinstance(version, str) or not _VERSION.fullmatch(version):
            raise GpuwardError(f"agent config [simulated]: bad driver version {version!r}")
    return SimulatedGpus(
        count=r.integer("count", minimum=1, maximum=64, default=default.count),
        name=r.text("name", max_len=128, default=default.name),
        unhealthy_drivers=frozenset(unhealthy),
    )


def load_config(path: Path) -> AgentConfig:
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise GpuwardError(f"agent config {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise GpuwardError(f"agent config {path}: not valid TOML ({exc})") from None
    return AgentConfig.from_dict(doc, base=path.parent)
