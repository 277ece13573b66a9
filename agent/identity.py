"""The node's request key: created at enrollment, used to sign every request.

The Ed25519 private key lives in ``<state dir>/node.key``, created with mode
0600 by one ``open`` call (never world-readable, not even for an instant).
Enrollment registers its public half with the server; what vouches for it is
the evidence: with an ``[attestation]`` table, the TPM (its activated credential
and a quote binding the key to its AK, ``server.tpm_enrollment``), the
enrollment token only admitting the exchange; without one, the operator's
enrollment token (the no-TPM mode, shown as "unattested").
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import structlog
import urllib3
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.tls import ServerTrust
from fleet.attestation import Challenge, CredentialChallenge
from fleet.errors import GpuwardError, InvalidDocument
from fleet.nodeauth import (
    ENROLLMENT_TOKEN_HEADER,
    KeyEnrollmentRequest,
    RequestSignature,
    signed_message,
)
from fleet.version import VERSION
from node.attest.config import AttestConfig, ak_file
from node.channel import ChannelUnavailable
from node.config import AgentConfig

log = structlog.get_logger(__name__)
_TIMEOUT = urllib3.Timeout(connect=5.0, read=10.0)


class NotEnrolled(GpuwardError):
    """The node has no request key yet."""


def load_key(config: AgentConfig) -> Ed25519PrivateKey:
    try:
        data = config.key_file.read_bytes()
    except FileNotFoundError:
        raise NotEnrolled(
            f"node {config.node_id} is not enrolled (no {config.key_file}); "
            "run 'gpuward agent enroll --config FILE'"
        ) from None
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise GpuwardError(f"{config.key_file} is not an Ed25519 key; remove it and enroll again")
    return key


def _create_key(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return key


def sign(
    key: Ed25519PrivateKey, node_id: str, method: str, url: str, body: bytes
) -> dict[str, str]:
    """The signature headers for a request to ``url`` (its path and query are signed)."""
    parsed = urlparse(url)
    path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
    timestamp, nonce = int(time.time()), secrets.token_hex(16)
    message = signed_message(method, path, node_id, timestamp, nonce, body)
    return RequestSignature(node_id, timestamp, nonce, key.sign(message)).headers()


def signed_request(
    config: AgentConfig, key: Ed25519PrivateKey, method: str, url: str, body: bytes = b""
) -> urllib3.BaseHTTPResponse:
    """Send one signed request; a retry is signed afresh (a new nonce), never replayed.
    A TLS failure is not retried: it names the CA file the server failed against."""
    trust = ServerTrust.of(config)
    pool = trust.pool()
    last: Exception | None = None
    for attempt in range(3):
        if attempt:
            time.sleep(0.5 * attempt)
        headers = {
            "User-Agent": f"gpuward-agent/{VERSION}",
            **sign(key, config.node_id, method, url, body),
        }
        if body:
            headers["Content-Type"] = "application/json"
        try:
            return pool.request(
                method, url, body=body or None, headers=headers, timeout=_TIMEOUT, retries=False
            )
        except urllib3.exceptions.SSLError as exc:
            raise ChannelUnavailable(f"{method} {url}: {trust.refused(exc)}") from None
        except urllib3.exceptions.HTTPError as exc:
            last = exc
    raise ChannelUnavailable(f"{method} {url}: {last}")


def enrollment_token(config: AgentConfig) -> str:
    """The operator's enrollment token, from ``enrollment_token_file``."""
    if config.enrollment_token_file is None:
        raise GpuwardError(
            "agent config: set enrollment_token_file to the operator's enrollment token "
            "(needed to enroll, with or without a TPM)"
        )
    try:
        return config.enrollment_token_file.read_text().strip()
    except FileNotFoundError:
        raise GpuwardError(
            f"enrollment token file {config.enrollment_token_file} not found"
        ) from None


def _evidence(config: AgentConfig, public_key: bytes, token: str) -> dict[str, Any]:
    if config.attestation is not None:
        return _tpm_evidence(config, config.attestation, public_key, token)
    return {"type": "enrollment-token", "token": token}


def _tpm_evidence(
    config: AgentConfig, attest: AttestConfig, public_key: bytes, token: str
) -> dict[str, Any]:
    """Begin TPM enrollment, activate the credential, and certify ``public_key``."""
    from node.attest.attestor import Attestor  # tpm2-pytss: only on hosts that attest

    trust = ServerTrust.of(config)
    with Attestor(attest, config.state_dir) as attestor:
        body = json.dumps(attestor.enrollment_request(config.node_id).to_dict()).encode()
        try:
            response = trust.pool().request(
                "POST",
                config.tpm_enroll_url,
                body=body,
                headers={
                    "User-Agent": f"gpuward-agent/{VERSION}",
                    "Content-Type": "application/json",
                    ENROLLMENT_TOKEN_HEADER: token,
                },
                timeout=_TIMEOUT,
                retries=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            problem = trust.refused(exc) if isinstance(exc, urllib3.exceptions.SSLError) else exc
            raise ChannelUnavailable(f"POST {config.tpm_enroll_url}: {problem}") from None
        if response.status != 200:
            raise GpuwardError(
                f"TPM enrollment refused: HTTP {response.status}: {_error(response)}"
            )
        begun = json.loads(response.data)
        try:
            credential = CredentialChallenge.from_dict(begun.get("credential"))
            challenge = Challenge.from_dict(begun.get("session_key_challenge"))
        except (InvalidDocument, AttributeError) as exc:
            raise GpuwardError(f"the server's TPM enrollment answer is malformed: {exc}") from None
        answer = attestor.activate(config.node_id, credential)
        certification = attestor.certify_key(config.node_id, public_key, challenge)
    log.info("tpm_credential_activated", node=config.node_id)
    return {"type": "tpm2", "credential": answer.to_dict(), "session_key": certification.to_dict()}


def enrollment_files(config: AgentConfig) -> tuple[Path, ...]:
    """The files in the state folder that enrolling reuses when they exist."""
    if config.attestation is None:
        return (config.key_file,)
    ak = ak_file(config.state_dir)
    return (config.key_file, ak.parent, ak)


def enroll(config: AgentConfig, token: str | None = None) -> dict[str, Any]:
    """Enroll this node (creating its key if needed); repeating it is harmless.

    ``token`` is the enrollment token, read from the config's file if not given
    (a caller about to give up root reads it first).
    """
    if token is None:
        token = enrollment_token(config)
    try:
        key = load_key(config)
    except NotEnrolled:
        key = _create_key(config.key_file)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    evidence = _evidence(config, public, token)
    request = KeyEnrollmentRequest(config.node_id, public, config.pool, evidence)
    body = json.dumps(request.to_dict()).encode()
    response = signed_request(config, key, "POST", config.enroll_url, body)
    if response.status not in (200, 201):
        # 409: another key holds this id, or another node this TPM; the server's
        # message names the node to remove and the command.
        raise GpuwardError(f"enrollment refused: HTTP {response.status}: {_error(response)}")
    result: dict[str, Any] = json.loads(response.data)
    log.info("enrollment_done", node=config.node_id, pool=result.get("pool"))
    return result


def _error(response: urllib3.BaseHTTPResponse) -> str:
    try:
        return str(json.loads(response.data)["error"])
    except (ValueError, KeyError, TypeError):
        return repr(response.data[:200])
