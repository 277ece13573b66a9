"""``gpuward gpu-attest``: verify a GPU's SPDM attestation evidence offline.

The same verifier the server runs (``server.gpu_attestation``), so an operator
can judge a GPU's report, certificate chain and RIMs on an air-gapped machine,
and see per check and per measurement index what the server would decide.
Nothing here touches the network: RIMs come from a directory, the roots are
NVIDIA's as shipped with gpuward (or files named for a lab's own), and
revocation is judged from OCSP responses fetched beforehand (``--ocsp DIR``),
waived by name, or left unknown.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime
from pathlib import Path

from fleet.errors import GpuwardError
from fleet.gpu_attestation import GpuAttestationVerdict, GpuOutcome
from fleet.human_time import when
from gpuward.cli.output import add_json_flag, emit, table

EXIT_REFUSED = 3
MAX_RIMS = 512
MAX_FILE_BYTES = 1024 * 1024
_NONCE = re.compile(r"[0-9a-fA-F]{64}")


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("gpu-attest", help="GPU attestation evidence (SPDM, RIMs), offline")
    sub = group.add_subparsers(dest="command", metavar="COMMAND", required=True)
    verify = sub.add_parser(
        "verify",
        help="verify a GPU's attestation report (exit 0: pass, 3: fail or unknown)",
        description=(
            "Verify a GPU's SPDM attestation report offline: its certificate chain to NVIDIA's "
            "device root, its signature, its nonce, and each measurement against the driver and "
            "VBIOS RIMs for the versions it states, RIMs signed by NVIDIA's RIM root. Exit "
            f"status: 0 when every check passed, {EXIT_REFUSED} when one failed or could not "
            "be made (a missing RIM is unknown, never a pass), 1 on unreadable input."
        ),
    )
    verify.add_argument(
        "--report", type=Path, required=True, help="attestation report, binary or hex text"
    )
    verify.add_argument(
        "--cert-chain", type=Path, required=True, help="the GPU's certificate chain, PEM"
    )
    verify.add_argument(
        "--rims", type=Path, help="directory of RIMs (*.swidtag): the ones for the report's "
        "driver and VBIOS versions are used",
    )  # fmt: skip
    verify.add_argument(
        "--driver-rim", type=Path,
        help="use this driver RIM whatever its version (a version mismatch then fails)",
    )  # fmt: skip
    verify.add_argument(
        "--vbios-rim", type=Path,
        help="use this VBIOS RIM whatever its version (a version mismatch then fails)",
    )  # fmt: skip
    verify.add_argument(
        "--nonce", help="the 32-byte nonce the GPU was challenged with, hex; without it "
        "freshness is unknown",
    )  # fmt: skip
    verify.add_argument(
        "--at", type=_instant, metavar="TIME",
        help="judge certificates at this UTC time (YYYY-MM-DDTHH:MM:SS) instead of now",
    )  # fmt: skip
    verify.add_argument(
        "--ocsp", type=Path, metavar="DIR",
        help="directory of OCSP responses (*.der) for the device and RIM certificates, "
        "fetched beforehand: revocation is checked against them",
    )  # fmt: skip
    verify.add_argument(
        "--no-revocation-check", action="store_true",
        help="accept certificates without an OCSP response (a revoked or stale one still "
        "fails); shown in the verdict",
    )  # fmt: skip
    verify.add_argument(
        "--device-root", type=Path, help="device root certificate, PEM (NVIDIA's if not given)"
    )
    verify.add_argument(
        "--rim-root", type=Path, help="RIM signing root certificate, PEM (NVIDIA's if not given)"
    )
    add_json_flag(verify)
    verify.set_defaults(func=_verify)


def _instant(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (use YYYY-MM-DDTHH:MM:SS)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _read(path: Path) -> bytes:
    with path.open("rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise GpuwardError(f"{path}: larger than {MAX_FILE_BYTES} bytes; is it the right file?")
    return data


def _files(folder: Path, pattern: str, what: str) -> list[Path]:
    if not folder.is_dir():
        raise GpuwardError(f"{folder}: not a directory of {what}")
    paths = sorted(p for p in folder.glob(pattern) if p.is_file())
    if len(paths) > MAX_RIMS:
        raise GpuwardError(f"{folder}: more than {MAX_RIMS} {what}; keep the relevant ones")
    return paths


def _verify(args: argparse.Namespace) -> int:
    from server.gpu_attestation.certs import load_root
    from server.gpu_attestation.ocsp import OcspAnswer, load_responses
    from server.gpu_attestation.rim import RimFile
    from server.gpu_attestation.spdm import read_report
    from server.gpu_attestation.verifier import GpuTrust, RimSources, verify_evidence

    if args.rims is None and (args.driver_rim is None or args.vbios_rim is None):
        raise GpuwardError("name the RIMs: --rims DIR, or both --driver-rim and --vbios-rim")
    nonce = None
    if args.nonce is not None:
        if not _NONCE.fullmatch(args.nonce):
            raise GpuwardError("--nonce must be 64 hex digits (the 32-byte challenge)")
        nonce = bytes.fromhex(args.nonce)
    trust = GpuTrust.nvidia()
    if args.device_root is not None:
        trust = GpuTrust(load_root(_read(args.device_root), str(args.device_root)), trust.rim_root)
    if args.rim_root is not None:
        trust = GpuTrust(trust.device_root, load_root(_read(args.rim_root), str(args.rim_root)))
    pool: tuple[RimFile, ...] = ()
    if args.rims is not None:
        pool = tuple(RimFile(p.name, _read(p)) for p in _files(args.rims, "*.swidtag", "RIMs"))
    responses: tuple[OcspAnswer, ...] = ()
    if args.ocsp is not None:
        files = _files(args.ocsp, "*.der", "OCSP responses")
        responses = load_responses([(p.name, _read(p)) for p in files])
    rims = RimSources(
        pool=pool,
        driver=RimFile(args.driver_rim.name, _read(args.driver_rim)) if args.driver_rim else None,
        vbios=RimFile(args.vbios_rim.name, _read(args.vbios_rim)) if args.vbios_rim else None,
        responses=responses,
    )
    verdict = verify_evidence(
        read_report(_read(args.report)),
        _read(args.cert_chain),
        rims,
        nonce=nonce,
        at=args.at or datetime.now(UTC),
        trust=trust,
        waive_revocation=args.no_revocation_check,
    )
    emit(args, verdict.to_dict(), _text(verdict))
    return 0 if verdict.verdict is GpuOutcome.PASS else EXIT_REFUSED


def _text(verdict: GpuAttestationVerdict) -> str:
    head = (
        f"GPU attestation: {verdict.verdict.upper()} (driver {verdict.driver_version or '?'}, "
        f"VBIOS {verdict.vbios_version or '?'}, certificates judged at "
        f"{when(verdict.verified_at)})"
    )
    checks = table(
        ("CHECK", "OUTCOME", "DETAIL"), [(c.name, c.outcome, c.detail) for c in verdict.checks]
    )
    judged = [m for m in verdict.measurements if m.source is not None]
    lines = [head, checks]
    if judged:
        lines.append(
            table(("INDEX", "RIM", "OUTCOME"), [(m.index, m.source, m.outcome) for m in judged])
        )
    unjudged = [str(m.index) for m in verdict.measurements if m.source is None]
    if unjudged:
        lines.append(f"no trusted RIM judges index {', '.join(unjudged)}: unknown")
    return "\n\n".join(lines)
