"""The layer rules of DESIGN.md hold, and the check enforcing them can fail.

``make lint`` runs ``lint-imports`` on the tree with the contracts in
pyproject.toml. Here the same contracts judge a small tree of empty packages
with one forbidden import planted in it, once per rule, so a contract that
stopped catching what it names would show; and fleet, the shared language, is
checked to import the standard library only (a contract can list the third-party
packages it forbids; this check needs no list).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")
PACKAGES = ("fleet", "keys", "node", "applier", "agent", "server", "gpuward")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    (tree / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def packages(tree: Path) -> Path:
    for name in PACKAGES:
        (tree / name).mkdir()
        (tree / name / "__init__.py").write_text("")
    return tree


def test_a_tree_that_keeps_the_rules_passes(tmp_path: Path) -> None:
    tree = packages(tmp_path)
    (tree / "gpuward" / "cli.py").write_text("import agent\nimport applier\nimport server\n")
    (tree / "agent" / "ok.py").write_text(
        "import node\nimport keys\nimport fleet\nimport structlog\n"
    )
    (tree / "applier" / "ok.py").write_text("import node\nimport keys\nimport fleet\n")
    (tree / "node" / "ok.py").write_text("import keys\nimport fleet\nimport tuf\n")
    done = lint(tree)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("importer", "imported", "contract"),
    [
        ("agent", "gpuward", "nothing imports the gpuward command"),
        ("server", "gpuward", "nothing imports the gpuward command"),
        ("applier", "gpuward", "nothing imports the gpuward command"),
        ("agent", "applier", "the agent and the applier never import each other"),
        ("applier", "agent", "the agent and the applier never import each other"),
        ("server", "agent", "the server imports no node code"),
        ("server", "applier", "the server imports no node code"),
        ("server", "node", "the server imports no node code"),
        ("agent", "server", "the node's processes import no server code"),
        ("applier", "server", "the node's processes import no server code"),
        ("node", "agent", "node is what both node processes share"),
        ("node", "applier", "node is what both node processes share"),
        ("node", "server", "node is what both node processes share"),
        ("fleet", "aiohttp", "fleet is the shared language"),
        ("fleet", "keys", "fleet is the shared language"),
        ("keys", "server", "keys (trust) builds on fleet only"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, importer: str, imported: str, contract: str
) -> None:
    tree = packages(tmp_path)
    (tree / importer / "planted.py").write_text(f"import {imported}\n")
    done = lint(tree)
    assert done.returncode != 0
    broken = [line for line in done.stdout.splitlines() if line.endswith("BROKEN")]
    assert len(broken) == 1 and broken[0].startswith(contract), done.stdout


def test_fleet_imports_the_standard_library_only() -> None:
    outside = {}
    for path in sorted((REPO / "fleet").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("fleet", "__future__"):
                    outside[f"{path.relative_to(REPO)}: {name}"] = top
    assert outside == {}
