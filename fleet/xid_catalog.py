"""The XID catalog: what each XID the driver raises means, and what to do about it.

The knowledge lives in one data file, ``fleet/data/xid-catalog.json``, each
entry with the NVIDIA page it comes from, so it can be checked and extended
without touching code; ``fleet.gpu_rules`` judges XIDs through it. The reader
is strict like the compatibility catalog's: a malformed entry is refused with
its place named, never half-used.

``group_bursts`` joins the repeats a single fault produces: the driver raises
an XID for each channel or engine it touches, so consecutive XIDs of the same
code on the same GPU, each within ``BURST_WINDOW_S`` of the last, are one event.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources

from fleet.errors import InvalidDocument
from fleet.gpu import XidEvent
from fleet.schema import Reader

WARNING = "warning"
CRITICAL = "critical"
SEVERITIES = frozenset({WARNING, CRITICAL})

CLASSES = frozenset({"application", "driver", "memory", "nvlink", "bus", "thermal", "other"})

# NVIDIA's recommended actions, in gpuward's words, by the key the data file uses.
ACTIONS: Mapping[str, str] = {
    "restart_app": "restart the application",
    "reset_gpu": "drain the GPU and reset it",
    "reboot": "drain the node and reboot it",
    "service": "drain the GPU; service it if this recurs after a reset",
    "watch": "nothing now; watch whether it recurs",
}

BURST_WINDOW_S = 60.0
MAX_CATALOG_BYTES = 1 << 20
MAX_ENTRIES = 1000
_SOURCE = re.compile(r"https://[^\s]{1,500}")


@dataclass(frozen=True)
class XidClass:
    """One XID's verdict: its class, how bad it is for the node, and what to do."""

    xid: int
    category: str  # one of CLASSES
    severity: str  # one of SEVERITIES
    description: str
    action: str  # a value of ACTIONS
    source: str  # where NVIDIA documents it; "" for an XID the catalog lacks


def load_xid_catalog(data: bytes, where: str = "xid catalog") -> dict[int, XidClass]:
    """The catalog in ``data`` by XID; ``InvalidDocument`` naming the field if malformed."""
    if len(data) > MAX_CATALOG_BYTES:
        raise InvalidDocument(f"{where}: larger than {MAX_CATALOG_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidDocument(f"{where}: not JSON ({exc})") from None
    top = Reader(doc, where, allowed=frozenset({"schema", "about", "xids"}))
    if top.integer("schema") != 1:
        raise InvalidDocument(f"{where}: unsupported schema version; upgrade gpuward")
    top.text("about", max_len=1024)
    catalog: dict[int, XidClass] = {}
    for index, entry in enumerate(top.items("xids", max_items=MAX_ENTRIES)):
        item = top.item_where("xids", index)
        r = Reader(
            entry,
            item,
            allowed=frozenset({"xid", "class", "severity", "description", "action", "source"}),
        )
        xid = r.integer("xid", maximum=2**31 - 1)
        if xid in catalog:
            raise InvalidDocument(f"{item}: XID {xid} is listed twice")
        catalog[xid] = XidClass(
            xid,
            r.text("class", choices=CLASSES),
            r.text("severity", choices=SEVERITIES),
            r.text("description", max_len=256),
            ACTIONS[r.text("action", choices=frozenset(ACTIONS))],
            r.text("source", pattern=_SOURCE, max_len=512),
        )
    return catalog


@cache
def default_xid_catalog() -> dict[int, XidClass]:
    """The catalog shipped inside the package."""
    data = resources.files("fleet").joinpath("data/xid-catalog.json").read_bytes()
    return load_xid_catalog(data, where="fleet/data/xid-catalog.json")


def group_bursts(
    events: Iterable[XidEvent], window_s: float = BURST_WINDOW_S
) -> tuple[XidEvent, ...]:
    """The first XID of each burst, in time order: an XID of the same code on the same
    GPU as one at most ``window_s`` earlier joins that one's burst (a chain of
    repeats is one burst however long it lasts)."""
    last: dict[tuple[str | int | None, int], float] = {}
    first: list[XidEvent] = []
    for event in sorted(events, key=lambda e: e.at):
        gpu = event.gpu_uuid if event.gpu_uuid is not None else event.gpu_index
        key = (gpu, event.xid)
        previous = last.get(key)
        if previous is None or event.at - previous > window_s:
            first.append(event)
        last[key] = event.at
    return tuple(first)
