"""The configuration files the packages install.

The agent's example config ships with every setting commented out, so that a
freshly installed node refuses to run until it is configured. Uncommented, it
must be a valid config for both readers of that file (the agent and the
firewall), with the defaults the code has. The server's example (shipped as
documentation: the unit does not start until /etc/gpuward/server.toml exists)
names every option, with the defaults the code has.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import fields, replace
from pathlib import Path

import pytest

from fleet.errors import GpuwardError
from fleet.topology import Topology
from node.config import AgentConfig, load_config
from node.firewall.policy import FirewallPolicy
from server.config_file import OPTIONS, read_file
from tests.packaging.conftest import REPO

EXAMPLE = REPO / "packaging/agent.toml"
SERVER_EXAMPLE = REPO / "packaging/server.toml"
SERVER_STATE = Path("/var/lib/gpuward-server")  # the unit's StateDirectory (test_units)
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
    # The [topology] table's example names every label the agent reads.
    topology = tomllib.loads(uncommented.read_text())["topology"]
    assert set(topology) == {f.name for f in fields(Topology)}
    assert config.topology == Topology(**topology)


def test_server_example_sets_every_option_to_its_default(tmp_path: Path) -> None:
    """Uncommented, the example names every option of ``server run`` with the value
    the server takes when it is left out."""
    uncommented = tmp_path / "server.toml"
    uncommented.write_text(SETTING.sub("", SERVER_EXAMPLE.read_text()))
    settings = read_file(uncommented)
    assert set(settings) == {option.name for option in OPTIONS}
    for option in OPTIONS:
        if option.default not in (None, ()):  # for the rest the example shows a use
            assert settings[option.name].value == option.default, option.name
    # What it names beside the defaults lies in the service's writable state.
    for name in ("repo", "director", "db", "report_key"):
        assert Path(str(settings[name].value)).is_relative_to(SERVER_STATE), name


def test_server_example_as_shipped_sets_where_and_what_to_serve() -> None:
    settings = read_file(SERVER_EXAMPLE)
    assert {name: s.value for name, s in settings.items()} == {
        "repo": SERVER_STATE / "repo",
        "db": str(SERVER_STATE / "server.db"),
        "host": "127.0.0.1",
        "port": 8470,
    }


def test_the_oldest_python_is_the_one_the_package_depends_on() -> None:
    """pyproject's requires-python names the Python the .deb installs on (Debian 12's
    3.11.2); the suite runs on that interpreter (the Makefile's venv)."""
    required = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    common = (REPO / "packaging/gpuward-common.yaml").read_text()
    (depended,) = re.findall(r"- python3\.11 \(>= ([0-9.]+)\)", common)
    assert required == f">={depended}"
    assert ".".join(map(str, sys.version_info[:3])) == depended
