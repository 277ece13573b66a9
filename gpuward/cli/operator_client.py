"""Calling the server's operator API from the command line.

The token comes from ``GPUWARD_TOKEN`` or ``--token-file``, never from an
argument, which any user on the host could read in the process list. A server
serving HTTPS under a private CA is verified against ``--ca-file`` (or
``GPUWARD_CA_FILE``), as its nodes verify it against their ``server_ca``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import urllib3

from agent.tls import ServerTrust
from fleet.errors import GpuwardError


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get("GPUWARD_SERVER", "http://127.0.0.1:8470"),
        help="server URL (default $GPUWARD_SERVER or http://127.0.0.1:8470)",
    )
    add_credential_flags(parser)


def add_credential_flags(parser: argparse.ArgumentParser) -> None:
    """What a call needs besides the server's URL, for a command naming it its own way."""
    parser.add_argument(
        "--token-file", type=Path, help="file holding an operator token (default $GPUWARD_TOKEN)"
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        default=os.environ.get("GPUWARD_CA_FILE"),
        metavar="FILE",
        help="verify the server's HTTPS certificate against the CA certificates in FILE "
        "(default $GPUWARD_CA_FILE, else the system's)",
    )


def call(
    args: argparse.Namespace, method: str, path: str, body: Any = None, timeout: float = 30.0
) -> Any:
    """The JSON answer of an operator API call; an error answer raises."""
    return answer(method, path, send(args, method, path, body, timeout))


def answer(method: str, path: str, response: urllib3.BaseHTTPResponse) -> Any:
    """The JSON body of ``response``, or the server's error as a ``GpuwardError``."""
    try:
        doc = json.loads(response.data)
    except ValueError:
        raise GpuwardError(f"{method} {path}: HTTP {response.status}, not JSON") from None
    if response.status >= 400:
        raise GpuwardError(f"{method} {path}: {doc.get('error', response.status)}")
    return doc


def send(
    args: argparse.Namespace, method: str, path: str, body: Any = None, timeout: float = 30.0
) -> urllib3.BaseHTTPResponse:
    """One operator API request with the token, answered whatever its status;
    ``timeout``: for connecting, and for each wait for the answer's next bytes."""
    token = (
        args.token_file.read_text().strip()
        if args.token_file is not None
        else os.environ.get("GPUWARD_TOKEN", "")
    )
    if not token:
        raise GpuwardError("no operator token: set GPUWARD_TOKEN or pass --token-file")
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    url = args.server.rstrip("/") + path
    trust = ServerTrust(args.ca_file, "--ca-file")
    try:
        return trust.pool().request(
            method, url, body=data, headers=headers, timeout=timeout, retries=False
        )
    except urllib3.exceptions.SSLError as exc:
        raise GpuwardError(f"{method} {url}: {trust.refused(exc)}") from None
    except urllib3.exceptions.HTTPError as exc:
        raise GpuwardError(f"cannot reach the server at {args.server}: {exc}") from None
