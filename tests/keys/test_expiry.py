"""Metadata validity periods are the repository's choice, kept with it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleet.errors import GpuwardError
from keys.image_repo import ImageRepository
from tests.cli.test_errors import assert_one_line_error, gpuward


def test_configured_expiry_is_used_for_every_signature(tmp_path: Path) -> None:
    result = gpuward("keys", "init", str(tmp_path / "r"), "--threshold", "root=1/1",
                     "--expiry", "timestamp=3", "--expiry", "snapshot=10")  # fmt: skip
    assert result.returncode == 0, result.stderr
    repo = ImageRepository(tmp_path / "r")
    repo.sign_timestamp()
    left = repo.timestamp().signed.expires - datetime.now(UTC)
    assert timedelta(days=2, hours=23) < left <= timedelta(days=3)
    assert repo.expiry["snapshot"] == timedelta(days=10)


def test_bad_expiry_is_refused(tmp_path: Path) -> None:
    assert_one_line_error(
        gpuward(
            "keys", "init", str(tmp_path / "r"), "--single-custodian", "--expiry", "timestamp=0"
        ),
        "1-3650",
    )
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "expiry.json").write_text('{"timestamp": "soon"}')
    with pytest.raises(GpuwardError, match="days per role"):
        ImageRepository(tmp_path / "x")
