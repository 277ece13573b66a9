"""The node refuses incompatible bundles itself, whatever it is told to install."""

from __future__ import annotations

import dataclasses

from structlog.testing import capture_logs
from tuf.api.metadata import TargetFile

from fleet.catalog import TARGET_PATH
from gpuward.node import run_once
from node.config import AgentConfig
from node.slots import Slots
from tests.conftest import PASSPHRASE, Site


def _with(config: AgentConfig, **changes: object) -> AgentConfig:
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def _incompatible(config: AgentConfig, code: str) -> None:
    with capture_logs() as logs:
        result = run_once(config)
    assert result.outcome.update == "refused", result.outcome
    events = [e for e in logs if e["event"] == "update_incompatible"]
    assert events and code in events[0]["codes"], events
    assert Slots(config.slots_dir).active() is None  # nothing was staged or switched


def test_no_module_for_the_running_kernel(site: Site) -> None:
    site.publish("580.95.05", kernels=["6.1.0-99-amd64"])
    _incompatible(_with(site.agent(), kernel="6.8.0-45-generic"), "no-kernel-module")
    assert run_once(_with(site.agent(), kernel="6.1.0-99-amd64")).outcome.update == "committed"


def test_bundle_without_the_nodes_architecture(site: Site) -> None:
    site.publish("580.95.05", architectures=["Blackwell"])
    _incompatible(site.agent(), "arch-not-in-bundle")


def test_cuda_requirement_above_the_driver(site: Site) -> None:
    site.publish("580.95.05")
    assert run_once(_with(site.agent(), required_cuda="13.0")).outcome.update == "committed"
    site.publish("580.95.06")
    _incompatible(_with(site.agent("node-2"), required_cuda="13.9"), "cuda-too-new")


def test_a_malformed_signed_catalog_is_ignored(site: Site) -> None:
    """Even a validly signed but broken catalog cannot take the gate down."""
    junk = b'{"schema": 1, "catalog_version": 99, "branches": "oops"}'
    info = TargetFile.from_data(TARGET_PATH, junk, ["sha256"])
    targets = site.repo.targets()
    targets.signed.targets[TARGET_PATH] = info
    (site.repo.targets_dir / "catalog").mkdir(parents=True, exist_ok=True)
    (site.repo.targets_dir / "catalog" / f"{info.hashes['sha256']}.catalog.json").write_bytes(junk)
    site.repo.bump(targets, "targets")
    site.repo.sign_and_write(targets, lambda: PASSPHRASE)
    site.repo.publish_snapshot({"targets": targets.signed.version})
    site.publish("580.95.05")

    with capture_logs() as logs:
        result = run_once(site.agent())

    assert result.outcome.update == "committed"
    assert any(e["event"] == "catalog_rejected" for e in logs)
