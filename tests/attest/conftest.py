"""Real software TPMs (swtpm) for the attestation tests.

``swtpm_setup`` manufactures a TPM (EK certificates signed by swtpm's local CA
under /var/lib/swtpm-localca) once per session per template; every test then
starts ``swtpm socket`` on a copy of that state, on free ports, so each test gets
a TPM with zeroed PCRs and no leftover keys, killed at teardown. Template "a" and
"b" are two different TPMs (different EKs), for the attacks that need a second one.
"""

from __future__ import annotations

import datetime
import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from asyncio import run
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.attestation import PcrSelection
from node.attest.attestor import Attestor
from node.attest.config import AttestConfig
from server.attestation.challenges import Challenges, MemoryChallengeStore
from server.attestation.enrollment import EkTrust, EnrolledTpm, TpmEnrollmentVerifier
from server.attestation.verifier import QuoteVerifier
from tests.conftest import Site, make_site
from tests.netutil import free_port

LOCAL_CA = Path("/var/lib/swtpm-localca")
LOG_DIR = Path(__file__).resolve().parents[3] / "shared/testdata/eventlogs"
BANKS = "sha1,sha256,sha384"
START_DEADLINE_S = 10.0


class Clock:
    """An injectable clock: tests move time instead of sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Tpm:
    port: int
    state: Path
    process: subprocess.Popen[bytes]

    @property
    def tcti(self) -> str:
        return f"swtpm:port={self.port}"

    def config(
        self, selection: PcrSelection | None = None, event_log: Path | None = None
    ) -> AttestConfig:
        kwargs = {} if selection is None else {"selection": selection}
        return AttestConfig(
            tcti=self.tcti,
            event_log=event_log or self.state / "no-event-log",
            **kwargs,  # type: ignore[arg-type]
        )


def _free_ports() -> int:
    """A port P with P+1 also free (swtpm's server and control sockets)."""
    for _ in range(50):
        port = free_port()
        if port >= 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free ports")


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"swtpm exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.01)  # polling a socket with a deadline, not synchronising
    raise RuntimeError(f"swtpm did not listen on {port} within {START_DEADLINE_S}s")


@pytest.fixture(scope="session")
def tpm_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    templates = {}
    for name in ("a", "b"):
        state = tmp_path_factory.mktemp(f"tpm-{name}")
        subprocess.run(
            [
                "swtpm_setup",
                "--tpm2",
                "--tpmstate",
                str(state),
                "--create-ek-cert",
                "--create-platform-cert",
                "--lock-nvram",
                "--pcr-banks",
                BANKS,
            ],
            check=True,
            capture_output=True,
        )
        templates[name] = state
    return templates


@contextmanager
def start_swtpm(template: Path, folder: Path) -> Iterator[Tpm]:
    """A swtpm on a copy of ``template``'s state, on free ports, stopped on exit."""
    state = folder / "state"
    shutil.copytree(template, state)
    port = _free_ports()
    process = subprocess.Popen(
        [
            "swtpm",
            "socket",
            "--tpm2",
            "--server",
            f"type=tcp,port={port},bindaddr=127.0.0.1",
            "--ctrl",
            f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
            "--tpmstate",
            f"dir={state}",
            "--flags",
            "not-need-init,startup-clear",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, process)
        yield Tpm(port, state, process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def start_tpm(tpm_templates: dict[str, Path], tmp_path: Path) -> Iterator[Callable[..., Tpm]]:
    numbers = itertools.count()
    with ExitStack() as stack:

        def start(template: str = "a") -> Tpm:
            folder = tmp_path / f"tpm-{next(numbers)}"
            folder.mkdir()
            return stack.enter_context(start_swtpm(tpm_templates[template], folder))

        yield start


@pytest.fixture
def tpm(start_tpm: Callable[..., Tpm]) -> Tpm:
    return start_tpm()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def challenges(clock: Clock) -> Challenges:
    return Challenges(MemoryChallengeStore(), clock=clock)


@pytest.fixture
def trust() -> EkTrust:
    return EkTrust.load([LOCAL_CA])


@pytest.fixture
def enrollment(trust: EkTrust, challenges: Challenges, clock: Clock) -> TpmEnrollmentVerifier:
    return TpmEnrollmentVerifier(trust, challenges, clock)


def enroll(
    attestor: Attestor, enrollment: TpmEnrollmentVerifier, node_id: str = "n1"
) -> EnrolledTpm:
    """The whole enrollment exchange, as the HTTP layer would relay it."""
    challenge = run(enrollment.begin(attestor.enrollment_request(node_id)))
    return run(enrollment.finish(attestor.activate(node_id, challenge)))


@pytest.fixture
def verifier(challenges: Challenges) -> QuoteVerifier:
    return QuoteVerifier(challenges, PcrSelection.parse("sha256:0-9,15"))


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "agent-state"
    path.mkdir()
    return path


def extend_log(tpm: Tpm, log_path: Path) -> None:
    """Replay a firmware log into swtpm as firmware would have: every event's
    digests, in order, EV_NO_ACTION skipped."""
    replay_log(f"port={tpm.port}", log_path)


def replay_log(swtpm_conf: str, log_path: Path) -> None:
    """``extend_log`` for a swtpm named by its TCTI configuration (``port=N``,
    ``path=SOCKET``)."""
    from tpm2_pytss import ESAPI, TCTILdr
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA

    from fleet.attestation import BANKS as ALGS
    from fleet.eventlog import EV_NO_ACTION, parse

    log = parse(log_path.read_bytes())
    os.environ.setdefault("TSS2_LOG", "all+none")
    with TCTILdr("swtpm", swtpm_conf) as tcti, ESAPI(tcti) as esapi:
        for event in log.events[1:] if log.spec_id else log.events:
            if event.event_type == EV_NO_ACTION:
                continue
            values = []
            for bank, digest in event.digests.items():
                value = TPMT_HA(hashAlg=ALGS[bank][0])
                setattr(value.digest, bank, digest)
                values.append(value)
            digests = TPML_DIGEST_VALUES(values)
            esapi.pcr_extend(ESYS_TR.parse(f"pcr{event.pcr}"), digests)


def self_signed_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA key and certificate no server was told to trust (for unknown-CA attacks)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def ek_site(template: Path, base: Path, ek_ca: Path) -> Iterator[Site]:
    """A server on SQLite enrolling TPMs whose EK certificates chain to ``ek_ca``
    (and nodes with the enrollment token)."""
    base.mkdir()
    yield from make_site(template, base, str(base / "server.db"), ek_ca=(ek_ca,))


@pytest.fixture
def tpm_site(_template_repo: Path, tmp_path: Path) -> Iterator[Site]:
    """The server trusting swtpm's local CA, and the enrollment token too."""
    yield from ek_site(_template_repo, tmp_path / "site", LOCAL_CA)
