"""GPU attestation evidence in attested reports, end to end: the fake
libnvidia-ml.so.1 serves NVIDIA's sample evidence (its measurements and opaque
data, signed again by each fake GPU's key over the nonce asked for), the agent
puts it in its report over the TPM challenge's nonce, swtpm quotes the report,
and the server judges each GPU against RIMs re-signed for that firmware
(``tests/gpu_attest/evidence.py``), revocation waived (``gpu_revocation``).

The quote binds the evidence (it is in the report digest), the GPU's signature
binds the challenge: evidence swapped after quoting is refused with the report,
and evidence from an earlier challenge, quoted honestly, leaves it unattested.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from agent.identity import enroll, load_key
from fleet.attestation import AttestedReport
from fleet.gpu_attestation import GpuEvidence, GpuOutcome, MeasurementOutcome
from fleet.report import HealthReport
from node.attest.attestor import Attestor
from node.config import AgentConfig, load_config
from tests.attest.conftest import LOCAL_CA, Tpm, extend_log
from tests.attest.test_end_to_end import make_report
from tests.attest.test_over_http import ask_challenge, reference_log
from tests.conftest import Site, make_site
from tests.gpu_attest.evidence import (
    SAMPLE_DRIVER,
    SAMPLE_NONCE,
    Authority,
    LabPki,
    LabTrust,
    Sample,
    fake_gpus,
    make_pki,
    resign,
    root,
    write_lab_trust,
)
from tests.gpu_attest.nvidia import nvidia_package
from tests.nvml.fakelib import build_fake_nvml, h100_host, write_config
from tests.simnode import SimNode, dashboard_sign_in


@dataclasses.dataclass(frozen=True)
class Lab:
    sample: Sample
    pki: LabPki
    trust: LabTrust
    gpus: tuple[Authority, Authority]  # two GPUs, each with its own key


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    sample = Sample(nvidia_package() / "samples")
    pki = make_pki(sample)
    trust = write_lab_trust(tmp_path_factory.mktemp("gpu-trust"), sample, pki)
    return Lab(sample, pki, trust, (pki.gpu, pki.other_gpu()))


@pytest.fixture
def site(_template_repo: Path, tmp_path: Path, lab: Lab) -> Iterator[Site]:
    """A server enrolling swtpm's TPMs and judging GPUs by the lab's RIMs and roots."""
    base = tmp_path / "site"
    base.mkdir()
    yield from make_site(
        _template_repo, base, str(base / "server.db"), ek_ca=(LOCAL_CA,), **lab.trust.settings()
    )


def tpm_agent(site: Site, tpm: Tpm, folder: Path, backend: str) -> tuple[Path, AgentConfig]:
    """An agent enrolled with its TPM, whose PCRs its event log explains: its config
    file and its config."""
    folder.mkdir()
    log_path = reference_log()
    extend_log(tpm, log_path)
    extra = f'\n[attestation]\ntcti = "{tpm.tcti}"\nevent_log = "{log_path}"\n'
    path = site.agent_toml(folder, extra=extra, health_backend=backend)
    config = load_config(path)
    assert enroll(config)["attestation"] == "tpm2"
    return path, config


def evidence(lab: Lab, gpu: int, nonce: bytes) -> GpuEvidence:
    """What fake GPU ``gpu`` answers to ``nonce``, made here as the fake makes it."""
    authority = lab.gpus[gpu]
    return GpuEvidence(
        gpu,
        f"GPU-{gpu:08x}-1111-2222-3333-444455556666",
        resign(lab.sample.report_bytes(), authority.key, nonce=nonce),
        lab.pki.device_chain_pem(authority),
    )


def report_with(
    *gpus: GpuEvidence, reason: str = "ok", driver: str = SAMPLE_DRIVER
) -> HealthReport:
    """A report naming ``driver`` (the sample GPU's), carrying ``gpus``' evidence."""
    return dataclasses.replace(make_report(reason=reason), driver_version=driver, gpu_evidence=gpus)


def run_agent_once(config: Path, tmp_path: Path, host: dict[str, object]) -> None:
    """``gpuward agent run --once`` on the fake libnvidia-ml.so.1 configured as ``host``."""
    libs = build_fake_nvml(tmp_path / "fake-nvml")
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": str(libs),
        "FAKE_NVML_CONFIG": str(write_config(tmp_path / "fake-nvml.conf", host)),
    }
    done = subprocess.run(
        [sys.executable, "-m", "gpuward", "agent", "run", "--once", "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_agent_reports_each_gpus_evidence_and_the_server_attests_it(
    site: Site, tpm: Tpm, tmp_path: Path, lab: Lab
) -> None:
    path, _config = tpm_agent(site, tpm, tmp_path / "node", backend="nvml")
    gpus = fake_gpus(tmp_path / "gpus", lab.sample, lab.pki, lab.gpus)
    run_agent_once(path, tmp_path, h100_host(gpus=2, driver=SAMPLE_DRIVER, **gpus))

    shown = site.fleet()["n1"]
    report = HealthReport.from_dict(shown["report"])
    assert [e.uuid for e in report.gpu_evidence] == [
        "GPU-00000000-1111-2222-3333-444455556666",
        "GPU-00000001-1111-2222-3333-444455556666",
    ]
    verdict = shown["report_attestation"]
    assert verdict["reasons"] == [] and verdict["passed"] is True
    gpus = verdict["gpus"]
    assert [g["uuid"] for g in gpus] == [e.uuid for e in report.gpu_evidence]
    assert {g["verdict"] for g in gpus} == {GpuOutcome.PASS}
    assert {m["outcome"] for g in gpus for m in g["measurements"]} == {MeasurementOutcome.MATCH}
    # Both GPUs answered the one challenge the TPM quoted.
    assert len({g["nonce"] for g in gpus}) == 1
    assert {c["outcome"] for g in gpus for c in g["checks"] if c["name"] == "nonce"} == {"pass"}


def test_gpu_evidence_swapped_after_quoting_is_refused(
    site: Site, tpm: Tpm, tmp_path: Path, lab: Lab
) -> None:
    _path, config = tpm_agent(site, tpm, tmp_path / "node", backend="simulated")
    node = SimNode(site.url, config.node_id, key=load_key(config))
    assert config.attestation is not None
    with Attestor(config.attestation, config.state_dir) as attestor:
        # As quoted, a report with GPU 0's evidence is accepted and the GPU attested.
        challenge, _ = ask_challenge(node)
        honest = report_with(evidence(lab, 0, challenge.nonce))
        attested = attestor.attest_report(honest, challenge)
        accepted = node.send("POST", "/v1/reports", json.dumps(attested.to_dict()).encode())
        assert accepted.status == 202, accepted.data
        verdict = site.fleet()["n1"]["report_attestation"]
        assert verdict["passed"] is True and [g["verdict"] for g in verdict["gpus"]] == ["pass"]

        # The next quote, over the report with GPU 1's evidence put in GPU 0's place:
        # both answer the challenge and verify on their own, but it is not what was quoted.
        challenge, _ = ask_challenge(node)
        quoted = report_with(evidence(lab, 0, challenge.nonce), reason="next")
        attested = attestor.attest_report(quoted, challenge)
        swapped = dataclasses.replace(quoted, gpu_evidence=(evidence(lab, 1, challenge.nonce),))
        body = json.dumps(AttestedReport(swapped, attested.evidence).to_dict()).encode()
        refused = node.send("POST", "/v1/reports", body)
    assert refused.status == 403
    assert "another report" in json.loads(refused.data)["error"]
    assert site.fleet()["n1"]["report"]["reason"] == honest.reason
    assert len(site.server.call(lambda svc: svc.store.history("n1", 10))) == 1


def test_gpu_evidence_from_an_earlier_challenge_leaves_the_report_unattested(
    site: Site, tpm: Tpm, tmp_path: Path, lab: Lab
) -> None:
    """Quoted honestly over a fresh challenge, but the GPU answered the last one: a
    replay of old GPU evidence (or a GPU ignoring the nonce) is caught by its nonce."""
    _path, config = tpm_agent(site, tpm, tmp_path / "node", backend="simulated")
    node = SimNode(site.url, config.node_id, key=load_key(config))
    assert config.attestation is not None
    with Attestor(config.attestation, config.state_dir) as attestor:
        earlier, _ = ask_challenge(node)
        challenge, _ = ask_challenge(node)  # replaces the earlier one
        stale = report_with(evidence(lab, 0, earlier.nonce))
        attested = attestor.attest_report(stale, challenge)
        accepted = node.send("POST", "/v1/reports", json.dumps(attested.to_dict()).encode())
    assert accepted.status == 202, accepted.data
    verdict = site.fleet()["n1"]["report_attestation"]
    assert verdict["passed"] is False
    (gpu,) = verdict["gpus"]
    assert gpu["verdict"] == "fail"
    assert any(c["name"] == "nonce" and c["outcome"] == "fail" for c in gpu["checks"])
    (reason,) = verdict["reasons"]
    assert reason.startswith("GPU 0 (GPU-00000000-1111-2222-3333-444455556666) attestation fail:")
    assert f"not {challenge.nonce.hex()}" in reason


def test_a_report_naming_another_driver_than_its_gpus_is_unattested(
    site: Site, tpm: Tpm, tmp_path: Path, lab: Lab
) -> None:
    """The GPU's signed report states driver 550.90.07; a report claiming 580.65.06
    over it (a node hiding which driver runs) is not attested."""
    _path, config = tpm_agent(site, tpm, tmp_path / "node", backend="simulated")
    node = SimNode(site.url, config.node_id, key=load_key(config))
    assert config.attestation is not None
    with Attestor(config.attestation, config.state_dir) as attestor:
        challenge, _ = ask_challenge(node)
        claimed = report_with(evidence(lab, 0, challenge.nonce), driver="580.65.06")
        attested = attestor.attest_report(claimed, challenge)
        accepted = node.send("POST", "/v1/reports", json.dumps(attested.to_dict()).encode())
    assert accepted.status == 202, accepted.data
    verdict = site.fleet()["n1"]["report_attestation"]
    assert verdict["passed"] is False
    assert [g["verdict"] for g in verdict["gpus"]] == ["pass"]
    assert verdict["reasons"] == [
        "GPU 0 (GPU-00000000-1111-2222-3333-444455556666) states driver 550.90.07 in its "
        "signed report, but the report names 580.65.06"
    ]


def test_a_gpu_serving_nvidias_sample_as_it_is_is_not_attested(
    site: Site, tpm: Tpm, tmp_path: Path, lab: Lab
) -> None:
    """A fake GPU without a key serves NVIDIA's genuine sample report and chain
    whatever it is asked: old evidence, answering another nonce."""
    path, _config = tpm_agent(site, tpm, tmp_path / "node", backend="nvml")
    report = tmp_path / "sample-report.bin"
    report.write_bytes(lab.sample.report_bytes())
    host = h100_host(
        gpus=1,
        driver=SAMPLE_DRIVER,
        **{"gpu.0.cc.report": report, "gpu.0.cc.cert_chain": lab.sample.chain},
    )
    run_agent_once(path, tmp_path, host)

    verdict = site.fleet()["n1"]["report_attestation"]
    assert verdict["passed"] is False
    (gpu,) = verdict["gpus"]
    checks = {c["name"]: c for c in gpu["checks"]}
    assert gpu["nonce"] == SAMPLE_NONCE.hex()
    assert checks["nonce"]["outcome"] == "fail"
    # The genuine chain leads to NVIDIA's root, not the root this server trusts.
    assert checks["certificate_chain"]["outcome"] == "fail"


def test_the_node_page_and_api_show_each_gpus_verdict(
    site: Site, tpm: Tpm, tmp_path: Path, lab: Lab
) -> None:
    """GPU 0 answers with measurement 9 changed; GPU 1 with a chain to a root named
    to inject markup into the page: both shown failing, the name escaped."""
    _path, config = tpm_agent(site, tpm, tmp_path / "node", backend="simulated")
    node = SimNode(site.url, config.node_id, key=load_key(config))
    hostile = root("<script>alert(1)</script>")
    stranger = hostile.issue("GPU leaf", ca=False)
    assert config.attestation is not None
    with Attestor(config.attestation, config.state_dir) as attestor:
        challenge, _ = ask_challenge(node)
        good = evidence(lab, 0, challenge.nonce)
        flipped = dataclasses.replace(
            good,
            report=resign(
                lab.sample.report_bytes(), lab.gpus[0].key, nonce=challenge.nonce, flip=9
            ),
        )
        forged = GpuEvidence(
            1,
            "GPU-00000001-1111-2222-3333-444455556666",
            resign(lab.sample.report_bytes(), stranger.key, nonce=challenge.nonce),
            stranger.pem() + hostile.pem(),
        )
        attested = attestor.attest_report(report_with(flipped, forged), challenge)
        accepted = node.send("POST", "/v1/reports", json.dumps(attested.to_dict()).encode())
    assert accepted.status == 202, accepted.data

    token = site.server.issue_token("viewer")
    api = urllib3.request(
        "GET", f"{site.url}/v1/nodes/{config.node_id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert api.status == 200, api.data
    gpus = json.loads(api.data)["report_attestation"]["gpus"]
    assert [(g["uuid"], g["verdict"]) for g in gpus] == [
        (flipped.uuid, "fail"),
        (forged.uuid, "fail"),
    ]
    assert [m["index"] for m in gpus[0]["measurements"] if m["outcome"] == "mismatch"] == [9]

    cookie = dashboard_sign_in(site.url, token)
    page = urllib3.request(
        "GET", f"{site.url}/nodes/{config.node_id}", headers={"Cookie": cookie}
    ).data.decode()
    table = page[page.index('<table id="gpu-attestation-table">') :].split("</table>", 1)[0]
    assert (
        f'<td>0</td><td>{flipped.uuid}</td><td><span class="unhealthy">fail</span></td>'
        f"<td>550.90.07</td><td>96.00.9f.00.01</td><td>9</td>"
    ) in table
    assert "measurements: measurements at index 9 match no RIM value" in table
    assert "<script>alert" not in page
    # (RFC 4514 escapes the angle brackets with a backslash; HTML escaping does the rest.)
    assert r"ends at CN=\&lt;script\&gt;alert(1)\&lt;/script\&gt;, not at the pinned" in table
