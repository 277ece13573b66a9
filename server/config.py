"""The server's settings, one frozen value built by the command line or a test."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fleet.driverlog import DEFAULT_DRIVER_PCR
from fleet.remediation import RemediationPolicy
from server.attestation.enrollment import DEFAULT_EK_TYPE
from server.store import Retention

DAY_S = 86_400
# Scheduled compliance reports: their period in seconds (0: none, only on request).
REPORT_SCHEDULES = {"off": 0, "daily": DAY_S, "weekly": 7 * DAY_S}


@dataclass(frozen=True)
class WebhookEndpoint:
    """One ``[[webhook]]`` of server.toml: where operational events are POSTed, and
    the shared secrets they are signed with (``fleet.webhook_signature``)."""

    url: str
    # Every secret in the secret file signs each delivery: during a rotation the
    # receiver accepts the old or the new one. Never shown.
    secrets: tuple[bytes, ...] = field(repr=False)
    events: tuple[str, ...] = ()  # the event types it gets (or PREFIX.*); empty: all
    name: str = ""  # names its deliveries in the store and logs; default: the URL
    timeout_s: float = 10.0  # for one attempt, connecting to reading the answer
    max_attempts: int = 16  # then the delivery is given up, with an error logged

    @property
    def key(self) -> str:
        return self.name or self.url


@dataclass(frozen=True)
class RemediationConfig:
    """``[remediation]`` of server.toml: who carries out actions, and each pool's
    policy (``fleet.remediation``). A pool without a policy is left alone."""

    # "slurm": drains and resumes with scontrol; "none": decisions are audited and
    # notified, and nothing is drained (a dry run, or a fleet without a scheduler).
    scheduler: str = "none"
    # The scontrol command, run as the server's user: that user must be allowed to
    # drain nodes (Slurm's SlurmUser, or a sudo rule naming this exact command).
    scontrol: tuple[str, ...] = ("/usr/bin/scontrol",)
    slurm_conf: Path | None = None  # SLURM_CONF for scontrol; None: Slurm's default
    # The operator's programs for "reset" and "reboot", run after the node is
    # drained with the node id, the action and the reason as arguments.
    hooks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    timeout_s: float = 30.0  # for one scontrol or hook run
    tick_s: float = 10.0  # at most the report interval: act within one interval
    pools: Mapping[str, RemediationPolicy] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerConfig:
    repo: Path
    db: str  # store URL: a path, sqlite:///path or postgresql://...
    director: Path | None = None  # the director repository, served per node when set
    host: str = "127.0.0.1"
    port: int = 8470
    # HTTPS on the port itself (PEM files: the certificate chain and its key), for a
    # site without a TLS-terminating reverse proxy; both or neither.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Heartbeats: nodes report every report_interval_s; one silent for
    # missing_after intervals is shown as missing.
    report_interval_s: int = 300
    missing_after: int = 3
    # Per-node token bucket: sustained requests per second and burst.
    node_rate_per_s: float = 1.0
    node_burst: int = 20
    request_timeout_s: float = 30.0
    # A connection's first request line and headers must arrive within this; each
    # source address may hold this many connections open (behind a reverse proxy,
    # all nodes share its address: raise it there). The total is kept below the
    # process's file descriptor limit (server.connections).
    header_timeout_s: float = 10.0
    max_connections_per_address: int = 256
    rollout_tick_s: float = 15.0
    # The no-TPM enrollment mode: nodes presenting this shared secret are
    # enrolled and shown as unattested. None: only an injected verifier enrolls.
    unattested_enrollment_token: str | None = None
    # TPM enrollment: EK certificates must chain to these CA files (or folders of
    # them); empty: no TPM enrollment.
    ek_ca: tuple[Path, ...] = ()
    # The token a node presents to begin TPM enrollment (required with ek_ca):
    # it keeps strangers from making the server do TPM work; the TPM, not the
    # token, vouches for the node.
    tpm_enrollment_token: str | None = None
    # The EK template TPMs enroll by (server.attestation.enrollment.EK_TYPES): one,
    # so that a TPM with certificates for several EKs still vouches for one node.
    ek_type: str = DEFAULT_EK_TYPE
    # The least PCR selection a node's quotes must cover; the driver PCR (the
    # applier's measurements, fleet.driverlog) is always added to it.
    required_pcrs: str = "sha256:0-9"
    driver_pcr: int = DEFAULT_DRIVER_PCR
    # Measured-boot policies (gpuward policy from-eventlog): one for every pool,
    # and per pool, (pool, file) pairs that take precedence.
    boot_policy: Path | None = None
    pool_boot_policies: tuple[tuple[str, Path], ...] = ()
    # GPU attestation (server.gpu_attestation): the RIMs the GPU evidence in attested
    # reports is judged by are those published in the image repository ('gpuward repo
    # add-rims', server.gpu_rims) and, besides, a folder of NVIDIA's *.swidtag files
    # (None: the published ones alone); the roots its chains must lead to (None:
    # NVIDIA's, as shipped); and revocation, checked against the published OCSP
    # responses: "unchecked" leaves a GPU "unknown" when a certificate has no response;
    # "waived" accepts that, and says so in each verdict (revoked or stale still fails).
    gpu_rims: Path | None = None
    gpu_device_root: Path | None = None
    gpu_rim_root: Path | None = None
    gpu_revocation: str = "unchecked"
    # Challenges: how long one lives, and how many of one purpose may be pending
    # (enrollment's; a node's report challenge is one per node, not counted).
    challenge_ttl_s: float = 120.0
    max_pending_challenges: int = 10_000
    # Requests before authentication (enrollment), per source address: a token
    # bucket generous enough for a site behind one NAT address enrolling at once.
    preauth_rate_per_s: float = 2.0
    preauth_burst: int = 100
    # The Ed25519 key that signs compliance reports; None: <repo>/keys/report.key,
    # made at first start.
    report_key: Path | None = None
    # Or the report key in a PKCS#11 token (keys.report_key): its signer URI, the
    # token's module (None: PYKCS11LIB) and the file holding the token's user PIN.
    report_key_uri: str | None = None
    report_key_module: Path | None = None
    report_key_pin_file: Path | None = None
    # run_server: processes serving the port (SO_REUSEPORT), each a replica;
    # more than one needs PostgreSQL.
    workers: int = 1
    # Re-signing online metadata (server.renewal): a pass every interval; after a
    # failed pass, a retry after the first delay, doubled each time up to the bound.
    resign_interval_s: float = 300.0
    resign_retry_s: tuple[float, float] = (10.0, 120.0)
    # Reverse proxies terminating TLS in front of the server: from these peers
    # alone ``X-Forwarded-Proto: https`` is believed (the session cookie is then
    # Secure); from any other peer the header is ignored.
    trusted_proxies: tuple[str, ...] = ()
    # Reports kept per node (server.store.Retention): the newest this many, none
    # older than this many days (its latest report always). 500 is the most any
    # view reads (the node API's history, the compliance report).
    report_retention_count: int = 500
    report_retention_days: int = 30
    # Webhooks (server.webhooks): endpoints told of operational events. Failed
    # deliveries are retried after the first delay, doubled each time up to the
    # bound, with jitter; the sender looks for new events every poll interval, and
    # watches the fleet's conditions (a node missing ...) every watch interval
    # (a poll interval of 0: neither, tests drive them).
    webhooks: tuple[WebhookEndpoint, ...] = ()
    webhook_retry_s: tuple[float, float] = (5.0, 3600.0)
    webhook_poll_s: float = 5.0
    webhook_watch_s: float = 60.0
    # HOST:PORT serving GET /metrics alone, without a token (None: only on the
    # server's port, to a viewer token).
    metrics_listen: str | None = None
    # Remediation (server.remediation); None: findings are only shown.
    remediation: RemediationConfig | None = None
    # Compliance reports (server.report_runs): a fleet report made and kept each UTC
    # day or ISO week ("off": only on request); kept reports per scope (fleet, node).
    report_schedule: str = "off"
    reports_kept: int = 60

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return None if self.metrics_listen is None else parse_listen(self.metrics_listen)

    @property
    def retention(self) -> Retention:
        return Retention(self.report_retention_count, self.report_retention_days * DAY_S)

    @property
    def next_challenge_ttl_s(self) -> float:
        """How long the challenge answered with a report waits for the node's next
        report: two intervals, so one late report still finds it."""
        return max(self.challenge_ttl_s, 2.0 * self.report_interval_s)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[ADDRESS]:PORT`` for IPv6) as a host and a port; ValueError
    saying what is wrong."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("write HOST:PORT, e.g. 127.0.0.1:9464 or [::1]:9464")
    return host, int(port)
