"""``gpuward bundle build --settings``: the operator's driver settings are signed with
the bundle, and a hostile or wrong settings file never becomes one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleet.driver_settings import CDMM
from keys.bundle import read_manifest
from tests.cli.test_errors import assert_one_line_error, gpuward


def build(tmp_path: Path, settings: Any, version: str = "580.95.05") -> Any:
    (tmp_path / "p").write_bytes(b"x")
    file = tmp_path / "settings.json"
    file.write_text(settings if isinstance(settings, str) else json.dumps(settings))
    return gpuward(
        "bundle", "build", str(tmp_path / "p"), "--driver-version", version,
        "--branch", f"R{version[:3]}", "--dkms", "--settings", str(file),
        "-o", str(tmp_path / "b.bundle"), "--json",
    )  # fmt: skip


def test_the_settings_ride_in_the_manifest(tmp_path: Path) -> None:
    declared = {"module_parameters": {CDMM: "driver"}, "persistence_mode": True}
    done = build(tmp_path, declared)
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(tmp_path / "b.bundle")
    assert manifest.to_dict()["schema"] == 3
    assert manifest.settings is not None
    assert manifest.settings.module_parameters == ((CDMM, "driver"),)
    assert json.loads(done.stdout)["manifest"]["settings"]["persistence_mode"] is True


@pytest.mark.parametrize(
    ("settings", "needles"),
    [
        ({"module_parameters": {"install": "nvidia"}}, ("module_parameters", "'install'")),
        ({"unlisted_parameters": {"NVreg_X": "1;reboot"}}, ("unlisted_parameters", "1;reboot")),
        ({"module_parameters": {"NVreg_EnableMSI": "4294967296"}}, ("NVreg_EnableMSI", "0 to 1")),
        ({"module_parameters": {"NVreg_Bogus": "1"}}, ("NVreg_Bogus", "not a parameter")),
        ({"compute_mode": "exclusive-thread"}, ("compute_mode", "must be one of")),
        ("{not json", ("settings.json", "not JSON")),
    ],
)
def test_a_hostile_settings_file_is_refused_naming_the_field(
    tmp_path: Path, settings: Any, needles: tuple[str, ...]
) -> None:
    assert_one_line_error(build(tmp_path, settings), *needles)
    assert not (tmp_path / "b.bundle").exists()


def test_a_driver_older_than_a_parameter_cannot_declare_it(tmp_path: Path) -> None:
    result = build(tmp_path, {"module_parameters": {CDMM: "driver"}}, version="570.133.20")
    assert_one_line_error(result, CDMM, "needs R580 or later")
