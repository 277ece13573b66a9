"""The XID catalog data file, its strict reader, and burst grouping."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest

from fleet.errors import InvalidDocument
from fleet.gpu import XidEvent
from fleet.gpu_rules import classify_xid
from fleet.xid_catalog import ACTIONS, default_xid_catalog, group_bursts, load_xid_catalog


def shipped() -> dict[str, Any]:
    data = resources.files("fleet").joinpath("data/xid-catalog.json").read_bytes()
    doc: dict[str, Any] = json.loads(data)
    return doc


def test_the_shipped_catalog_names_a_source_for_every_xid() -> None:
    catalog = default_xid_catalog()
    assert {13, 31, 43, 48, 63, 64, 74, 79, 92, 94, 95, 119, 120} <= set(catalog)
    for xid, entry in catalog.items():
        assert entry.source.startswith("https://docs.nvidia.com/"), xid
    assert catalog[79].category == "bus"
    assert catalog[79].action == ACTIONS["reboot"]
    assert catalog[64].action == ACTIONS["service"]
    assert classify_xid(79) is catalog[79]  # the rules judge through the data file


def _with(change: dict[str, Any]) -> bytes:
    doc = shipped()
    doc["xids"][0] = {**doc["xids"][0], **change}
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"class": "cosmic"}, "'class' must be one of"),
        ({"action": "pray"}, "'action' must be one of"),
        ({"severity": "fatal"}, "'severity' must be one of"),
        ({"source": "http://example.com/"}, "'source' has an invalid value"),
        ({"xid": 13}, "XID 13 is listed twice"),
        ({"extra": 1}, "unknown field(s) extra"),
    ],
)
def test_a_malformed_entry_is_refused_with_its_place(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidDocument, match=r"catalog\.xids\[[01]\]") as raised:
        load_xid_catalog(_with(change), where="catalog")
    assert message in str(raised.value)


def test_another_schema_or_not_json_is_refused() -> None:
    with pytest.raises(InvalidDocument, match="upgrade gpuward"):
        load_xid_catalog(json.dumps({**shipped(), "schema": 2}).encode())
    with pytest.raises(InvalidDocument, match="not JSON"):
        load_xid_catalog(b"{")


def test_repeats_of_one_code_on_one_gpu_are_one_burst() -> None:
    def xid(at: float, code: int, gpu: int = 0) -> XidEvent:
        return XidEvent(at, gpu, f"GPU-{gpu}", code)

    events = [
        xid(0, 79),
        xid(5, 79),  # the same fault, repeated
        xid(6, 79, gpu=1),  # another GPU: its own event
        xid(7, 48),  # another code on the same GPU: its own event
        xid(50, 79),  # still chained to the repeat at 5
        xid(200, 79),  # long after the last repeat: a new fault
    ]
    grouped = group_bursts(reversed(events), window_s=60)
    assert [(e.at, e.xid, e.gpu_index) for e in grouped] == [
        (0, 79, 0),
        (6, 79, 1),
        (7, 48, 0),
        (200, 79, 0),
    ]
    assert group_bursts([]) == ()
