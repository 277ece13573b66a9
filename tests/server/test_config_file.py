"""server.toml: every ``server run`` option, checked as strictly as its flag.

The reader is the production path (``gpuward server run --config`` calls
``server.config_file.load``); what the server does with the result is tested
with ServerConfig values elsewhere, and the whole command in tests/cli.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.errors import GpuwardError
from fleet.remediation import Action, RemediationPolicy
from server.config import RemediationConfig, ServerConfig, WebhookEndpoint
from server.config_file import OPTIONS, load

TOKEN = "t" * 20
HOOK_SECRET = "s" * 32
HOOK = (
    '[[webhook]]\nurl = "https://hooks.example/gpuward"\nsecret_file = "hook-secret"\n'
    'events = ["rollout.*", "node.missing"]\nname = "pager"\ntimeout = 5\nmax_attempts = 3\n'
)

REMEDIATION = """[remediation]
scheduler = "slurm"
scontrol = ["/usr/bin/sudo", "-n", "/usr/bin/scontrol"]
slurm_conf = "slurm.conf"
tick = 30
timeout = 20
[remediation.hooks]
reboot = ["/usr/local/sbin/reboot-node", "--now"]
[remediation.pools.prod]
on_failed = "drain"
on_degraded = "notify"
on_missing = "none"
budget = 2
failure_domain = "row"
hold_down = 1200
approval = true
[remediation.pools.prod.xid]
79 = "reboot"
[remediation.pools.lab]
failure_domain = "none"
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text(f"{TOKEN}\n")
    (tmp_path / "hook-secret").write_text(f"{HOOK_SECRET}\n")
    return tmp_path


def write(folder: Path, text: str) -> Path:
    path = folder / "server.toml"
    path.write_text(text)
    return path


def test_every_option_from_the_file_relative_to_its_folder(folder: Path) -> None:
    config = load(
        {},
        write(
            folder,
            'repo = "repo"\ndirector = "/srv/director"\ndb = "server.db"\n'
            'host = "0.0.0.0"\nport = 9000\nreport_interval = 60\nmissing_after = 5\n'
            'tls_cert = "tls/server.pem"\ntls_key = "/etc/gpuward/tls/server.key"\n'
            'unattested_enrollment_token_file = "token"\nek_ca = ["cas/a.pem", "/etc/b"]\n'
            'tpm_enrollment_token_file = "token"\npreauth_rate = 3\npreauth_burst = 7\n'
            "header_timeout = 2.5\nmax_connections_per_address = 9\n"
            'boot_policy = "boot.json"\nrollout_tick = 5\ndriver_pcr = 16\n'
            'report_key = "keys/report.key"\nworkers = 2\n'
            'report_key_uri = "hsm:2?label=gpuward"\nreport_key_pin_file = "hsm.pin"\n'
            'report_key_module = "/usr/lib/softhsm/libsofthsm2.so"\n'
            'trusted_proxies = ["127.0.0.1", "::1"]\nek_type = "EK-ECC256"\n'
            "report_retention_count = 2000\nreport_retention_days = 7\n"
            'report_schedule = "daily"\nreports_kept = 14\n'
            'metrics_listen = "[::1]:9464"\n'
            'gpu_rims = "rims"\ngpu_device_root = "/etc/gpuward/device-root.pem"\n'
            'gpu_rim_root = "rim-root.pem"\ngpu_revocation = "waived"\n'
            '[pool_boot_policy]\ncanary = "canary.json"\n' + HOOK + REMEDIATION,
        ),
    )
    assert config == ServerConfig(
        repo=folder / "repo",
        director=Path("/srv/director"),
        db=str(folder / "server.db"),
        host="0.0.0.0",
        port=9000,
        tls_cert=folder / "tls/server.pem",
        tls_key=Path("/etc/gpuward/tls/server.key"),
        report_interval_s=60,
        missing_after=5,
        unattested_enrollment_token=TOKEN,
        ek_ca=(folder / "cas/a.pem", Path("/etc/b")),
        tpm_enrollment_token=TOKEN,
        preauth_rate_per_s=3.0,
        preauth_burst=7,
        header_timeout_s=2.5,
        max_connections_per_address=9,
        boot_policy=folder / "boot.json",
        pool_boot_policies=(("canary", folder / "canary.json"),),
        rollout_tick_s=5.0,
        driver_pcr=16,
        report_key=folder / "keys/report.key",
        report_key_uri="hsm:2?label=gpuward",
        report_key_module=Path("/usr/lib/softhsm/libsofthsm2.so"),
        report_key_pin_file=folder / "hsm.pin",
        workers=2,
        trusted_proxies=("127.0.0.1", "::1"),
        ek_type="EK-ECC256",
        report_retention_count=2000,
        report_retention_days=7,
        report_schedule="daily",
        reports_kept=14,
        webhooks=(
            WebhookEndpoint(
                "https://hooks.example/gpuward",
                (HOOK_SECRET.encode(),),
                ("rollout.*", "node.missing"),
                "pager",
                5.0,
                3,
            ),
        ),
        metrics_listen="[::1]:9464",
        gpu_rims=folder / "rims",
        gpu_device_root=Path("/etc/gpuward/device-root.pem"),
        gpu_rim_root=folder / "rim-root.pem",
        gpu_revocation="waived",
        remediation=RemediationConfig(
            scheduler="slurm",
            scontrol=("/usr/bin/sudo", "-n", "/usr/bin/scontrol"),
            slurm_conf=folder / "slurm.conf",
            hooks={"reboot": ("/usr/local/sbin/reboot-node", "--now")},
            timeout_s=20.0,
            tick_s=30.0,
            pools={
                "prod": RemediationPolicy(
                    on_failed=Action.DRAIN,
                    on_degraded=Action.NOTIFY,
                    on_missing=Action.NONE,
                    xid_actions={79: Action.REBOOT},
                    budget=2,
                    failure_domain="row",
                    hold_down_s=1200,
                    approval=True,
                ),
                "lab": RemediationPolicy(failure_domain=None),
            },
        ),
    )
    assert config.metrics_address == ("::1", 9464)
    # This test sets every option: a new one must be added here.
    keys = {line.split(" =")[0] for line in (folder / "server.toml").read_text().splitlines()}
    tables = {line.split(" =")[0] for line in (HOOK + REMEDIATION).splitlines()}
    keys = keys - {"[pool_boot_policy]", "canary"} - tables
    keys |= {"pool_boot_policy", "webhook", "remediation"}
    assert keys == {o.name for o in OPTIONS}


@pytest.mark.parametrize("uri", ["report.key", "hsm:?label=gpuward", "hsm:2", "awskms:key"])
def test_a_report_key_uri_names_a_token_key(folder: Path, uri: str) -> None:
    with pytest.raises(GpuwardError, match="not a token key's URI"):
        load({}, write(folder, f'repo = "r"\ndb = "d"\nreport_key_uri = "{uri}"\n'))


def test_defaults_are_the_server_configs(folder: Path) -> None:
    config = load({}, write(folder, 'repo = "/r"\ndb = "/d.db"\n'))
    assert config == ServerConfig(repo=Path("/r"), db="/d.db")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite://s.db", "sqlite://{folder}/s.db"),
        ("sqlite:///var/s.db", "sqlite:///var/s.db"),
        ("postgresql://gpuward@db/fleet", "postgresql://gpuward@db/fleet"),
    ],
)
def test_store_urls(folder: Path, url: str, expected: str) -> None:
    config = load({}, write(folder, f'repo = "r"\ndb = "{url}"\n'))
    assert config.db == expected.format(folder=folder)


def test_flags_given_override_the_file_whole(folder: Path) -> None:
    path = write(
        folder,
        'repo = "r"\ndb = "d"\nport = 9000\nek_ca = ["a", "b"]\n'
        '[pool_boot_policy]\ncanary = "c.json"\nprod = "p.json"\n',
    )
    flags: dict[str, object] = {o.name: None for o in OPTIONS}  # as argparse leaves them
    flags |= {"port": 0, "ek_ca": ["/x.pem"], "pool_boot_policy": ["prod=/q.json"]}
    config = load(flags, path)
    assert config.port == 0 and config.repo == folder / "r"
    assert config.ek_ca == (Path("/x.pem"),)
    assert config.pool_boot_policies == (("prod", Path("/q.json")),)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ('repo = "r"\ndb = "d"\nprot = 1\n', ("unknown field(s) prot",)),
        ('repo = "r"\ndb = "d"\nport = "8470"\n', ("'port' must be an integer",)),
        ('repo = "r"\ndb = "d"\nport = true\n', ("'port' must be an integer",)),
        ('repo = "r"\ndb = "d"\nek_ca = "a.pem"\n', ("'ek_ca' must be a list",)),
        ('repo = "r"\ndb = "d"\nek_ca = [1]\n', ("'ek_ca' must be a list of file names",)),
        ('repo = "r"\ndb = "d"\npool_boot_policy = "x"\n', ("POOL = \"FILE\"",)),
        ('repo = "r"\ndb = "d"\n[pool_boot_policy]\nProd = "p"\n', ("'Prod' is not a pool",)),
        ('repo = "r"\ndb = "d"\npreauth_rate = "fast"\n', ("'preauth_rate' must be a number",)),
        ('repo = "r"\ndb = "d"\nworkers = 0\n', ("workers must be between 1 and 64, not 0",)),
        ('repo = "r"\ndb = "d"\ndriver_pcr = 14\n', ("driver_pcr 14: PCR 14", "use 15")),
        ('db = "d"\n', ("--repo is required", "repo in")),
        ('repo = "r"\ndb = "d"\nunattested_enrollment_token_file = "nope"\n', ("nope",)),
        ("repo = \n", ("not valid TOML",)),
        (
            'repo = "r"\ndb = "d"\nek_type = "EK-HIGH-ECC384"\n',
            ("ek_type EK-HIGH-ECC384: must be one of EK-RSA2048, EK-ECC256",),
        ),
        (
            'repo = "r"\ndb = "d"\nreport_retention_count = 0\n',
            ("report_retention_count must be between 1 and",),
        ),
        ('repo = "r"\ndb = "d"\nmetrics_listen = "9464"\n', ("write HOST:PORT",)),
        (
            'repo = "r"\ndb = "d"\ngpu_revocation = "ignored"\n',
            ("gpu_revocation ignored: must be unchecked or waived",),
        ),
        (
            'repo = "r"\ndb = "d"\nreport_schedule = "hourly"\n',
            ("report_schedule hourly: must be one of off, daily, weekly",),
        ),
        ('repo = "r"\ndb = "d"\nreports_kept = 0\n', ("reports_kept must be between 1 and",)),
    ],
    ids=[
        "unknown-key", "string-for-integer", "bool-for-integer", "string-for-list",
        "list-of-numbers", "string-for-table", "bad-pool", "string-for-number", "bounds",
        "driver-pcr", "required", "missing-token-file", "not-toml", "ek-type",
        "retention-bounds", "metrics-listen", "gpu-revocation", "report-schedule",
        "reports-kept",
    ],
)  # fmt: skip
def test_bad_files_are_refused_naming_the_key(
    folder: Path, text: str, needles: tuple[str, ...]
) -> None:
    path = write(folder, text)
    with pytest.raises(GpuwardError) as refused:
        load({}, path)
    message = str(refused.value)
    assert str(path) in message or "--repo" in message
    for needle in needles:
        assert needle in message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(GpuwardError, match=r"server config .*server.toml not found"):
        load({}, tmp_path / "server.toml")


def test_flags_are_checked_as_the_file_is() -> None:
    flags: dict[str, object] = {"repo": "/r", "db": "/d", "workers": 65}
    with pytest.raises(GpuwardError, match="--workers must be between 1 and 64, not 65"):
        load(flags)
    with pytest.raises(GpuwardError, match=r"--repo is required \(or give --config FILE\)"):
        load({"db": "/d"})


def test_trusted_proxies_are_addresses_not_names(folder: Path) -> None:
    flags: dict[str, object] = {"repo": "/r", "db": "/d", "trusted_proxies": ["proxy.example"]}
    with pytest.raises(GpuwardError, match=r"'proxy\.example' is not an IP address"):
        load(flags)
    path = write(folder, 'repo = "r"\ndb = "d"\ntrusted_proxies = ["10.0.0.1", "10.0.0.x"]\n')
    with pytest.raises(GpuwardError, match=r"trusted_proxies.*'10.0.0.x' is not an IP address"):
        load({}, path)
    assert load({**flags, "trusted_proxies": ["10.0.0.1"]}).trusted_proxies == ("10.0.0.1",)


def test_webhooks_are_tables_each_with_its_secrets(folder: Path) -> None:
    (folder / "rotating").write_text(f"{'n' * 32}\n\n{'o' * 32}\n")
    config = load(
        {},
        write(
            folder,
            'repo = "r"\ndb = "d"\n[[webhook]]\nurl = "http://127.0.0.1:9/a"\n'
            'secret_file = "rotating"\n[[webhook]]\nurl = "http://127.0.0.1:9/b"\n'
            'secret_file = "hook-secret"\n',
        ),
    )
    first, second = config.webhooks
    assert first.secrets == (b"n" * 32, b"o" * 32) and first.events == ()
    assert (first.key, second.key) == ("http://127.0.0.1:9/a", "http://127.0.0.1:9/b")
    assert (second.timeout_s, second.max_attempts) == (10.0, 16)  # the defaults
    assert HOOK_SECRET not in repr(config)  # secrets are never shown


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ('url = "ftp://x/y"\nsecret_file = "hook-secret"\n', "must be an http:// or https://"),
        ('url = "https://x/y"\n', "missing field 'secret_file'"),
        ('url = "https://x/y"\nsecret_file = "nope"\n', "cannot read secret_file"),
        ('url = "https://x/y"\nsecret_file = "short"\n', "shorter than 16 characters"),
        ('url = "https://x/y"\nsecret_file = "empty"\n', "holds no secret"),
        (
            'url = "https://x/y"\nsecret_file = "hook-secret"\nevents = ["rollout.stuck"]\n',
            "'rollout.stuck' names no event",
        ),
        ('url = "https://x/y"\nsecret_file = "hook-secret"\nretries = 3\n', "retries"),
        (
            'url = "https://x/y"\nsecret_file = "hook-secret"\n'
            '[[webhook]]\nurl = "https://x/y"\nsecret_file = "hook-secret"\n',
            "share a url",
        ),
    ],
    ids=["scheme", "no-secret", "missing-secret", "short-secret", "empty-secret", "event",
         "unknown-key", "twice"],
)  # fmt: skip
def test_bad_webhooks_are_refused_naming_the_table(folder: Path, table: str, needle: str) -> None:
    (folder / "short").write_text("abc\n")
    (folder / "empty").write_text("\n")
    path = write(folder, f'repo = "r"\ndb = "d"\n[[webhook]]\n{table}')
    with pytest.raises(GpuwardError) as refused:
        load({}, path)
    assert f"{path}: [[webhook]] 1" in str(refused.value) or "share a url" in str(refused.value)
    assert needle in str(refused.value)
