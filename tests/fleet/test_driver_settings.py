"""Declared driver settings: a hostile declaration is refused naming its field, the
modprobe file carries only checked tokens, and drift is every difference."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from fleet.driver_settings import (
    CDMM,
    DriverSettings,
    EffectiveSettings,
    GpuModes,
    drift,
    failing,
    modprobe_options,
    parse_params,
)
from fleet.errors import InvalidDocument
from fleet.manifest import BundleManifest
from tests.fleet.test_manifest import GOOD as MANIFEST

DECLARED: dict[str, Any] = {
    "module_parameters": {CDMM: "driver", "NVreg_DeviceFileMode": "432"},
    "unlisted_parameters": {"NVreg_RmNvlinkBandwidthLinkCount": "2"},
    "persistence_mode": True,
    "ecc": True,
    "mig": False,
    "compute_mode": "exclusive-process",
}
# What a 580 driver prints (nv-procfs.c: "%s: %u" for integers, quoted strings).
PARAMS = """ResmanDebugLevel: 4294967295
CoherentGPUMemoryMode: "driver"
DeviceFileMode: 432
RmNvlinkBandwidthLinkCount: 2
TemporaryFilePath: "/var/tmp"
"""


def settings(**changes: Any) -> DriverSettings:
    return DriverSettings.from_dict({**copy.deepcopy(DECLARED), **changes})


def test_round_trip_and_the_modprobe_line() -> None:
    declared = settings()
    assert DriverSettings.from_dict(declared.to_dict()) == declared
    text = modprobe_options(declared, "b").decode()
    assert text.splitlines()[-1] == (
        f"options nvidia {CDMM}=driver NVreg_DeviceFileMode=432 NVreg_RmNvlinkBandwidthLinkCount=2"
    )
    # Everything else is a comment: nothing the file says can be a directive.
    assert [line for line in text.splitlines() if not line.startswith("#")] == [
        text.splitlines()[-1]
    ]


@pytest.mark.parametrize(
    ("parameters", "field", "message"),
    [
        # modprobe runs an install/remove line's command as root: no such name gets in.
        ({"install": "nvidia"}, "module_parameters", "invalid value 'install'"),
        ({"install nvidia /bin/sh -c id": "1"}, "module_parameters", "invalid value"),
        ({"NVreg_EnableMSI": "1\ninstall nvidia /bin/sh"}, "module_parameters", "invalid value"),
        ({"NVreg_EnableMSI": "1 NVreg_Other=2"}, "module_parameters", "invalid value"),
        ({"NVreg_TemporaryFilePath": "/tmp/$(reboot)"}, "module_parameters", "invalid value"),
        ({"NVreg_TemporaryFilePath": "/tmp;reboot"}, "module_parameters", "invalid value"),
        ({"NVreg_TemporaryFilePath": "/tmp/`id`"}, "module_parameters", "invalid value"),
        ({"NVreg_TemporaryFilePath": '"/tmp"'}, "module_parameters", "invalid value"),
        ({"NVreg_TemporaryFilePath": "/var/../etc"}, "NVreg_TemporaryFilePath", "absolute"),
        ({"NVreg_TemporaryFilePath": "tmp"}, "NVreg_TemporaryFilePath", "absolute"),
        ({"NVreg_EnableMSI": "2"}, "NVreg_EnableMSI", "from 0 to 1, not '2'"),
        ({"NVreg_EnableMSI": "01"}, "NVreg_EnableMSI", "decimal integer"),
        ({"NVreg_EnableMSI": "0x1"}, "NVreg_EnableMSI", "decimal integer"),
        ({"NVreg_ImexChannelCount": "1048577"}, "NVreg_ImexChannelCount", "from 0 to 1048576"),
        ({"NVreg_DeviceFileUID": "9" * 40}, "NVreg_DeviceFileUID", "decimal integer"),
        ({"NVreg_EnableMSI": "1" * 200}, "module_parameters", "longer than 128"),
        ({CDMM: "hmm"}, CDMM, "one of driver, numa"),
        ({"NVreg_EnableMSl": "1"}, "NVreg_EnableMSl", "not a parameter gpuward knows"),
        ({"NVreg_EnableMSI": 1}, "module_parameters", "must be a string"),
        ({f"NVreg_P{i}": "1" for i in range(33)}, "module_parameters", "0 to 32 entries"),
    ],
)
def test_a_hostile_or_wrong_parameter_is_refused_naming_it(
    parameters: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidDocument, match=re.escape(message)) as refused:
        settings(module_parameters=parameters)
    assert field in str(refused.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"unlisted_parameters": {"NVreg_EnableMSI": "1"}}, "declare it under module_parameters"),
        ({"unlisted_parameters": {"options": "1"}}, "unlisted_parameters: 'key' has an invalid"),
        ({"unlisted_parameters": {"NVreg_X": "a b"}}, "unlisted_parameters: 'NVreg_X' has"),
        ({"unlisted_parameters": {"NVreg_X": "$(id)"}}, "unlisted_parameters: 'NVreg_X' has"),
        ({"compute_mode": "exclusive-thread"}, "'compute_mode' must be one of"),
        ({"ecc": "on"}, "'ecc' must be true or false"),
        ({"extra": 1}, "unknown field(s) extra"),
        ({"mig": True}, "incompatible with MIG"),
    ],
)
def test_other_refusals_name_their_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidDocument, match=re.escape(message)):
        settings(**change)


def test_a_driver_that_predates_a_parameter_cannot_carry_it() -> None:
    doc = {**MANIFEST, "schema": 3, "settings": DECLARED}
    assert BundleManifest.from_dict(doc).settings == settings()
    assert BundleManifest.from_dict(doc).to_dict() == doc
    older = {**doc, "driver_version": "570.133.20", "branch": "R570", "fabric_manager": None}
    with pytest.raises(InvalidDocument, match=f"{CDMM} needs R580 or later, not R570"):
        BundleManifest.from_dict(older)


def test_the_renderer_refuses_what_no_reader_would_let_through() -> None:
    """Defence in depth: a DriverSettings built in code, past the reader, still
    cannot write a directive."""
    forged = DriverSettings(module_parameters=(("NVreg_EnableMSI", "1\ninstall nvidia /x"),))
    with pytest.raises(InvalidDocument, match="refusing to write"):
        modprobe_options(forged, "a")
    with pytest.raises(InvalidDocument, match="refusing to name slot"):
        modprobe_options(settings(), "a\ninstall nvidia /x")


def test_params_are_read_as_the_driver_prints_them() -> None:
    assert parse_params(PARAMS + 'garbage line\nRmMsg: ""\n') == {
        "ResmanDebugLevel": "4294967295",
        "CoherentGPUMemoryMode": "driver",
        "DeviceFileMode": "432",
        "RmNvlinkBandwidthLinkCount": "2",
        "TemporaryFilePath": "/var/tmp",
        "RmMsg": "",
    }


def _gpu(index: int, **modes: Any) -> GpuModes:
    as_declared: dict[str, Any] = {
        "persistence_mode": True,
        "ecc": True,
        "ecc_pending": True,
        "mig": False,
        "mig_pending": False,
        "compute_mode": "exclusive-process",
    }
    return GpuModes(index, f"GPU-{index}", **{**as_declared, **modes})


def test_a_node_as_declared_has_no_drift() -> None:
    effective = EffectiveSettings(parse_params(PARAMS), (_gpu(0), _gpu(1)))
    assert drift(settings(), effective) == ()


def test_every_difference_is_drift_and_only_a_pending_one_passes_a_switch() -> None:
    params = PARAMS.replace('"driver"', '""').replace("RmNvlinkBandwidthLinkCount: 2\n", "")
    effective = EffectiveSettings(
        parse_params(params),
        (
            _gpu(0, ecc=False),  # set, waiting for a reboot
            _gpu(1, persistence_mode=False, compute_mode=None, errors={"compute_mode": "boom"}),
            _gpu(2, mig=None, mig_pending=None),
        ),
    )
    found = drift(settings(), effective)
    assert [d.message for d in found] == [
        f"{CDMM} is '', declared 'driver'",
        "NVreg_RmNvlinkBandwidthLinkCount is unknown, declared '2' (the loaded driver lacks it)",
        "GPU 0: ecc is 'disabled', declared 'enabled', pending a reset or reboot",
        "GPU 1: persistence_mode is 'disabled', declared 'enabled'",
        "GPU 1: compute_mode is unknown, declared 'exclusive-process' (boom)",
        "GPU 2: mig is unknown, declared 'disabled' (not supported by this GPU or driver)",
    ]
    assert [d.setting for d in failing(found)] == [
        CDMM,
        "NVreg_RmNvlinkBandwidthLinkCount",
        "persistence_mode",
        "compute_mode",
        "mig",
    ]


def test_nothing_readable_is_drift_of_everything_declared() -> None:
    effective = EffectiveSettings(
        None, (), params_error="no /proc/driver/nvidia/params", gpus_error="NVML: no driver"
    )
    found = drift(settings(), effective)
    assert {d.setting for d in found} == {
        CDMM,
        "NVreg_DeviceFileMode",
        "NVreg_RmNvlinkBandwidthLinkCount",
        "persistence_mode",
        "ecc",
        "mig",
        "compute_mode",
    }
    assert all(d.effective is None and not d.pending for d in found)
    # A bundle that declares nothing has nothing to drift from.
    assert drift(DriverSettings(), effective) == ()
