"""``gpuward server run``'s options, declared once for the command line and the file.

A packaged server is configured by ``/etc/gpuward/server.toml``, which its unit
reads with ``--config``: an operator edits one file, never ``ExecStart=``, and
the flags stay for overrides and tests. Each option is declared here once: its
key in the file (its flag is the key with dashes), its type, its bounds and its
help; its default is the ``ServerConfig`` field it sets. A flag given on the
command line replaces the file's value whole (a list or table included).
Relative paths in the file are relative to the file's folder, as in agent.toml.
Webhooks (``[[webhook]]`` tables: a URL, a secret file, filters) are set in the
file only: a table per endpoint does not fit on a command line.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.driverlog import driver_pcr_problem
from fleet.errors import GpuwardError
from fleet.rollout import POOL
from fleet.schema import Reader
from fleet.webhook import type_problem
from keys.durable_files import read_toml
from keys.hsm import token_of
from server.attestation.enrollment import EK_TYPES, ek_type_problem
from server.config import REPORT_SCHEDULES, ServerConfig, WebhookEndpoint, parse_listen
from server.remediation.settings import read_remediation

DEFAULT_PATH = Path("/etc/gpuward/server.toml")
GPU_REVOCATION = ("unchecked", "waived")
MAX_WORKERS = 64
_WIDE = 2**63 - 1  # the reader's type check only: bounds are checked for flags and file alike


class OptionKind(enum.Enum):
    TEXT = enum.auto()
    STORE = enum.auto()  # a store URL, or a SQLite file's path
    PATH = enum.auto()
    TOKEN_FILE = enum.auto()  # a path; the server keeps the token read from it
    INT = enum.auto()
    FLOAT = enum.auto()
    PATHS = enum.auto()  # a repeatable flag; a list in the file
    POOL_PATHS = enum.auto()  # POOL=FILE, repeatable; a table POOL = "FILE" in the file
    ADDRESSES = enum.auto()  # IP addresses: a repeatable flag; a list in the file
    WEBHOOKS = enum.auto()  # [[webhook]] tables, in the file only
    REMEDIATION = enum.auto()  # the [remediation] table, in the file only


@dataclass(frozen=True)
class Option:
    name: str  # the key in the file; the flag is --name-with-dashes
    field: str  # the ServerConfig field it sets, whose default is the option's
    kind: OptionKind
    help: str
    metavar: str | None = None
    required: bool = False
    bounds: tuple[float, float] | None = None  # inclusive, for numbers
    check: Callable[[Any], str | None] | None = None  # the problem with a value, if any
    file_only: bool = False  # no flag: set in server.toml only

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def default(self) -> object:
        field = next(f for f in dataclasses.fields(ServerConfig) if f.name == self.field)
        return None if field.default is dataclasses.MISSING else field.default


def _addresses_problem(value: object) -> str | None:
    assert isinstance(value, tuple)
    for item in value:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            return f"{item!r} is not an IP address (give each proxy's address, not a name)"
    return None


def _token_uri_problem(value: object) -> str | None:
    assert isinstance(value, str)
    try:
        token_of(value)
    except GpuwardError as exc:
        return str(exc)
    return None


def _listen_problem(value: object) -> str | None:
    assert isinstance(value, str)
    try:
        parse_listen(value)
    except ValueError as exc:
        return str(exc)
    return None


def _schedule_problem(value: object) -> str | None:
    return None if value in REPORT_SCHEDULES else f"must be one of {', '.join(REPORT_SCHEDULES)}"


OPTIONS = (
    Option(
        "repo",
        "repo",
        OptionKind.PATH,
        "the server's part of the image repository (metadata/, targets/ and the online "
        "keys: 'gpuward repo export-server' writes it)",
        "DIR",
        required=True,
    ),
    Option(
        "director",
        "director",
        OptionKind.PATH,
        "the server's part of the director repository (optional)",
        "DIR",
    ),
    Option(
        "db",
        "db",
        OptionKind.STORE,
        "store: a SQLite file (path or sqlite:///path) or postgresql://user@host/db",
        "URL",
        required=True,
    ),
    Option("host", "host", OptionKind.TEXT, "address to bind", "ADDRESS"),
    Option(
        "port",
        "port",
        OptionKind.INT,
        "port to listen on (0: any free one)",
        "PORT",
        bounds=(0, 65535),
    ),
    Option(
        "tls_cert",
        "tls_cert",
        OptionKind.PATH,
        "serve HTTPS: the server's certificate (PEM, followed by any intermediate CA "
        "certificates); needs tls_key",
        "FILE",
    ),
    Option("tls_key", "tls_key", OptionKind.PATH, "the private key of tls_cert (PEM)", "FILE"),
    Option(
        "report_interval",
        "report_interval_s",
        OptionKind.INT,
        "how often nodes report, in seconds",
        "S",
        bounds=(1, 7 * 86_400),
    ),
    Option(
        "missing_after",
        "missing_after",
        OptionKind.INT,
        "a node silent for N report intervals is shown as missing",
        "N",
        bounds=(1, 1000),
    ),
    Option(
        "unattested_enrollment_token_file",
        "unattested_enrollment_token",
        OptionKind.TOKEN_FILE,
        "no-TPM mode: enroll nodes presenting the token in FILE, shown as unattested",
        "FILE",
    ),
    Option(
        "ek_ca",
        "ek_ca",
        OptionKind.PATHS,
        "enable TPM enrollment: EK certificates must chain to the CA certificates in "
        "FILE (PEM, or a folder of them); repeatable",
        "FILE",
    ),
    Option(
        "tpm_enrollment_token_file",
        "tpm_enrollment_token",
        OptionKind.TOKEN_FILE,
        "with ek_ca: nodes must present the token in FILE to begin TPM enrollment "
        "(it admits the exchange; the TPM vouches for the node)",
        "FILE",
    ),
    Option(
        "ek_type",
        "ek_type",
        OptionKind.TEXT,
        f"with ek_ca: the endorsement key TPMs enroll by ({' or '.join(EK_TYPES)}); one, "
        "so that a TPM holding certificates for several EKs enrolls one node",
        "TYPE",
        check=ek_type_problem,
    ),
    Option(
        "preauth_rate",
        "preauth_rate_per_s",
        OptionKind.FLOAT,
        "enrollment requests per second admitted from one address, sustained",
        "R",
        bounds=(0.01, 1_000_000),
    ),
    Option(
        "preauth_burst",
        "preauth_burst",
        OptionKind.INT,
        "enrollment requests admitted from one address at once (raise it for a site "
        "enrolling behind one NAT or proxy address)",
        "N",
        bounds=(1, 1_000_000),
    ),
    Option(
        "header_timeout",
        "header_timeout_s",
        OptionKind.FLOAT,
        "close a connection whose request line and headers take longer than S seconds",
        "S",
        bounds=(0.1, 3600),
    ),
    Option(
        "max_connections_per_address",
        "max_connections_per_address",
        OptionKind.INT,
        "connections one source address may hold open; more are closed at once (raise "
        "it behind a reverse proxy, whose address every node shares)",
        "N",
        bounds=(1, 1_000_000),
    ),
    Option(
        "boot_policy",
        "boot_policy",
        OptionKind.PATH,
        "measured-boot policy (from 'gpuward policy from-eventlog') judging every TPM "
        "node's boot, unless its pool has its own",
        "FILE",
    ),
    Option(
        "pool_boot_policy",
        "pool_boot_policies",
        OptionKind.POOL_PATHS,
        "the measured-boot policy of one pool; repeatable",
        "POOL=FILE",
    ),
    Option(
        "gpu_rims",
        "gpu_rims",
        OptionKind.PATH,
        "folder of NVIDIA's RIMs (*.swidtag) judging the GPU evidence in attested reports, "
        "besides those published with 'gpuward repo add-rims'",
        "DIR",
    ),
    Option(
        "gpu_device_root",
        "gpu_device_root",
        OptionKind.PATH,
        "root certificate (PEM) GPU device chains must lead to (default: NVIDIA's)",
        "FILE",
    ),
    Option(
        "gpu_rim_root",
        "gpu_rim_root",
        OptionKind.PATH,
        "root certificate (PEM) RIM signatures must lead to (default: NVIDIA's)",
        "FILE",
    ),
    Option(
        "gpu_revocation",
        "gpu_revocation",
        OptionKind.TEXT,
        "GPU certificate revocation, checked against the OCSP responses published with "
        "'gpuward repo add-rims': unchecked (a certificate without one leaves its GPU "
        "unknown) or waived (accepted, and said in each verdict; revoked or stale still fails)",
        "MODE",
        check=lambda value: (
            None if value in GPU_REVOCATION else f"must be {' or '.join(GPU_REVOCATION)}"
        ),
    ),
    Option(
        "rollout_tick",
        "rollout_tick_s",
        OptionKind.FLOAT,
        "advance rollouts every S seconds",
        "S",
        bounds=(0.1, 3600),
    ),
    Option(
        "driver_pcr",
        "driver_pcr",
        OptionKind.INT,
        "the PCR the nodes' appliers measure the active driver bundle into: their "
        "[attestation] driver_pcr (never 0-10 or 14)",
        "N",
        check=driver_pcr_problem,
    ),
    Option(
        "report_key",
        "report_key",
        OptionKind.PATH,
        "Ed25519 key signing compliance reports (default REPO/keys/report.key, made if missing)",
        "FILE",
    ),
    Option(
        "report_key_uri",
        "report_key_uri",
        OptionKind.TEXT,
        "the report key in a PKCS#11 token instead (ECDSA P-256): its signer URI, as "
        "'gpuward server report-key --pkcs11-token' prints it",
        "hsm:ID?label=TOKEN",
        check=_token_uri_problem,
    ),
    Option(
        "report_key_module",
        "report_key_module",
        OptionKind.PATH,
        "the PKCS#11 module of report_key_uri's token (default: PYKCS11LIB)",
        "FILE",
    ),
    Option(
        "report_key_pin_file",
        "report_key_pin_file",
        OptionKind.PATH,
        "the file holding the user PIN of report_key_uri's token (a systemd credential)",
        "FILE",
    ),
    Option(
        "report_retention_count",
        "report_retention_count",
        OptionKind.INT,
        "keep each node's newest N reports (any view reads at most 500); older ones are "
        "deleted as new ones arrive",
        "N",
        bounds=(1, 10_000_000),
    ),
    Option(
        "report_retention_days",
        "report_retention_days",
        OptionKind.INT,
        "delete reports older than DAYS (a node's latest report is kept), checked hourly",
        "DAYS",
        bounds=(1, 36_500),
    ),
    Option(
        "workers",
        "workers",
        OptionKind.INT,
        "serve from N processes sharing the port, about one core each (PostgreSQL only). "
        "If one dies, the server stops with a non-zero status, to be restarted whole "
        "(systemd: Restart=on-failure)",
        "N",
        bounds=(1, MAX_WORKERS),
    ),
    Option(
        "trusted_proxies",
        "trusted_proxies",
        OptionKind.ADDRESSES,
        "addresses of the TLS-terminating reverse proxies whose 'X-Forwarded-Proto: https' "
        "is believed, so the dashboard's session cookie is marked Secure behind them",
        "ADDRESS",
        check=_addresses_problem,
    ),
    Option(
        "webhook",
        "webhooks",
        OptionKind.WEBHOOKS,
        "endpoints told of operational events, signed: one [[webhook]] table each, with "
        "url, secret_file, and optionally events, name, timeout, max_attempts",
        file_only=True,
    ),
    Option(
        "remediation",
        "remediation",
        OptionKind.REMEDIATION,
        "acting on findings: [remediation] with scheduler (slurm or none), scontrol, "
        "slurm_conf, hooks, tick, timeout, and a [remediation.pools.NAME] policy per pool",
        file_only=True,
    ),
    Option(
        "report_schedule",
        "report_schedule",
        OptionKind.TEXT,
        "make and keep a signed fleet compliance report each UTC day (daily) or ISO week "
        "(weekly), or only on request (off)",
        "off|daily|weekly",
        check=_schedule_problem,
    ),
    Option(
        "reports_kept",
        "reports_kept",
        OptionKind.INT,
        "compliance reports kept of each scope (fleet, node); the oldest beyond are forgotten",
        "N",
        bounds=(1, 10_000),
    ),
    Option(
        "metrics_listen",
        "metrics_listen",
        OptionKind.TEXT,
        "also serve GET /metrics, alone and without a token, on HOST:PORT (e.g. "
        "127.0.0.1:9464 for a Prometheus on this host); on the server's port it always "
        "needs a viewer token",
        "HOST:PORT",
        check=_listen_problem,
    ),
)
# The keys of a [[webhook]] table.
_WEBHOOK_KEYS = frozenset({"url", "secret_file", "events", "name", "timeout", "max_attempts"})
# Shorter shared secrets could be guessed from a delivery's signature.
MIN_SECRET_LEN = 16


@dataclass(frozen=True)
class Setting:
    value: object  # as the option's kind holds it (paths resolved, POOL=FILE split)
    where: str  # how an error names it: "--port", or the file and key


def load(flags: Mapping[str, object], config_file: Path | None = None) -> ServerConfig:
    """The settings of ``config_file`` (if any), overridden by the ``flags`` given
    (by option name; None: not given), checked, with the token files read."""
    settings = {} if config_file is None else read_file(config_file)
    for option in OPTIONS:
        raw = flags.get(option.name)
        if raw is not None:
            settings[option.name] = Setting(_from_flag(option, raw), option.flag)
    values: dict[str, Any] = {}
    for option in OPTIONS:
        setting = settings.get(option.name)
        if setting is None:
            if option.required:
                where = f"{option.name} in {config_file}" if config_file else "--config FILE"
                raise GpuwardError(f"{option.flag} is required (or give {where})")
            continue
        problem = _problem(option, setting)
        if problem is not None:
            raise GpuwardError(problem)
        values[option.field] = _finish(option, setting)
    config = ServerConfig(**values)
    if config.remediation is not None and config.remediation.tick_s > config.report_interval_s:
        raise GpuwardError(
            f"[remediation] tick ({config.remediation.tick_s:g} s) must not exceed "
            f"report_interval ({config.report_interval_s} s): a finding is acted on "
            "within one report interval"
        )
    return config


def read_file(path: Path) -> dict[str, Setting]:
    """The options a server.toml sets: unknown keys and wrong types are errors."""
    where = f"server config {path}"
    doc = read_toml(path, "server config")
    r = Reader(doc, where, allowed=frozenset(o.name for o in OPTIONS))
    base = path.parent
    return {
        option.name: Setting(
            _from_file(option, r, doc[option.name], base), f"{where}: {option.name}"
        )
        for option in OPTIONS
        if option.name in doc
    }


def _from_file(option: Option, r: Reader, raw: object, base: Path) -> object:
    name = option.name
    match option.kind:
        case OptionKind.TEXT:
            return r.text(name, max_len=255)
        case OptionKind.STORE:
            return _store_url(r.text(name), base)
        case OptionKind.PATH | OptionKind.TOKEN_FILE:
            return base / r.text(name)
        case OptionKind.INT:
            return r.integer(name, minimum=-_WIDE, maximum=_WIDE)
        case OptionKind.FLOAT:
            return r.number(name, minimum=-_WIDE, maximum=_WIDE)
        case OptionKind.PATHS:
            items = r.items(name, max_items=64)
            if not all(isinstance(item, str) for item in items):
                raise GpuwardError(f"{r.where}: {name!r} must be a list of file names")
            return tuple(base / item for item in items)
        case OptionKind.ADDRESSES:
            items = r.items(name, max_items=64)
            if not all(isinstance(item, str) for item in items):
                raise GpuwardError(f"{r.where}: {name!r} must be a list of IP addresses")
            return tuple(items)
        case OptionKind.POOL_PATHS:
            if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
                raise GpuwardError(
                    f'{r.where}: {name!r} must be a table of POOL = "FILE" ([{name}])'
                )
            return tuple((pool, base / file) for pool, file in raw.items())
        case OptionKind.WEBHOOKS:
            items = r.items(name, max_items=64)
            endpoints = tuple(
                _webhook(item, f"{r.where}: [[{name}]] {index + 1}", base)
                for index, item in enumerate(items)
            )
            keys = [e.endpoint.key for e in endpoints]
            if len(set(keys)) < len(keys):
                raise GpuwardError(
                    f"{r.where}: two [[{name}]] tables share a url (or name); "
                    "give each a name of its own"
                )
            return endpoints
        case OptionKind.REMEDIATION:
            return read_remediation(raw, f"{r.where}: [{name}]", base)
    raise AssertionError(option.kind)


def _webhook(table: object, where: str, base: Path) -> _Webhook:
    """One [[webhook]] table, its secret file read (relative to ``base``)."""
    if not isinstance(table, dict):
        raise GpuwardError(f"{where} must be a table ([[webhook]] with url = ... below it)")
    w = Reader(table, where, allowed=_WEBHOOK_KEYS)
    url = w.text("url", max_len=2048)
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise GpuwardError(f"{where}: url {url!r} must be an http:// or https:// URL")
    events = w.items("events", max_items=64, default=[])
    for event in events:
        problem = "must be a string" if not isinstance(event, str) else type_problem(event)
        if problem is not None:
            raise GpuwardError(f"{where}: events: {event!r} {problem}")
    options: dict[str, Any] = {}
    if "name" in table:
        options["name"] = w.text("name", max_len=64)
    if "timeout" in table:
        options["timeout_s"] = w.number("timeout", minimum=0.1, maximum=300)
    if "max_attempts" in table:
        options["max_attempts"] = w.integer("max_attempts", minimum=1, maximum=100)
    secret_file = base / w.text("secret_file")
    return _Webhook(WebhookEndpoint(url, (), tuple(events), **options), secret_file, where)


@dataclass(frozen=True)
class _Webhook:
    """A [[webhook]] table as read, before its secret file is (when the config loads)."""

    endpoint: WebhookEndpoint  # without its secrets yet
    secret_file: Path
    where: str


def _secrets(path: Path, where: str) -> tuple[bytes, ...]:
    """The shared secrets in ``path``: one a line, each signing every delivery."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise GpuwardError(f"{where}: cannot read secret_file {path}: {exc.strerror}") from None
    secrets = tuple(line.strip().encode() for line in lines if line.strip())
    if not secrets:
        raise GpuwardError(
            f"{where}: secret_file {path} holds no secret; write one (openssl rand -hex 32)"
        )
    if any(len(secret) < MIN_SECRET_LEN for secret in secrets):
        raise GpuwardError(
            f"{where}: a secret in {path} is shorter than {MIN_SECRET_LEN} characters, "
            "which a signature could reveal; use openssl rand -hex 32"
        )
    return secrets


def _from_flag(option: Option, raw: object) -> object:
    """A flag's value (a string, a number, or a list of strings for a repeatable one)."""
    if option.kind in (OptionKind.PATH, OptionKind.TOKEN_FILE):
        return Path(str(raw))
    if option.kind is OptionKind.PATHS:
        assert isinstance(raw, list)
        return tuple(Path(item) for item in raw)
    if option.kind is OptionKind.ADDRESSES:
        assert isinstance(raw, list)
        return tuple(str(item) for item in raw)
    if option.kind is OptionKind.POOL_PATHS:
        assert isinstance(raw, list)
        pairs = []
        for item in raw:
            pool, sep, path = str(item).partition("=")
            if not sep or not pool or not path:
                raise GpuwardError(f"{option.flag} {item!r}: write POOL=FILE")
            pairs.append((pool, Path(path)))
        return tuple(pairs)
    return raw


def _problem(option: Option, setting: Setting) -> str | None:
    """What is wrong with a setting, as the error says it; None if nothing."""
    value, where = setting.value, setting.where
    if option.bounds is not None:
        low, high = option.bounds
        assert isinstance(value, int | float)
        if not low <= value <= high:
            return f"{where} must be between {low} and {high}, not {value}"
    if option.kind is OptionKind.POOL_PATHS:
        assert isinstance(value, tuple)
        for pool, _path in value:
            if not POOL.fullmatch(pool):
                return f"{where}: {pool!r} is not a pool name (a-z, 0-9, '.', '_', '-')"
    problem = None if option.check is None else option.check(value)
    return None if problem is None else f"{where} {value}: {problem}"


def _finish(option: Option, setting: Setting) -> object:
    """The value as ServerConfig holds it: a token file's token, a number as a float."""
    value = setting.value
    if option.kind is OptionKind.TOKEN_FILE:
        assert isinstance(value, Path)
        try:
            return value.read_text().strip()
        except OSError as exc:
            raise GpuwardError(
                f"{setting.where}: cannot read token file {value}: {exc.strerror}"
            ) from None
    if option.kind is OptionKind.FLOAT:
        assert isinstance(value, int | float)
        return float(value)
    if option.kind is OptionKind.ADDRESSES:
        assert isinstance(value, tuple)
        return tuple(str(ipaddress.ip_address(item)) for item in value)
    if option.kind is OptionKind.WEBHOOKS:
        assert isinstance(value, tuple)
        return tuple(
            dataclasses.replace(w.endpoint, secrets=_secrets(w.secret_file, w.where)) for w in value
        )
    return value


def _store_url(url: str, base: Path) -> str:
    """A SQLite path (plain or sqlite://) relative to ``base``; other URLs as they are."""
    if url.startswith("sqlite://"):
        return "sqlite://" + str(base / url.removeprefix("sqlite://"))
    if "://" in url:
        return url
    return str(base / url)
