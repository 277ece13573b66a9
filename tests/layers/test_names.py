"""No two classes share a name across gpuward's packages.

Two ``Verdict``\\ s or two ``EnrolledNode``\\ s mean a reader (and a grep) must
check each import to know which one a module holds, and an import alias that
hides the clash (``EnrolledNode as TpmNode``) names the thing differently in
every module. A class's name says what it is, tree-wide. The packages are the
import contract's root packages (pyproject.toml), so a package added there is
covered here too.
"""

from __future__ import annotations

import ast
import tomllib
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def root_packages() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages: list[str] = config["tool"]["importlinter"]["root_packages"]
    return packages


def shared_class_names(root: Path, packages: list[str]) -> dict[str, list[str]]:
    """Each class name defined more than once (nested classes too), with where."""
    defined: dict[str, list[str]] = defaultdict(list)
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    defined[node.name].append(f"{path.relative_to(root)}:{node.lineno}")
    return {name: places for name, places in sorted(defined.items()) if len(places) > 1}


def test_no_two_classes_share_a_name() -> None:
    packages = root_packages()
    assert {"fleet", "keys", "agent", "server", "gpuward"} <= set(packages)
    shared = shared_class_names(REPO, packages)
    assert not shared, "classes sharing a name (rename each to say what it is):\n" + "\n".join(
        f"  {name}: {', '.join(places)}" for name, places in shared.items()
    )


def test_a_shared_name_is_found_with_both_places(tmp_path: Path) -> None:
    (tmp_path / "fleet").mkdir()
    (tmp_path / "server" / "store").mkdir(parents=True)
    (tmp_path / "fleet" / "compat.py").write_text("class Verdict:\n    pass\n")
    (tmp_path / "server" / "store" / "sql.py").write_text(
        "class Store:\n    class Verdict:\n        pass\n"
    )
    assert shared_class_names(tmp_path, ["fleet", "server"]) == {
        "Verdict": ["fleet/compat.py:1", "server/store/sql.py:2"]
    }
