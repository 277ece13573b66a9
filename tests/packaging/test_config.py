"""The configuration files the packages install.

The agent's example config ships with every setting commented out, so that a
freshly installed node refuses to run until it is configured. Uncommented, it
must be a valid config for both readers of that file (the agent and the
firewall), with the defaults the code has.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config
from agent.firewall.policy import FirewallPolicy
from fleet.errors import GpuwardError
from tests.packaging.conftest import REPO

EXAMPLE = REPO / "packaging/agent.toml"
SETTING = re.compile(r"^# (?=[a-z_]+ = |\[)", re.M)  # "# key = ..." and "# [table]", not prose


def test_shipped_config_refuses_to_run_until_configured() -> None:
    with pytest.raises(GpuwardError, match="missing field"):
        load_config(EXAMPLE)


def test_example_settings_are_valid_and_match_the_defaults(tmp_path: Path) -> None:
    uncommented = tmp_path / "agent.toml"
    uncommented.write_text(SETTING.sub("", EXAMPLE.read_text()))
    config = load_config(uncommented)
    assert config.trusted_root == Path("/etc/gpuward/root.json")
    assert config.root_dir == Path("/")
    assert config.interval_s == AgentConfig.interval_s
    assert config.health_backend == AgentConfig.health_backend
    # The packaged mode is the default: the agent hands bundles to the root applier.
    assert replace(config.applier, smoke_test=()) == AgentConfig.applier
    assert config.applier.mode == "applier"
    policy = FirewallPolicy.from_dict(tomllib.loads(uncommented.read_text())["firewall"])
    assert policy.mode == "host"
    assert policy.state_file == FirewallPolicy.state_file
    assert policy.check_interval_s == FirewallPolicy.check_interval_s


def test_server_settings_name_what_the_unit_uses() -> None:
    settings = dict(
        line.split("=", 1)
        for line in (REPO / "packaging/server.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    unit = (REPO / "systemd/gpuward-server.service").read_text()
    assert set(settings) == set(re.findall(r"\$\{(\w+)\}", unit))
