"""``gpuward demo`` tells the story the README promises, and leaves nothing running."""

from __future__ import annotations

import threading

from gpuward.demo import VERSIONS, run_demo


def test_demo_story() -> None:
    lines: list[str] = []
    fleet = run_demo(say=lines.append)

    by_node = {n["node_id"]: n["report"] for n in fleet}
    assert by_node["node-1"]["driver_version"] == VERSIONS[2]
    assert by_node["node-3"]["driver_version"] == VERSIONS[2]
    assert by_node["node-2"]["driver_version"] == VERSIONS[1]  # rolled back
    text = "\n".join(lines)
    assert "node-2  rolled-back" in text
    assert text.count("committed") >= 8
    assert not [t for t in threading.enumerate() if t.name == "gpuward-server"]
