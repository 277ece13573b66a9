"""Quotes verified per second per core, against one bare RSA-2048 signature check.

The server checks a quote for every report of every node. Target: a quote's
full check (challenge, qualifying data, PCR selection, PCR digest, signature)
costs at most 3 bare RSA-2048 PKCS#1 v1.5 checks (``cryptography``), timed in the
same run so that the ratio, not the microseconds, is what to compare. Also
shown: the report's canonical digest, the event-log replay on top, and reading
the body a node posts in the steady state (JSON, the strict reader, the digest).

The quotes are signed here by a software RSA key standing in for the AK, with
TPMS_ATTEST and TPM2B_PUBLIC marshalled as a TPM does (the tests check the same
verifier against swtpm's real quotes): the verifier's work is identical, and the
benchmark needs no TPM. Prints figures, asserts nothing.

    .venv/bin/python bench/attest.py [--runs 5] [--repeat 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from fleet.attestation import (
    NONCE_BYTES,
    AttestationEvidence,
    AttestedReport,
    PcrSelection,
    quote_qualifying_data,
    report_digest,
)
from fleet.eventlog import parse, replay
from fleet.report import GpuHealth, HealthReport
from server.attestation.challenges import Challenges, MemoryChallengeStore, PendingChallenge
from server.attestation.enrollment import EnrolledTpm
from server.attestation.verifier import REPORT, QuoteVerifier

LOG = Path(__file__).resolve().parents[2] / "shared/testdata/eventlogs/rhel95-secureboot.bin"
SELECTION = PcrSelection.parse("sha256:0-9,14")
QUOTED_RESET_COUNT = 2  # TPMS_CLOCK_INFO.resetCount in every quote: the boot the quote is from
AK_ATTRIBUTES = 0x00050072  # fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth,
# restricted, sign


def ak_public(key: rsa.RSAPrivateKey) -> bytes:
    """TPM2B_PUBLIC of a restricted RSASSA-SHA256 signing key."""
    modulus = key.public_key().public_numbers().n.to_bytes(256, "big")
    area = struct.pack(">HHIH", 0x0001, 0x000B, AK_ATTRIBUTES, 0)  # RSA, SHA-256, no policy
    area += struct.pack(">HHHHIH", 0x0010, 0x0014, 0x000B, 2048, 0, 256) + modulus
    return struct.pack(">H", len(area)) + area


def quote(
    key: rsa.RSAPrivateKey, qualifying: bytes, pcrs: bytes, selection: PcrSelection = SELECTION
) -> tuple[bytes, bytes]:
    """TPMS_ATTEST for a quote of ``selection`` (one sha256 bank), and its TPMT_SIGNATURE."""
    mask = sum(1 << p for p in selection.banks[0][1]).to_bytes(3, "little")
    attest = struct.pack(">IHH", 0xFF544347, 0x8018, 34) + b"\x00\x0b" + bytes(32)
    attest += struct.pack(">H", len(qualifying)) + qualifying
    attest += struct.pack(">QIIBQ", 123456, QUOTED_RESET_COUNT, 0, 1, 0x20191023)
    attest += struct.pack(">IHB", 1, 0x000B, 3) + mask
    attest += struct.pack(">H", 32) + hashlib.sha256(pcrs).digest()
    signature = key.sign(attest, padding.PKCS1v15(), hashes.SHA256())
    return attest, struct.pack(">HHH", 0x0014, 0x000B, len(signature)) + signature


def make_report() -> HealthReport:
    gpus = tuple(
        GpuHealth(i, "NVIDIA H100 80GB HBM3", f"GPU-{i:08x}", "580.65.06", True, ())
        for i in range(8)
    )
    return HealthReport(
        "node-1", 1_800_000_000, "a", "580.65.06", "R580/b", "up-to-date", "ok", gpus
    )


def timed(calls: Sequence[Callable[[], object]]) -> float:
    """Seconds per call over one batch."""
    start = time.perf_counter()
    for call in calls:
        call()
    return (time.perf_counter() - start) / len(calls)


Check = Callable[[QuoteVerifier, AttestedReport], Awaitable[object]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    node = EnrolledTpm("node-1", ak_public(key), "00" * 32, 0)
    log = LOG.read_bytes()
    replayed = replay(parse(log))["sha256"]
    pcrs = {"sha256": {p: replayed.get(p, bytes(32)) for p in SELECTION.banks[0][1]}}
    report = make_report()
    digest = report_digest(report)
    # One signed quote per challenge nonce: signing is slow, so a pool is made
    # once and its nonces re-issued before each batch.
    pool = []
    for _ in range(args.repeat):
        nonce = os.urandom(NONCE_BYTES)
        attest, signature = quote(key, quote_qualifying_data(nonce, digest), b"".join(
            pcrs["sha256"][p] for p in SELECTION.banks[0][1]
        ))  # fmt: skip
        evidence = AttestationEvidence(nonce, attest, signature, SELECTION, pcrs, log)
        pool.append(AttestedReport(report, evidence))

    async def batch(check: Check) -> float:
        """Seconds per check of the pool, its nonces issued afresh to a verifier of
        their own (in memory: the benchmark times the verifier, not a database).
        The checks run in one event loop, as on the server: an ``await`` that does
        not suspend costs a fraction of a microsecond."""
        store = MemoryChallengeStore()
        now = time.time()
        for attested in pool:
            pending = PendingChallenge(node.node_id, REPORT, b"", now + 3600)
            await store.add_challenge(attested.evidence.nonce, pending, now, len(pool))
        fresh = QuoteVerifier(Challenges(store), SELECTION)
        start = time.perf_counter()
        for attested in pool:
            await check(fresh, attested)
        return (time.perf_counter() - start) / len(pool)

    # What a node posts once the server holds its event log: the log named by digest.
    posted = json.dumps(AttestedReport(report, pool[0].evidence.without_log()).to_dict()).encode()

    async def read_posted(_verifier: QuoteVerifier, _attested: AttestedReport) -> bytes:
        return report_digest(AttestedReport.from_dict(json.loads(posted)).report)

    message, signature = pool[0].evidence.quote, pool[0].evidence.signature[6:]
    public = key.public_key()
    pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
    bare_calls = [lambda: public.verify(signature, message, pkcs1, sha256)] * args.repeat
    node.ak_key  # noqa: B018  built once per enrolled node, as a server keeps it
    checks: dict[str, Check] = {
        "quote check (challenge, nonce, selection, PCR digest, signature)": lambda v, a: (
            v.check_quote(node, a.evidence, digest)
        ),
        "  + canonical report digest": lambda v, a: v.check_quote(
            node, a.evidence, report_digest(a.report)
        ),
        "  + event-log parse and replay": lambda v, a: v.verify_report(node, a),
        "report read as posted (JSON, strict reader, canonical digest)": read_posted,
    }
    # The reference and every check run back to back in each round, and each
    # keeps its best round: on a shared machine the ratio then holds steady.
    best = {name: float("inf") for name in ("reference", *checks)}
    for _ in range(args.runs):
        best["reference"] = min(best["reference"], timed(bare_calls))
        for name, check in checks.items():
            best[name] = min(best[name], asyncio.run(batch(check)))
    bare = best["reference"]
    print(f"best of {args.runs} rounds x {args.repeat}; event log {LOG.name} ({len(log)} bytes)")
    print(f"{'bare RSA-2048 PKCS#1 v1.5 verify (reference)':66} {bare * 1e6:8.1f} us "
          f"{1 / bare:9.0f}/s  1.00x")  # fmt: skip
    for name in checks:
        seconds = best[name]
        print(f"{name:66} {seconds * 1e6:8.1f} us {1 / seconds:9.0f}/s  {seconds / bare:.2f}x")


if __name__ == "__main__":
    main()
