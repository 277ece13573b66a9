"""The server's settings, one frozen value built by the command line or a test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerConfig:
    repo: Path
    db: str  # store URL: a path, sqlite:///path or postgresql://...
    director: Path | None = None  # the director repository, served per node when set
    host: str = "127.0.0.1"
    port: int = 8470
    # Heartbeats: nodes report every report_interval_s; one silent for
    # missing_after intervals is shown as missing.
    report_interval_s: int = 300
    missing_after: int = 3
    # Per-node token bucket: sustained requests per second and burst.
    node_rate_per_s: float = 1.0
    node_burst: int = 20
    request_timeout_s: float = 30.0
    rollout_tick_s: float = 15.0
    # The no-TPM enrollment mode: nodes presenting this shared secret are
    # enrolled and shown as unattested. None: only an injected verifier enrolls.
    unattested_enrollment_token: str | None = None
    # TPM enrollment: EK certificates must chain to these CA files (or folders of
    # them); empty: no TPM enrollment.
    ek_ca: tuple[Path, ...] = ()
    # The least PCR selection a node's quotes must cover.
    required_pcrs: str = "sha256:0-9"
