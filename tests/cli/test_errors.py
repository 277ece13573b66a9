"""Bad input on the command line: one clear line, a non-zero exit, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PASSPHRASE, Site
from tests.netutil import free_port


def gpuward(*args: str, passphrase: str | None = PASSPHRASE) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GPUWARD_KEY_PASSPHRASE"}
    if passphrase is not None:
        env["GPUWARD_KEY_PASSPHRASE"] = passphrase
    return subprocess.run(
        [sys.executable, "-m", "gpuward", *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("gpuward: error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_missing_payload(tmp_path: Path) -> None:
    result = gpuward(
        "bundle", "build", str(tmp_path / "nope"), "--driver-version", "580.95.05",
        "--branch", "R580", "--dkms", "-o", str(tmp_path / "b.bundle"),
    )  # fmt: skip
    assert_one_line_error(result, "not found")


def test_missing_bundle(site: Site) -> None:
    result = gpuward("repo", "add", str(site.base / "nope.bundle"), "--repo", str(site.repo.root))
    assert_one_line_error(result, "nope.bundle", "not found")


def test_missing_repository(tmp_path: Path, site: Site) -> None:
    bundle = site.bundle("580.95.05")
    result = gpuward("repo", "add", str(bundle), "--repo", str(tmp_path / "no-repo"))
    assert_one_line_error(result, "gpuward keys init")


def test_missing_agent_config(tmp_path: Path) -> None:
    result = gpuward("agent", "run", "--once", "--config", str(tmp_path / "agent.toml"))
    assert_one_line_error(result, "agent.toml", "not found")


def test_wrong_passphrase(site: Site) -> None:
    bundle = site.bundle("580.95.05")
    result = gpuward("repo", "add", str(bundle), "--repo", str(site.repo.root), passphrase="nope")
    assert_one_line_error(result, "wrong passphrase", "GPUWARD_KEY_PASSPHRASE")
    assert site.repo.published() == []


def test_no_passphrase_and_no_terminal(site: Site) -> None:
    bundle = site.bundle("580.95.05")
    result = gpuward("repo", "add", str(bundle), "--repo", str(site.repo.root), passphrase=None)
    assert_one_line_error(result, "GPUWARD_KEY_PASSPHRASE")


@pytest.mark.parametrize("branch", ["R999", "R58O", "580"])
def test_unknown_branch(tmp_path: Path, branch: str) -> None:
    (tmp_path / "p").write_bytes(b"x")
    result = gpuward(
        "bundle", "build", str(tmp_path / "p"), "--driver-version", "580.95.05",
        "--branch", branch, "--dkms", "-o", str(tmp_path / "b.bundle"),
    )  # fmt: skip
    assert_one_line_error(result, branch)
    assert not (tmp_path / "b.bundle").exists()


def test_unknown_branch_in_agent_config(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'node_id = "n1"\nserver_url = "http://127.0.0.1:1"\ntrusted_root = "root.json"\n'
        'branch = "R999"\n'
    )
    result = gpuward("agent", "run", "--once", "--config", str(config))
    assert_one_line_error(result, "unknown driver branch 'R999'")


def test_unreachable_server(site: Site, tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    config = site.agent_toml(tmp_path, server_url=f"http://127.0.0.1:{closed}")
    result = gpuward("agent", "run", "--once", "--config", str(config))
    assert_one_line_error(result, "unreachable", "server_url")


def test_server_on_a_missing_repository(tmp_path: Path) -> None:
    result = gpuward("server", "run", "--repo", str(tmp_path / "x"), "--db", str(tmp_path / "d"))
    assert_one_line_error(result, "gpuward keys init")


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--ek-ca", "/var/lib/swtpm-localca"], ("--tpm-enrollment-token-file",)),
        (["--pool-boot-policy", "prod"], ("--pool-boot-policy 'prod'", "POOL=FILE")),
        (["--boot-policy", "/nonexistent.json"], ("cannot read boot policy",)),
    ],
    ids=["tpm-without-token", "pool-policy-without-file", "missing-policy"],
)
def test_server_attestation_settings(
    site: Site, tmp_path: Path, flags: list[str], needles: tuple[str, ...]
) -> None:
    token = tmp_path / "token"
    token.write_text("t" * 20)
    if "--ek-ca" not in flags:
        flags = [
            *flags,
            "--ek-ca",
            "/var/lib/swtpm-localca",
            "--tpm-enrollment-token-file",
            str(token),
        ]
    db = str(tmp_path / "d")
    result = gpuward("server", "run", "--repo", str(site.repo.root), "--db", db, *flags)
    assert_one_line_error(result, *needles)


def test_server_config_file_with_an_unknown_key(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text('repo = "repo"\ndb = "server.db"\nprot = 8470\n')
    result = gpuward("server", "run", "--config", str(config))
    assert_one_line_error(result, str(config), "unknown field(s) prot")


@pytest.mark.parametrize(
    ("pcr", "needle"), [("14", "shim"), ("3", "firmware"), ("24", "does not exist")]
)
def test_server_refuses_a_driver_pcr_the_boot_uses(
    site: Site, tmp_path: Path, pcr: str, needle: str
) -> None:
    db = str(tmp_path / "d")
    result = gpuward(
        "server", "run", "--repo", str(site.repo.root), "--db", db, "--driver-pcr", pcr
    )
    assert_one_line_error(result, f"--driver-pcr {pcr}", needle, "use 15")


def test_server_takes_the_driver_pcr_from_the_command_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What the flag becomes: the runner itself is tested with a ServerConfig."""
    from gpuward.cli import main
    from server import lifecycle
    from server.config import ServerConfig

    started: list[ServerConfig] = []
    monkeypatch.setattr(lifecycle, "run_server", started.append)
    command = ["server", "run", "--repo", str(tmp_path), "--db", str(tmp_path / "d")]
    assert main([*command, "--driver-pcr", "16"]) == 0
    assert main(command) == 0
    assert [c.driver_pcr for c in started] == [16, 15]


def test_keys_init_refuses_an_existing_repository(site: Site) -> None:
    result = gpuward("keys", "init", str(site.repo.root), "--single-custodian")
    assert_one_line_error(result, "already")


def test_happy_path_through_the_cli(site: Site, tmp_path: Path) -> None:
    """The same commands a person types, end to end, against the real server."""
    bundle = site.bundle("580.95.05")
    added = gpuward("repo", "add", str(bundle), "--repo", str(site.repo.root), "--json")
    assert added.returncode == 0, added.stderr
    config = site.agent_toml(tmp_path)
    enrolled = gpuward("agent", "enroll", "--config", str(config), "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    assert json.loads(enrolled.stdout)["attestation"] == "unattested"
    key = tmp_path / "host/var/lib/gpuward/node.key"
    assert key.stat().st_mode & 0o777 == 0o600
    result = gpuward("agent", "run", "--once", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["update"] == "committed"
    assert json.loads(result.stdout)["report_sent"] is True
    assert site.fleet()["n1"]["report"]["update"] == "committed"


def test_agent_enroll_with_a_wrong_token(site: Site, tmp_path: Path) -> None:
    token = tmp_path / "wrong-token"
    token.write_text("not the enrollment token")
    config = site.agent_toml(tmp_path)
    config.write_text(config.read_text().replace(str(site.enrollment_token_file), str(token)))
    result = gpuward("agent", "enroll", "--config", str(config))
    assert_one_line_error(result, "enrollment refused", "wrong enrollment token")


def test_agent_health_reports_the_active_driver(site: Site, tmp_path: Path) -> None:
    config = site.agent_toml(tmp_path)
    before = gpuward("agent", "health", "--config", str(config), "--json")
    assert before.returncode == 3  # nothing installed yet
    site.publish("580.95.05")
    assert gpuward("agent", "run", "--once", "--config", str(config)).returncode == 0
    after = gpuward("agent", "health", "--config", str(config), "--json")
    assert after.returncode == 0, after.stdout
    assert '"driver_version": "580.95.05"' in after.stdout
