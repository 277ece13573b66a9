"""README's layout table is the tree: every folder it names exists, every folder
in the tree is named, and each package's "may import" column is what the import
contracts in pyproject.toml enforce (as ../shared/DESIGN.md's folder table says)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("fleet", "keys", "node", "applier", "agent", "server", "gpuward")


def layout() -> dict[str, str]:
    """Folder (or file) name to its "may import" cell, from README's layout table."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| [^|]+ \| ([^|]+) \|$", section, re.M)
    return {name.rstrip("/"): imports.strip() for name, imports in rows}


def tracked_top_level() -> set[str]:
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    return {f.split("/", 1)[0] for f in files if "/" in f and not f.startswith(".")}


def test_the_table_names_every_folder_and_nothing_else() -> None:
    named = set(layout()) - {"SECURITY.md"}
    assert named == tracked_top_level()
    assert (REPO / "SECURITY.md").is_file()


def test_every_package_row_says_what_the_contracts_allow() -> None:
    """A package may import the packages its row lists; the contracts forbid every other
    gpuward package (so the table cannot promise what lint-imports refuses, or miss a rule)."""
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    forbidden: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for contract in contracts["contracts"]:
        if contract["type"] == "forbidden":
            for source in contract["source_modules"]:
                forbidden[source] |= set(contract["forbidden_modules"]) & set(PACKAGES)
        elif contract["type"] == "independence":
            for module in contract["modules"]:
                forbidden[module] |= set(contract["modules"]) - {module}
    rows = layout()
    for package in PACKAGES:
        cell = rows[package]
        allowed = set(PACKAGES) - {package} if cell == "all" else set(re.findall(r"`(\w+)`", cell))
        assert set(PACKAGES) - {package} - allowed == forbidden[package], package
