"""There is one A/B state machine, the applier's: nothing else stages, switches,
commits or journals an update.

The slots and the journal are formats in ``node`` that both processes read; the
calls that change them belong to ``applier`` alone. Inline mode hands the agent's
cycle the applier itself (``gpuward/node.py``) rather than a second copy, and
this check fails on any call that would start one.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What moves a node from one driver to another: unpack into a slot, make it a
# slot, point ``active`` at it, journal a step, hand it to an installer.
CHANGES = frozenset(
    {"unpack_bundle", "commit_stage", "switch", "save_journal", "activate", "rollback"}
)
OUTSIDE = ("fleet", "keys", "node", "agent", "server", "gpuward")


def calls(path: Path, root: Path = REPO) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in CHANGES:
            found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(func)}(...)")
    return found


def test_only_the_applier_changes_slots_or_journal() -> None:
    found = [
        c for package in OUTSIDE for p in sorted((REPO / package).rglob("*.py")) for c in calls(p)
    ]
    # The attestor's TPM2_ActivateCredential is not a driver's activation.
    found = [c for c in found if not c.endswith("attestor.activate(...)")]
    assert found == []


def test_the_check_sees_a_planted_switch(tmp_path: Path) -> None:
    planted = tmp_path / "agent" / "shortcut.py"
    planted.parent.mkdir()
    planted.write_text("def shortcut(slots):\n    slots.switch('b')\n")
    assert calls(planted, tmp_path) == ["agent/shortcut.py:2: slots.switch(...)"]
