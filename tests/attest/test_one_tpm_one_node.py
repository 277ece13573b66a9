"""One TPM, one node: the attacks of issue 17 (items 1 and 2) against the real
server on loopback, with swtpm and the agent's code, on SQLite and PostgreSQL.

A machine holding a TPM and the fleet-wide TPM enrollment token enrolled other
node ids with it, and the real node was then refused. Now its TPM's EK is bound
to the node it enrolled: a second id is refused at once, naming the holder and
the admin's command; evidence begun for two ids before either finished is
accepted for one; the TPM's other EK (swtpm holds an RSA and an ECC P-384 one)
is refused by type. The real node enrolls and attests untouched. The one way to
move a TPM is an admin removing its node (audited), which also takes the node's
past with it: an unattested newcomer under the id shows none of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import urllib3
from structlog.testing import capture_logs

from agent.identity import enroll
from agent.reporter import post_report
from fleet.errors import GpuwardError
from fleet.nodeauth import ENROLLMENT_TOKEN_HEADER
from node.attest.attestor import Attestor
from node.config import AgentConfig, load_config
from server.attestation.enrollment import EnrolledTpm
from tests.attest.conftest import LOCAL_CA, Tpm, extend_log
from tests.attest.test_end_to_end import make_report
from tests.attest.test_over_http import enroll_body, reference_log, tpm_evidence
from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.conftest import Site, make_site
from tests.simnode import ENROLLMENT_TOKEN, SimNode


@pytest.fixture
def site(_template_repo: Path, tmp_path: Path, db_url: str) -> Iterator[Site]:
    """The server enrolling TPMs of swtpm's CA (and nodes with the token), on ``db_url``."""
    base = tmp_path / "site"
    base.mkdir()
    yield from make_site(_template_repo, base, db_url, ek_ca=(LOCAL_CA,))


def agent(site: Site, tpm: Tpm, folder: Path, node_id: str) -> AgentConfig:
    """An agent for ``node_id`` on the machine holding ``tpm``, its PCRs explained
    by the reference event log (each machine its own state folder)."""
    folder.mkdir()
    extra = f'\n[attestation]\ntcti = "{tpm.tcti}"\nevent_log = "{reference_log()}"\n'
    path = site.agent_toml(folder, extra=extra)
    path.write_text(path.read_text().replace('node_id = "n1"', f'node_id = "{node_id}"'))
    return load_config(path)


def viewer_get(site: Site, path: str) -> Any:
    token = site.server.issue_token("viewer")
    response = urllib3.request(
        "GET", f"{site.url}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status == 200, response.data
    return json.loads(response.data)


def ek_digest(site: Site, node_id: str) -> str:
    """The EK certificate digest the fleet's compliance report lists for the node."""
    nodes = viewer_get(site, "/v1/reports/fleet?format=json")["nodes"]
    [node] = [n for n in nodes if n["node_id"] == node_id]
    return str(node["identity"]["ek_certificate"]["sha256"])


def test_one_machine_cannot_enroll_other_node_ids_with_its_tpm(
    site: Site, start_tpm: Any, tmp_path: Path
) -> None:
    attacker_tpm, real_tpm = start_tpm("a"), start_tpm("b")
    extend_log(attacker_tpm, reference_log())
    extend_log(real_tpm, reference_log())
    own = agent(site, attacker_tpm, tmp_path / "gpu-099", "gpu-099")
    assert enroll(own)["attestation"] == "tpm2"
    post_report(own, make_report("gpu-099"))

    # The attack: the same machine, its TPM and the fleet's token, other ids.
    for victim in ("gpu-017", "gpu-018"):
        with pytest.raises(GpuwardError) as refused:
            enroll(agent(site, attacker_tpm, tmp_path / f"attacker-{victim}", victim))
        message = str(refused.value)
        assert "HTTP 409" in message and "bound to node gpu-099" in message
        assert "gpuward nodes remove gpu-099" in message
    assert set(site.fleet()) == {"gpu-099"}

    # The real gpu-017 is unaffected: it enrolls, attests, and passes.
    real = agent(site, real_tpm, tmp_path / "gpu-017", "gpu-017")
    assert enroll(real)["attestation"] == "tpm2"
    post_report(real, make_report("gpu-017"))
    fleet = site.fleet()
    assert set(fleet) == {"gpu-017", "gpu-099"}
    assert all(fleet[n]["report_attestation"]["passed"] for n in fleet)
    assert ek_digest(site, "gpu-017") != ek_digest(site, "gpu-099")


def test_evidence_begun_for_two_ids_before_either_finished_enrolls_one(
    site: Site, tpm: Tpm, tmp_path: Path
) -> None:
    """Nothing is bound yet at either ``begin`` (as at two replicas at once): the
    store's unique EK is what refuses the second."""
    first, second = SimNode(site.url, "gpu-017"), SimNode(site.url, "gpu-018")
    evidence = [
        tpm_evidence(site.url, tpm, tmp_path / node.node_id, node) for node in (first, second)
    ]
    assert first.send("POST", "/v1/enroll", enroll_body(first, evidence[0])).status == 201
    refused = second.send("POST", "/v1/enroll", enroll_body(second, evidence[1]))
    assert refused.status == 409
    error = json.loads(refused.data)["error"]
    assert "bound to node gpu-017" in error and "gpuward nodes remove gpu-017" in error
    assert set(site.fleet()) == {"gpu-017"}


def test_the_tpms_other_ek_is_refused_by_type(site: Site, tpm: Tpm, tmp_path: Path) -> None:
    """swtpm, like many TPMs, carries a certificate for a second EK (ECC P-384, at
    0x01c00016). Enrolling a second id by it is refused before any credential."""
    from tpm2_pytss import ESAPI, TCTILdr
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.types import TPM2B_SENSITIVE_CREATE
    from tpm2_pytss.utils import NVReadEK, create_ek_template

    with TCTILdr("swtpm", f"port={tpm.port}") as tcti, ESAPI(tcti) as esapi:
        certificate, template = create_ek_template("EK-HIGH-ECC384", NVReadEK(esapi))
        ek, ek_public, *_ = esapi.create_primary(
            TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT
        )
        esapi.flush_context(ek)
    assert certificate
    with Attestor(tpm.config(), tmp_path) as attestor:
        request = attestor.enrollment_request("gpu-018")
    second = replace(request, ek_certificate=bytes(certificate), ek_public=ek_public.marshal())
    response = urllib3.request(
        "POST",
        f"{site.url}/v1/enroll/tpm/begin",
        body=json.dumps(second.to_dict()).encode(),
        headers={"Content-Type": "application/json", ENROLLMENT_TOKEN_HEADER: ENROLLMENT_TOKEN},
    )
    assert response.status == 403, response.data
    assert "enrolls TPMs by their EK-RSA2048 endorsement key" in json.loads(response.data)["error"]
    # Its RSA EK, the one the server takes, still enrolls the id.
    assert tpm_evidence(site.url, tpm, tmp_path / "rsa", SimNode(site.url, "gpu-018"))


def _token_file(site: Site, folder: Path, role: str) -> str:
    path = folder / f"{role}.token"
    path.write_text(site.server.issue_token(role, name=f"alice-{role}"))
    return str(path)


def test_moving_a_tpm_is_an_admins_removal_audited_and_taking_the_past(
    site: Site, tpm: Tpm, tmp_path: Path
) -> None:
    extend_log(tpm, reference_log())
    old = agent(site, tpm, tmp_path / "old", "gpu-017")
    enroll(old)
    post_report(old, make_report("gpu-017"))
    assert (
        viewer_get(site, "/v1/reports/nodes/gpu-017?format=json")["nodes"][0]["attestation"][
            "result"
        ]
        == "passed"
    )

    enrolled = site.server.call(lambda svc: svc.store.enrolled("gpu-017"))
    assert enrolled is not None and enrolled.tpm is not None
    bound = EnrolledTpm.from_dict(json.loads(enrolled.tpm)).ek_certificate_sha256

    # The machine is to serve as gpu-018: refused until an admin removes gpu-017.
    moved = agent(site, tpm, tmp_path / "moved", "gpu-018")
    with pytest.raises(GpuwardError, match="gpuward nodes remove gpu-017"):
        enroll(moved)
    server = ("--server", site.url)
    viewer = _token_file(site, tmp_path, "viewer")
    denied = gpuward("nodes", "remove", "gpu-017", *server, "--token-file", viewer)
    assert_one_line_error(denied, "this needs the admin role")
    with capture_logs() as logs:
        done = gpuward(
            "nodes", "remove", "gpu-017", *server,
            "--token-file", _token_file(site, tmp_path, "admin"),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("gpu-017: removed with its history (1 report); its TPM may")
    [audit] = [e for e in logs if e["event"] == "node_removed"]
    assert audit["audit"] is True and audit["by"] == "alice-admin (admin)"
    assert (audit["node"], audit["attestation"], audit["reports_deleted"]) == ("gpu-017", "tpm2", 1)
    assert audit["ek_released"] == bound

    assert enroll(moved)["attestation"] == "tpm2"
    post_report(moved, make_report("gpu-018"))
    assert set(site.fleet()) == {"gpu-018"}

    # Whoever enrolls gpu-017 next, here without a TPM, starts with no past.
    newcomer = SimNode(site.url, "gpu-017")
    assert newcomer.enroll().status == 201
    node = viewer_get(site, "/v1/nodes/gpu-017")
    assert (node["attestation"], node["report"], node["report_attestation"]) == (
        "unattested",
        None,
        None,
    )
    assert (node["last_seen"], node["history"]) == (None, [])
    [shown] = viewer_get(site, "/v1/reports/nodes/gpu-017?format=json")["nodes"]
    assert shown["attestation"]["result"] == "unattested"
    assert shown["identity"]["ek_certificate"]["sha256"] is None
    assert shown["updates"]["history"] == [] and shown["last_seen"] is None
    assert "passed" not in json.dumps(shown)
