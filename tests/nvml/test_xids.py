"""The XID listener against the fake libnvidia-ml.so.1.

The fake hands out the XIDs queued in its config through nvmlEventSetWait_v2,
for registered GPUs only, and then times out as the real library does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.nvml.conftest import H100Host, NvmlRun


def stream(
    run_nvml: NvmlRun, config: Mapping[str, object], count: int
) -> tuple[int, list[dict[str, Any]], str]:
    done = run_nvml(config, "--xids", "--count", str(count), "--wait-ms", "20")
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()], done.stderr


def test_xids_are_recorded_with_time_and_gpu(run_nvml: NvmlRun, h100: H100Host) -> None:
    before = time.time()
    rc, lines, _ = stream(run_nvml, h100(gpus=4, xids="3:79,0:13,3:48"), count=3)
    after = time.time()
    assert rc == 0
    assert lines[0] == {"watched": [0, 1, 2, 3], "unwatched": []}
    events = lines[1:]
    assert [(e["gpu_index"], e["xid"]) for e in events] == [(3, 79), (0, 13), (3, 48)]
    assert events[0]["gpu_uuid"] == "GPU-00000003-1111-2222-3333-444455556666"
    assert all(before <= e["at"] <= after for e in events)
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    assert [e["class"]["severity"] for e in events] == ["critical", "warning", "critical"]


def test_gpus_without_xid_events_are_not_watched(run_nvml: NvmlRun, h100: H100Host) -> None:
    config = h100(
        gpus=3,
        xids="1:79,2:31",
        **{
            "gpu.1.events.supported": 0,
            "gpu.2.fail.nvmlDeviceGetSupportedEventTypes": "NOT_SUPPORTED",
            "gpu.0.events.supported": "0x8",
        },
    )
    # Nothing can arrive from GPUs 1 and 2: ask for no event and check the registration.
    rc, lines, stderr = stream(run_nvml, config, count=0)
    assert rc == 0
    assert lines == [{"watched": [0], "unwatched": [1, 2]}]
    assert "xid_events_unsupported" in stderr


def test_only_watched_gpus_deliver_xids(run_nvml: NvmlRun, h100: H100Host) -> None:
    config = h100(gpus=2, xids="1:79,0:94", **{"gpu.1.events.supported": 0})
    rc, lines, _ = stream(run_nvml, config, count=1)
    assert rc == 0
    assert [(e["gpu_index"], e["xid"]) for e in lines[1:]] == [(0, 94)]


def test_stop_frees_the_event_set_and_shuts_nvml_down(
    run_nvml: NvmlRun, h100: H100Host, tmp_path: Path
) -> None:
    trace = tmp_path / "calls"
    rc, _, _ = stream(run_nvml, h100(gpus=1, xids="0:13", trace=trace), count=1)
    assert rc == 0
    calls = trace.read_text().split()
    assert calls.count("nvmlEventSetCreate") == calls.count("nvmlEventSetFree") == 1
    assert calls.index("nvmlEventSetFree") > calls.index("nvmlEventSetWait_v2")
    assert calls[-1] == "nvmlShutdown"
    assert calls.count("nvmlInitWithFlags") == calls.count("nvmlShutdown") == 1


def test_listener_without_a_driver_reports_an_error(run_nvml: NvmlRun, h100: H100Host) -> None:
    rc, lines, _ = stream(run_nvml, h100(init_error="DRIVER_NOT_LOADED"), count=1)
    assert rc == 1
    assert lines == [{"error": lines[0]["error"]}]
    assert lines[0]["error"].startswith("NVML: Driver Not Loaded (nvmlInit): ")


def test_a_failing_wait_ends_the_listener_with_an_error(
    run_nvml: NvmlRun, h100: H100Host, tmp_path: Path
) -> None:
    trace = tmp_path / "calls"
    config = h100(gpus=1, trace=trace, **{"fail.nvmlEventSetWait_v2": "GPU_IS_LOST"})
    rc, lines, stderr = stream(run_nvml, config, count=1)
    assert rc == 1
    assert lines[0] == {"watched": [0], "unwatched": []}
    assert lines[1]["error"].startswith("NVML: GPU is lost (listening for XIDs): ")
    assert "xid_listener_failed" in stderr
    calls = trace.read_text().split()
    assert calls[-2:] == ["nvmlEventSetFree", "nvmlShutdown"]
