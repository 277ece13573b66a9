"""Where a node sits: the topology labels an operator gives it in its config.

Nodes that share a rack share its cooling and power feed; a row shares a
cooling loop; a PDU, a power circuit; an NVLink domain, a switch fabric. When
degradations cluster on one of these, the shared thing is the likely cause
(``fleet.attribution``). The agent sends the labels with every report
(``HealthReport.topology``); the server reads them from each node's latest
report, so changing a node's labels needs only its config and a restart.

Labels are short names (letters, digits and . _ : / -), each optional: a
fleet that knows its racks but not its PDUs labels the racks only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fleet.wire import Document, Text, Wire, optional

LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")
MAX_LABEL = 64
# The labels, in the order attribution reports them: the narrowest shared thing first.
DOMAINS = ("rack", "pdu", "nvlink_domain", "row")


@dataclass(frozen=True)
class Topology(Wire):
    """A node's place in the data centre; None: the operator did not say."""

    rack: str | None = None
    row: str | None = None
    pdu: str | None = None
    nvlink_domain: str | None = None

    def labels(self) -> dict[str, str]:
        """The labels given, by domain (``DOMAINS``)."""
        given = {
            "rack": self.rack,
            "pdu": self.pdu,
            "nvlink_domain": self.nvlink_domain,
            "row": self.row,
        }
        return {domain: value for domain, value in given.items() if value is not None}

    WIRE = Document(
        optional("rack", Text(max_len=MAX_LABEL, pattern=LABEL), "the node's rack"),
        optional("row", Text(max_len=MAX_LABEL, pattern=LABEL), "the rack's row (cooling loop)"),
        optional("pdu", Text(max_len=MAX_LABEL, pattern=LABEL), "the power distribution unit"),
        optional(
            "nvlink_domain",
            Text(max_len=MAX_LABEL, pattern=LABEL),
            "the NVLink/NVSwitch domain the node's GPUs share",
        ),
        where="topology",
    )
