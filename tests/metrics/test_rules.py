"""The alerting rules the server package ships: valid to promtool, their unit tests
(shipped beside them) pass, and every alert has a case in which it fires."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.metrics.exposition import promtool

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "packaging/prometheus/gpuward-rules.yml"
RULE_TESTS = REPO / "packaging/prometheus/gpuward-rules.test.yml"
INSTALLED = "/usr/share/gpuward/prometheus"


def _promtool(*args: str) -> str:
    done = subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_rules() -> None:
    assert f"SUCCESS: {len(alerts())} rules found" in _promtool("check", "rules", str(RULES))


def test_the_rules_pass_their_unit_tests() -> None:
    assert "SUCCESS" in _promtool("test", "rules", str(RULE_TESTS))


def test_every_alert_fires_in_a_unit_test_and_names_its_severity() -> None:
    cases = yaml.safe_load(RULE_TESTS.read_text())
    assert cases["rule_files"] == [RULES.name]  # beside it, as installed
    firing = {
        case["alertname"]
        for test in cases["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    names = [rule["alert"] for rule in alerts()]
    assert sorted(firing) == sorted(names)
    assert all(rule["labels"]["severity"] in ("warning", "critical") for rule in alerts())
    assert all(name.startswith("Gpuward") for name in names)


def test_the_server_package_installs_both_files_together() -> None:
    contents = yaml.safe_load((REPO / "packaging/gpuward-server.yaml").read_text())["contents"]
    installed = {entry.get("src"): entry["dst"] for entry in contents}
    for path in (RULES, RULE_TESTS):
        assert installed[str(path.relative_to(REPO))] == f"{INSTALLED}/{path.name}"
