"""The agent's configuration file (TOML) and the paths derived from it.

Everything the agent may contact is named here: the server URL is the only
outbound destination. ``root_dir`` exists so tests and the demo run whole
agents inside a temporary directory instead of the host's /var/lib.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fleet.branches import require_branch
from fleet.errors import GpuwardError
from fleet.inventory import NODE_ID
from fleet.maintenance import MAX_WINDOWS, InvalidWindow, Window, parse_windows
from fleet.rollout import POOL
from fleet.schema import Reader
from fleet.topology import Topology
from keys.durable_files import read_toml
from node.attest.config import AttestConfig
from node.firewall.policy import Endpoint, FirewallPolicy

HEALTH_BACKENDS = frozenset({"nvml", "simulated"})
# "applier": the agent only stages verified bundles in the spool and the root
# applier (gpuward-apply.service) installs them; "inline": the agent's process
# runs that same applier after spooling, for the demo and whole simulated hosts
# in a temp folder.
APPLIER_MODES = frozenset({"applier", "inline"})
_VERSION = re.compile(r"\d{3,4}\.\d{1,3}(?:\.\d{1,3})?")
_CUDA = re.compile(r"\d{1,2}\.\d{1,2}")


@dataclass(frozen=True)
class SimulatedGpus:
    """A stand-in for GPUs on hosts without any: the driver 'loads' from the active slot."""

    count: int = 8
    name: str = "NVIDIA H100 80GB HBM3"
    unhealthy_drivers: frozenset[str] = frozenset()
    compute_processes: int = 0  # what the drain sees running on the GPUs


@dataclass(frozen=True)
class ApplierSettings:
    """The privileged applier's limits and the operator's hook commands (argv lists)."""

    mode: str = "applier"
    max_boots: int = 3  # starts in "verifying" without a commit before rolling back
    drain_max_wait_s: int = 3600  # then the update is deferred
    drain_poll_s: int = 10
    hook_timeout_s: int = 300
    pre_drain: tuple[str, ...] = ()  # e.g. kubectl cordon NODE
    post_commit: tuple[str, ...] = ()  # e.g. kubectl uncordon NODE
    # The health gate after the switch: how long to watch for XIDs, and an
    # operator's test of the new driver (e.g. a CUDA sample) that must exit 0.
    xid_window_s: int = 30
    smoke_test: tuple[str, ...] = ()
    smoke_test_timeout_s: int = 600
    # UTC windows in which the update goes ahead even while GPUs compute
    # (fleet.maintenance), e.g. ("Sat 02:00-06:00", "daily 03:00-04:00").
    maintenance_windows: tuple[Window, ...] = ()


@dataclass(frozen=True)
class DirectorSettings:
    """Where the director repository is, and the root it is trusted from."""

    trusted_root: Path
    url: str | None = None  # default: <server_url>/v1/director/<node_id>


@dataclass(frozen=True)
class AgentConfig:
    node_id: str
    server_url: str
    trusted_root: Path
    branch: str
    root_dir: Path = Path("/")
    interval_s: float = 300.0
    health_backend: str = "nvml"
    simulated: SimulatedGpus = SimulatedGpus()
    director: DirectorSettings | None = None
    mirrors: tuple[str, ...] = ()  # tried in order when server_url fails; untrusted
    # The CA certificates (PEM) the server's and mirrors' HTTPS certificates must
    # chain to; None: the system's. Every connection the agent makes checks it.
    server_ca: Path | None = None
    fetch_timeout_s: int = 30
    # What the compatibility gate needs to know that the node cannot see itself.
    required_cuda: str | None = None  # the CUDA version the node's workloads need
    nvswitch: bool = False
    # The provenance policy: install only bundles whose in-toto provenance, published
    # beside them, is signed by the build key pinned here (the build keys folder's
    # build.pub.json) and names the bundle's digest (keys.provenance).
    require_provenance: bool = False
    build_key: Path | None = None
    kernel: str | None = None  # only to simulate another kernel; default: the running one
    firewall: FirewallPolicy | None = None  # the outbound allowlist, when enabled
    pool: str = "default"  # the rollout pool the node enrolls into
    # A file holding the operator's enrollment token: in the no-TPM mode it
    # vouches for the node; with a TPM it only admits the enrollment to begin.
    enrollment_token_file: Path | None = None
    # The [attestation] table: enroll with the TPM (and the enrollment token).
    attestation: AttestConfig | None = None
    applier: ApplierSettings = ApplierSettings()
    # The [metrics] table: a node_exporter textfile the agent rewrites after every
    # cycle (agent.textfile); None: no metrics (no port ever opens on the node).
    metrics_textfile: Path | None = None
    # The [topology] table: where the node sits (rack, row, pdu, nvlink_domain),
    # sent with every report so the server can tell a rack's fault from a driver's.
    topology: Topology | None = None
    # The transparency log's verifier key (the server's keys/tlog.vkey, pinned):
    # every bundle must then be proved in the log under a checkpoint consistent
    # with the last one this node accepted (agent.logproof). None: not required.
    log_key: Path | None = None

    @property
    def state_dir(self) -> Path:
        return self.root_dir / "var/lib/gpuward"

    @property
    def metadata_dir(self) -> Path:
        return self.state_dir / "tuf/image"

    @property
    def director_metadata_dir(self) -> Path:
        return self.state_dir / "tuf/director"

    @property
    def download_dir(self) -> Path:
        return self.state_dir / "downloads"

    @property
    def slots_dir(self) -> Path:
        """The A/B slots: root's, so the agent can never write the driver that runs."""
        return self.applier_dir / "slots"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def spool_dir(self) -> Path:
        """Where the agent leaves a verified bundle for the privileged applier."""
        return self.state_dir / "spool"

    @property
    def applier_dir(self) -> Path:
        """The applier's journal, slots, measurement log and work files.

        Not under ``state_dir``: the agent owns that folder, so it could rename a
        root-owned entry away and put its own in its place (and systemd chowns a
        StateDirectory= recursively to the agent's user).
        """
        return self.root_dir / "var/lib/gpuward-applier"

    @property
    def journal_file(self) -> Path:
        return self.applier_dir / "journal.json"

    @property
    def measurement_log(self) -> Path:
        """The applier's log of driver measurements since boot (``applier.measure``)."""
        return self.applier_dir / "measurements.jsonl"

    @property
    def measurement_key(self) -> Path:
        """The applier's signing key for its measurements (``keys.driver_key``): root's alone."""
        return self.applier_dir / "measurement.key"

    @property
    def driver_params_file(self) -> Path:
        """What the loaded nvidia.ko's parameters are (``fleet.driver_settings``)."""
        return self.root_dir / "proc/driver/nvidia/params"

    @property
    def key_file(self) -> Path:
        return self.state_dir / "node.key"

    @property
    def report_challenge_file(self) -> Path:
        """The challenge the server answered the last report with, for the next one."""
        return self.state_dir / "report-challenge.json"

    @property
    def metadata_url(self) -> str:
        return f"{self.server_url}/v1/repo/metadata/"

    @property
    def targets_url(self) -> str:
        return f"{self.server_url}/v1/repo/targets/"

    @property
    def director_url(self) -> str:
        explicit = self.director.url if self.director else None
        return (explicit or f"{self.server_url}/v1/director/{self.node_id}").rstrip("/")

    @property
    def reports_url(self) -> str:
        return f"{self.server_url}/v1/reports"

    @property
    def enroll_url(self) -> str:
        return f"{self.server_url}/v1/enroll"

    @property
    def challenge_url(self) -> str:
        return f"{self.server_url}/v1/challenge"

    @property
    def tpm_enroll_url(self) -> str:
        return f"{self.server_url}/v1/enroll/tpm/begin"

    @classmethod
    def from_dict(cls, doc: dict[str, Any], base: Path) -> AgentConfig:
        """Build from parsed TOML; relative paths are relative to the file's folder."""
        r = Reader(
            doc,
            "agent config",
            allowed=frozenset(
                {
                    "node_id",
                    "server_url",
                    "trusted_root",
                    "branch",
                    "root_dir",
                    "interval_s",
                    "health_backend",
                    "simulated",
                    "director",
                    "mirrors",
                    "server_ca",
                    "fetch_timeout_s",
                    "required_cuda",
                    "nvswitch",
                    "require_provenance",
                    "build_key",
                    "kernel",
                    "firewall",
                    "pool",
                    "enrollment_token_file",
                    "attestation",
                    "applier",
                    "metrics",
                    "topology",
                    "log_key",
                }
            ),
        )
        server_url = _url(r.text("server_url", max_len=2048), "server_url")
        branch = r.text("branch", max_len=8)
        require_branch(branch)
        mirrors = tuple(_url(m, "mirrors") for m in r.items("mirrors", max_items=16, default=[]))
        firewall = None
        if "firewall" in doc:
            # The agent's own destinations are always allowed, whatever the table says.
            firewall = FirewallPolicy.from_dict(doc["firewall"])
            for url in (*mirrors, server_url):
                firewall = firewall.with_endpoint(Endpoint.from_url(url))
        token_file = r.optional_text("enrollment_token_file")
        server_ca = r.optional_text("server_ca")
        require_provenance = r.boolean("require_provenance", default=False)
        build_key = r.optional_text("build_key")
        if require_provenance and build_key is None:
            raise GpuwardError(
                "agent config: require_provenance needs build_key, the path of the build key's "
                "public description (build.pub.json from the operator's build keys folder)"
            )
        log_key = r.optional_text("log_key")
        return cls(
            node_id=r.text("node_id", pattern=NODE_ID, max_len=128),
            server_url=server_url,
            trusted_root=base / r.text("trusted_root"),
            branch=branch,
            root_dir=base / r.text("root_dir", default="/"),
            interval_s=float(r.integer("interval_s", minimum=1, maximum=86_400, default=300)),
            health_backend=r.text("health_backend", choices=HEALTH_BACKENDS, default="nvml"),
            simulated=_simulated(doc.get("simulated", {})),
            director=_director(doc["director"], base) if "director" in doc else None,
            mirrors=mirrors,
            server_ca=None if server_ca is None else base / server_ca,
            fetch_timeout_s=r.integer("fetch_timeout_s", minimum=1, maximum=600, default=30),
            required_cuda=r.optional_text("required_cuda", max_len=12, pattern=_CUDA),
            nvswitch=r.boolean("nvswitch", default=False),
            require_provenance=require_provenance,
            build_key=None if build_key is None else base / build_key,
            kernel=r.optional_text("kernel", max_len=128),
            firewall=firewall,
            pool=r.text("pool", pattern=POOL, default="default"),
            enrollment_token_file=None if token_file is None else base / token_file,
            attestation=(
                AttestConfig.from_dict(doc["attestation"], base) if "attestation" in doc else None
            ),
            applier=_applier(doc.get("applier", {})),
            metrics_textfile=_textfile(doc["metrics"], base) if "metrics" in doc else None,
            topology=(
                Topology.from_dict(doc["topology"], "agent config [topology]")
                if "topology" in doc
                else None
            ),
            log_key=None if log_key is None else base / log_key,
        )


def _simulated(doc: object) -> SimulatedGpus:
    r = Reader(
        doc,
        "agent config [simulated]",
        allowed=frozenset({"count", "name", "unhealthy_drivers", "compute_processes"}),
    )
    default = SimulatedGpus()
    unhealthy = r.items("unhealthy_drivers", max_items=64, default=[])
    for version in unhealthy:
        if not isinstance(version, str) or not _VERSION.fullmatch(version):
            raise GpuwardError(f"agent config [simulated]: bad driver version {version!r}")
    return SimulatedGpus(
        count=r.integer("count", minimum=1, maximum=64, default=default.count),
        name=r.text("name", max_len=128, default=default.name),
        unhealthy_drivers=frozenset(unhealthy),
        compute_processes=r.integer("compute_processes", maximum=100_000, default=0),
    )


def _applier(doc: object) -> ApplierSettings:
    r = Reader(
        doc,
        "agent config [applier]",
        allowed=frozenset(
            {
                "mode",
                "max_boots",
                "drain_max_wait_s",
                "drain_poll_s",
                "hook_timeout_s",
                "pre_drain",
                "post_commit",
                "xid_window_s",
                "smoke_test",
                "smoke_test_timeout_s",
                "maintenance_windows",
            }
        ),
    )
    default = ApplierSettings()
    hooks = {}
    for name in ("pre_drain", "post_commit", "smoke_test"):
        argv = r.items(name, max_items=64, default=[])
        if not all(isinstance(arg, str) for arg in argv):
            raise GpuwardError(f"agent config [applier] {name}: give an argv list of strings")
        hooks[name] = tuple(argv)
    try:
        windows = parse_windows(r.items("maintenance_windows", max_items=MAX_WINDOWS, default=[]))
    except InvalidWindow as exc:
        raise GpuwardError(f"agent config [applier] {exc}") from None
    return ApplierSettings(
        mode=r.text("mode", choices=APPLIER_MODES, default=default.mode),
        max_boots=r.integer("max_boots", minimum=1, maximum=100, default=default.max_boots),
        drain_max_wait_s=r.integer(
            "drain_max_wait_s", maximum=7 * 86_400, default=default.drain_max_wait_s
        ),
        drain_poll_s=r.integer(
            "drain_poll_s", minimum=1, maximum=3600, default=default.drain_poll_s
        ),
        hook_timeout_s=r.integer(
            "hook_timeout_s", minimum=1, maximum=3600, default=default.hook_timeout_s
        ),
        pre_drain=hooks["pre_drain"],
        post_commit=hooks["post_commit"],
        xid_window_s=r.integer("xid_window_s", maximum=3600, default=default.xid_window_s),
        smoke_test=hooks["smoke_test"],
        smoke_test_timeout_s=r.integer(
            "smoke_test_timeout_s", minimum=1, maximum=86_400, default=default.smoke_test_timeout_s
        ),
        maintenance_windows=windows,
    )


def _textfile(doc: object, base: Path) -> Path:
    r = Reader(doc, "agent config [metrics]", allowed=frozenset({"textfile"}))
    path = base / r.text("textfile", max_len=4096)
    if not path.name.endswith(".prom"):
        raise GpuwardError(
            f"agent config [metrics] textfile {path}: node_exporter reads only files "
            "named *.prom; name it e.g. gpuward.prom"
        )
    return path


def _url(value: object, field: str) -> str:
    try:
        # urlparse raises on a bracketed host that is no address ("[fe80::1%25a%0A]").
        if isinstance(value, str) and urlparse(value).scheme in ("http", "https"):
            return value.rstrip("/")
    except ValueError as exc:
        raise GpuwardError(f"agent config: {field} is not a URL ({exc})") from None
    raise GpuwardError(f"agent config: {field} must be an http(s) URL, not {value!r}")


def _director(doc: object, base: Path) -> DirectorSettings:
    r = Reader(doc, "agent config [director]", allowed=frozenset({"trusted_root", "url"}))
    url = r.optional_text("url", max_len=2048)
    return DirectorSettings(
        trusted_root=base / r.text("trusted_root"),
        url=None if url is None else _url(url, "[director] url"),
    )


def load_config(path: Path) -> AgentConfig:
    doc = read_toml(path, "agent config")
    return AgentConfig.from_dict(doc, base=path.parent)
