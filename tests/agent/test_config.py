"""The agent config: strict, and complete enough to drive every part of the agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.errors import GpuwardError
from fleet.topology import Topology
from node.config import load_config

BASE = """node_id = "gpu-1"
server_url = "https://updates.example:8470/"
trusted_root = "root.json"
branch = "R580"
"""


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return load_config(path)


def test_minimal_config_and_defaults(tmp_path: Path) -> None:
    config = _load(tmp_path, BASE)
    assert config.server_url == "https://updates.example:8470"  # type: ignore[attr-defined]
    assert config.trusted_root == tmp_path / "root.json"  # type: ignore[attr-defined]
    assert config.director is None and config.firewall is None  # type: ignore[attr-defined]
    assert config.topology is None  # type: ignore[attr-defined]


def test_topology_labels_are_read(tmp_path: Path) -> None:
    config = _load(tmp_path, BASE + '[topology]\nrack = "r12"\nnvlink_domain = "nvl72-3"\n')
    assert config.topology == Topology(rack="r12", nvlink_domain="nvl72-3")  # type: ignore[attr-defined]


def test_firewall_table_always_allows_the_server_and_mirrors(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        BASE + 'mirrors = ["http://mirror.example:8080"]\n[firewall]\nresolvers = ["10.0.0.53"]\n',
    )
    endpoints = {(e.host, e.port) for e in config.firewall.update_endpoints}  # type: ignore[attr-defined]
    assert {("updates.example", 8470), ("mirror.example", 8080)} <= endpoints


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("surprise = 1\n", "unknown field"),
        ('mirrors = ["ftp://x"]\n', r"http\(s\) URL"),
        ("interval_s = 0\n", "between"),
        ('[director]\nurl = "https://d"\n', "missing field 'trusted_root'"),
        ("[attestation]\ndriver_pcr = 14\n", "driver_pcr: PCR 14 is measured by"),
        (
            '[applier]\nmaintenance_windows = ["Sat 02:00-06:00", "Sun 2-6"]\n',
            r"\[applier\] maintenance window 'Sun 2-6': write it as",
        ),
        ("[attestation]\ndriver_pcr = 7\n", "driver_pcr: PCR 7 is measured by"),
        ('[topology]\nrack = "r 12"\n', r"agent config \[topology\]: 'rack' has an invalid value"),
        ('[topology]\nrack = "r12"\nshelf = "2"\n', r"\[topology\]: unknown field\(s\) shelf"),
        ("[topology]\nrow = 3\n", r"\[topology\]: 'row' must be a string"),
        (f'[topology]\npdu = "{"p" * 65}"\n', "longer than 64"),
    ],
)
def test_bad_configs_name_the_field(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(GpuwardError, match=message):
        _load(tmp_path, BASE + extra)


def test_maintenance_windows_are_parsed_when_loaded(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        BASE + '[applier]\nmaintenance_windows = ["Sat 02:00-06:00", "daily 03:00-04:00"]\n',
    )
    windows = config.applier.maintenance_windows  # type: ignore[attr-defined]
    assert [w.text for w in windows] == ["Sat 02:00-06:00", "daily 03:00-04:00"]
    assert windows[0].days == frozenset({5})
