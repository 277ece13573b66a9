"""``gpuward demo``: the whole loop on one machine, in under a minute.

An operator creates keys and publishes driver bundles; the real server serves
them on a loopback port; three agents with simulated GPUs update, one of them
rejects a driver that fails its health check and rolls back; the fleet table
comes from the server's API. Everything lives in a temporary directory and the
server thread is stopped before returning.
"""

from __future__ import annotations

import json
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3

from agent.identity import enroll
from gpuward.cli.output import table
from gpuward.node import run_once
from keys.bundle import build_bundle
from keys.image_repo import ImageRepository
from node.config import AgentConfig, ApplierSettings, SimulatedGpus
from server.config import ServerConfig
from server.lifecycle import BackgroundServer

NODES = ("node-1", "node-2", "node-3")
VERSIONS = ("580.65.06", "580.82.07", "580.95.05")
FAILING = {"node-2": VERSIONS[2]}  # node-2's GPUs misbehave under the third driver


def run_demo(
    workdir: Path | None = None, say: Callable[[str], None] = lambda line: print(line, flush=True)
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="gpuward-demo-") as tmp:
        base = workdir or Path(tmp)
        return _story(base, say)


def _story(base: Path, say: Callable[[str], None]) -> list[dict[str, Any]]:
    passphrase = secrets.token_urlsafe(16)
    say("gpuward demo: signed driver updates with automatic rollback, end to end\n")
    repo = ImageRepository.init(base / "repo", passphrase)
    say(f"operator  created an image repository in {repo.root}")
    say("          root and targets keys are sealed with a passphrase (argon2id + secretbox)")

    def publish(version: str) -> None:
        payload = base / "payloads" / version
        payload.mkdir(parents=True)
        (payload / f"libnvidia-ml.so.{version}").write_text(f"simulated NVML {version}\n")
        bundle = base / f"nvidia-{version}.bundle"
        build_bundle(
            payload,
            driver_version=version,
            branch="R580",
            payload_kind="files",
            output=bundle,
            dkms=True,
        )
        published = repo.add_bundle(bundle, lambda: passphrase)
        say(f"operator  published {published.target_path} (sha256 {published.sha256[:12]}…)")

    enrollment_token = secrets.token_urlsafe(24)
    (base / "enrollment-token").write_text(enrollment_token)
    config = ServerConfig(
        repo=repo.root,
        db=str(base / "server.db"),
        port=0,
        unattested_enrollment_token=enrollment_token,
    )
    with BackgroundServer(config) as server:
        say(f"server    listening on {server.url}; serves the signed repository, stores reports\n")
        configs = [_agent_config(base, repo, server.url, node) for node in NODES]
        for agent in configs:
            enroll(agent)
        say(
            f"agents    {', '.join(NODES)} enrolled: each signs its reports with its own "
            "Ed25519 key\n          (no TPM here: the enrollment token vouches, so the server "
            "shows them as unattested)\n"
        )

        def cycle(title: str) -> None:
            say(title)
            for config in configs:
                result = run_once(config)
                report = result.report
                say(
                    f"  {config.node_id}  {result.outcome.update:<11} slot {report.active_slot} "
                    f"driver {report.driver_version}  {result.outcome.reason}"
                )
            say("")

        publish(VERSIONS[0])
        cycle("agents    first cycle: install the only bundle of R580")
        publish(VERSIONS[1])
        cycle("agents    a newer driver is published: each moves to the inactive slot")
        publish(VERSIONS[2])
        cycle(f"agents    {VERSIONS[2]} is published; node-2's GPUs fail under it")
        cycle("agents    next cycle: node-2 does not retry the driver that failed there")

        fleet = _fetch_fleet(server.url, server.issue_token("viewer", "demo"))
    say("server    fleet, as reported to GET /v1/fleet (with a viewer token):")
    say(
        table(
            ("NODE", "STATE", "ATTESTATION", "SLOT", "DRIVER", "GPUS", "HEALTHY", "LAST UPDATE"),
            [
                (
                    n["node_id"],
                    n["state"],
                    n["attestation"],
                    n["report"]["active_slot"],
                    n["report"]["driver_version"],
                    len(n["report"]["gpus"]),
                    "yes" if all(g["healthy"] for g in n["report"]["gpus"]) else "no",
                    n["report"]["update"],
                )
                for n in fleet
            ],
        )
    )
    say("\nserver stopped; nothing is left running.")
    return fleet


def _agent_config(base: Path, repo: ImageRepository, url: str, node: str) -> AgentConfig:
    unhealthy = frozenset({FAILING[node]}) if node in FAILING else frozenset()
    return AgentConfig(
        node_id=node,
        server_url=url,
        trusted_root=repo.metadata_dir / "1.root.json",
        branch="R580",
        root_dir=base / "hosts" / node,
        health_backend="simulated",
        simulated=SimulatedGpus(count=8, unhealthy_drivers=unhealthy),
        enrollment_token_file=base / "enrollment-token",
        # The demo's hosts are folders: the agent plays the root applier's part too.
        applier=ApplierSettings(mode="inline"),
    )


def _fetch_fleet(url: str, token: str) -> list[dict[str, Any]]:
    response = urllib3.request(
        "GET", f"{url}/v1/fleet", headers={"Authorization": f"Bearer {token}"}, timeout=10.0
    )
    nodes: list[dict[str, Any]] = json.loads(response.data)["nodes"]
    return nodes
