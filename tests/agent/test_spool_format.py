"""The spool's format as the agent reads its own spool (for its metrics): a request
it cannot read names no target, and never stops a cycle."""

from __future__ import annotations

from pathlib import Path

from tuf.api.metadata import TargetFile

from node.spool import TARGET, has_request, spooled_target, write_spool


def test_the_spooled_target_is_the_request_written(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    assert (has_request(spool), spooled_target(spool)) == (False, None)
    bundle = tmp_path / "b.bundle"
    bundle.write_bytes(b"bundle")
    write_spool(spool, TargetFile.from_data("drivers/R580/b.bundle", b"bundle"), bundle)
    assert (has_request(spool), spooled_target(spool)) == (True, "drivers/R580/b.bundle")


def test_a_request_that_is_not_one_names_no_target(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    for text in ('{"path": ', '["drivers/R580/b.bundle"]', '{"path": 7}'):
        (spool / TARGET).write_text(text)
        assert spooled_target(spool) is None, text
