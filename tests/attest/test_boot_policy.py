"""The server judges every TPM node's measured boot against its pool's policy.

The policy is written by ``gpuward policy from-eventlog`` from a known-good log
(RHEL 9.5 with Secure Boot). Two swtpm nodes then boot a changed kernel: its
digest in their event log (replayed into their PCRs, so log and quote agree)
differs from the reference. The node judged by the default policy fails, with
the reason naming the kernel's digest, shown by the API and on the dashboard's
node page; the node in the canary pool, whose policy an operator extended with
the new kernel, passes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import urllib3

from agent.identity import enroll
from agent.reporter import post_report
from fleet.errors import GpuwardError
from fleet.eventlog import EV_EFI_BOOT_SERVICES_APPLICATION, parse
from gpuward.cli import main
from node.config import load_config
from server.config import ServerConfig
from server.lifecycle import BackgroundServer
from tests.attest.conftest import LOCAL_CA, LOG_DIR, Tpm, extend_log
from tests.attest.test_end_to_end import make_report
from tests.conftest import Site, make_site
from tests.simnode import dashboard_sign_in

LOG = LOG_DIR / "rhel95-secureboot.bin"
NEW_KERNEL = hashlib.sha256(b"vmlinuz-5.14.0-503.99.1.el9_5.x86_64").digest()


def _new_kernel_log(folder: Path) -> tuple[Path, int]:
    """LOG with the kernel (the last boot application) measured as NEW_KERNEL."""
    data = bytearray(LOG.read_bytes())
    kernel = [e for e in parse(data).events if e.event_type == EV_EFI_BOOT_SERVICES_APPLICATION][-1]
    at = data.index(kernel.digests["sha256"], kernel.offset)
    data[at : at + 32] = NEW_KERNEL
    path = folder / "new-kernel.bin"
    path.write_bytes(data)
    return path, kernel.index


def _policies(folder: Path) -> tuple[Path, Path]:
    """The reference policy, and the canary pool's: it also allows the new kernel."""
    reference = folder / "policy.json"
    assert main(["policy", "from-eventlog", str(LOG), "-o", str(reference)]) == 0
    doc = json.loads(reference.read_text())
    doc["boot_applications"].append(NEW_KERNEL.hex())
    canary = folder / "canary-policy.json"
    canary.write_text(json.dumps(doc))
    return reference, canary


def _agent(site: Site, tpm: Tpm, folder: Path, node_id: str, pool: str, log: Path) -> None:
    """Enroll a node booted as ``log`` records, and send one attested report."""
    extend_log(tpm, log)
    folder.mkdir()
    path = site.agent_toml(folder)
    text = path.read_text().replace('node_id = "n1"', f'node_id = "{node_id}"')
    text = text.replace("\n", f'\npool = "{pool}"\n', 1)
    path.write_text(f'{text}\n[attestation]\ntcti = "{tpm.tcti}"\nevent_log = "{log}"\n')
    config = load_config(path)
    assert enroll(config)["attestation"] == "tpm2"
    post_report(config, make_report(node_id))


def _node_page(site: Site, node_id: str) -> str:
    viewer = site.server.issue_token("viewer")
    http = urllib3.PoolManager(retries=urllib3.Retry(total=0, redirect=0, raise_on_redirect=False))
    cookie = dashboard_sign_in(site.url, viewer)
    page = http.request("GET", f"{site.url}/nodes/{node_id}", headers={"Cookie": cookie})
    return str(page.data.decode())


def test_boot_judged_by_the_pool_policy(
    _template_repo: Path, tmp_path: Path, start_tpm: Callable[..., Tpm]
) -> None:
    reference, canary = _policies(tmp_path)
    new_kernel, kernel_event = _new_kernel_log(tmp_path)
    base = tmp_path / "site"
    base.mkdir()
    for site in make_site(
        _template_repo,
        base,
        str(base / "server.db"),
        ek_ca=(LOCAL_CA,),
        boot_policy=reference,
        pool_boot_policies=(("canary", canary),),
    ):
        _agent(site, start_tpm("a"), tmp_path / "n1", "n1", "prod", new_kernel)
        _agent(site, start_tpm("b"), tmp_path / "n2", "n2", "canary", new_kernel)

        fleet = site.fleet()
        bad, good = fleet["n1"]["report_attestation"], fleet["n2"]["report_attestation"]
        assert (good["passed"], good["policy"], good["reasons"]) == (True, "pool canary", [])
        assert (bad["passed"], bad["policy"]) == (False, "default")
        # The quote and the log agree: only the policy fails, for the kernel alone.
        assert bad["event_log_sha256"] == hashlib.sha256(new_kernel.read_bytes()).hexdigest()
        reason = f"event {kernel_event}: "
        assert len(bad["reasons"]) == 1 and bad["reasons"][0].startswith(reason)
        assert f"has digest {NEW_KERNEL.hex()}, not an allowed one" in bad["reasons"][0]
        # The failed verdict is kept with the report: its history says so too.
        history = site.server.call(lambda svc: svc.store.history("n1", 5))
        assert [h.attestation and h.attestation.passed for h in history] == [False]

        page = _node_page(site, "n1")
        assert "Policy: default. Last attested report: <span" in page
        assert f"has digest {NEW_KERNEL.hex()}, not an allowed one" in page
        assert "Policy: pool canary. Last attested report: pass." in _node_page(site, "n2")


def test_a_broken_policy_file_stops_the_server_with_a_clear_error(
    _template_repo: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "policy.json"
    broken.write_text('{"schema": 1, "bank": "sha256"}')
    repo = tmp_path / "repo"  # a copy: the server may write its keys in it, never the template
    shutil.copytree(_template_repo, repo)
    config = ServerConfig(
        repo=repo,
        db=str(tmp_path / "server.db"),
        port=0,
        ek_ca=(LOCAL_CA,),
        tpm_enrollment_token="t" * 20,
        pool_boot_policies=(("prod", broken),),
    )
    with pytest.raises(GpuwardError, match=r"policy.json is not valid.*from-eventlog"):
        BackgroundServer(config).start()
