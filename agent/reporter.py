"""Posting health reports to the server.

The agent's only outbound connections are to its configured server: metadata,
bundles and this report. A report that cannot be delivered is logged and
dropped; the next cycle sends a fresh one, which supersedes it.
"""

from __future__ import annotations

import json

import urllib3

from agent.channel import ChannelUnavailable
from fleet.report import HealthReport
from gpuward import __version__

_TIMEOUT = urllib3.Timeout(connect=5.0, read=10.0)


def post_report(url: str, report: HealthReport) -> None:
    body = json.dumps(report.to_dict()).encode()
    try:
        response = urllib3.request(
            "POST",
            url,
            body=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": f"gpuward-agent/{__version__}",
            },
            timeout=_TIMEOUT,
            retries=urllib3.Retry(total=2, backoff_factor=0.5, allowed_methods=None),
        )
    except urllib3.exceptions.HTTPError as exc:
        raise ChannelUnavailable(f"posting report to {url}: {exc}") from exc
    if response.status != 202:
        raise ChannelUnavailable(
            f"posting report to {url}: HTTP {response.status} {response.data[:200]!r}"
        )
