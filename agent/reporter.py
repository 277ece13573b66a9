"""Posting health reports to the server, signed with the node's enrolled key.

The agent's only outbound connections are to its configured server: metadata,
bundles and this report. A report that cannot be delivered is logged and
dropped; the next cycle sends a fresh one, which supersedes it.
"""

from __future__ import annotations

import json

from agent.channel import ChannelUnavailable
from agent.config import AgentConfig
from agent.identity import load_key, signed_request
from fleet.report import HealthReport


def post_report(config: AgentConfig, report: HealthReport) -> None:
    """Raises ``ChannelUnavailable`` if not delivered, ``NotEnrolled`` without a key."""
    body = json.dumps(report.to_dict()).encode()
    response = signed_request(config, load_key(config), "POST", config.reports_url, body)
    if response.status != 202:
        raise ChannelUnavailable(
            f"posting report to {config.reports_url}: HTTP {response.status} "
            f"{response.data[:200]!r}"
        )
