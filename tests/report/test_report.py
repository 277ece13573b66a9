"""Compliance reports of a fleet in mixed states, in every format, signed and checked.

Unattested nodes enroll and report over HTTP as agents do. The TPM-enrolled
nodes and their attestation verdicts are written to the store as the TPM
enrollment and report attestation code writes them (that path is attacked in
tests/attest), so this test can give them the states an auditor must see:
a passed and a failed measured boot, a rollback, an end-of-life branch.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest
from PIL import Image

from fleet.attestation_verdict import AttestationVerdict
from fleet.compliance import schema_text
from fleet.firewall import FirewallReport
from fleet.report import HealthReport, KernelHoldReport
from keys.report_key import key_id, load_public
from server.attestation.enrollment import EnrolledTpm
from server.http import Services
from server.report_render import Grid, blocks
from server.store import EnrolledNode
from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.conftest import Fleet
from tests.simnode import operator_post, report_doc

EK_SHA256 = "ab" * 32
RULESET = "cd" * 32


def _viewer(fleet: Fleet, tmp_path: Path) -> tuple[str, ...]:
    """Flags that reach the fleet's server with a viewer token."""
    token = tmp_path / "viewer.token"
    if not token.exists():
        token.write_text(fleet.token("viewer"))
    return ("--server", fleet.url, "--token-file", str(token))


def _tpm_node(
    fleet: Fleet,
    node_id: str,
    reports: list[tuple[dict[str, Any], AttestationVerdict]],
    ek_sha256: str = EK_SHA256,  # each TPM's own: an EK is bound to one node
) -> None:
    now = int(fleet.clock())
    node = EnrolledNode(
        node_id=node_id,
        public_key=bytes(32),
        pool="secure",
        attested=True,
        attestation="tpm2",
        enrolled_at=now,
        tpm=json.dumps(
            EnrolledTpm(
                node_id, b"AK public area", ek_sha256, now, "CN=EK of " + node_id, "1f2e"
            ).to_dict()
        ),
    )

    async def write(svc: Services) -> None:
        await svc.store.enroll(node)
        for i, (doc, verdict) in enumerate(reports):
            report = HealthReport.from_dict(doc)
            await svc.store.add_report(report, now + i, "127.0.0.1", f"{node_id}-{i}", verdict)

    fleet.site.server.call(write)


def _firewall(in_sync: bool = True) -> dict[str, Any]:
    return FirewallReport("host", RULESET, in_sync, "unchanged", (), (), None).to_dict()


def _mixed_fleet(fleet: Fleet) -> list[str]:
    passed = AttestationVerdict(True, 1, "ef" * 32, "default", (), secure_boot=True)
    failed = AttestationVerdict(
        False, 2, "ef" * 32, "pool secure", ("Secure Boot is not on",), False
    )
    held = KernelHoldReport("6.1.0-27-amd64", "apt", True, ("linux-image-6.1.0-27-amd64",), "")
    good = {**report_doc("tpm-good", driver="580.65.06"), "firewall": _firewall()}
    _tpm_node(fleet, "tpm-good", [({**good, "kernel_hold": held.to_dict()}, passed)])
    _tpm_node(
        fleet,
        "tpm-rolled-back",
        [
            (report_doc("tpm-rolled-back", driver="580.65.06"), passed),
            (report_doc("tpm-rolled-back", driver="580.65.06", update="rolled-back"), failed),
        ],
        "cd" * 32,
    )
    eol = fleet.node("legacy-eol")
    assert eol.report(driver="470.256.02", bundle="drivers/R470/x.bundle").status == 202
    soon = fleet.node("ending-soon")
    assert soon.report(driver="595.10.01", update="up-to-date").status == 202
    fleet.node("never-reported")
    return ["tpm-good", "tpm-rolled-back", "legacy-eol", "ending-soon", "never-reported"]


def _fetch(fleet: Fleet, tmp_path: Path, fmt: str, *scope: str) -> Path:
    out = tmp_path / f"report-{'-'.join(scope)}.{fmt}"
    done = gpuward("report", *scope, "--format", fmt, "-o", str(out), *_viewer(fleet, tmp_path))
    assert done.returncode == 0, done.stderr
    return out


def _key(fleet: Fleet) -> Path:
    """The public key, found as an operator would hand it to an auditor."""
    shown = gpuward("server", "report-key", "--repo", str(fleet.site.repo.root))
    assert shown.returncode == 0, shown.stderr
    [line] = [line for line in shown.stdout.splitlines() if line.startswith("public key: ")]
    return Path(line.removeprefix("public key: ").split(" ")[0])


def assert_verifies_until_a_byte_changes(public_key: Path, report: Path) -> None:
    """``gpuward report verify`` and OpenSSL, as the README tells auditors, accept the
    report under ``public_key``, and refuse it once one byte changes."""
    key = str(public_key)
    ok = gpuward("report", "verify", str(report), "--key", key)
    assert ok.returncode == 0, ok.stderr
    # An auditor without gpuward: OpenSSL checks the same detached signature.
    openssl = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", key, "-rawin",
         "-in", str(report), "-sigfile", f"{report}.sig"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert openssl.returncode == 0, openssl.stdout + openssl.stderr
    data = bytearray(report.read_bytes())
    data[len(data) // 2] ^= 0x01
    report.write_bytes(bytes(data))
    assert_one_line_error(
        gpuward("report", "verify", str(report), "--key", key), "does not match its signature"
    )


def test_fleet_report_in_every_format(fleet: Fleet, tmp_path: Path) -> None:
    nodes = _mixed_fleet(fleet)

    report = _fetch(fleet, tmp_path, "json", "fleet")
    doc = json.loads(report.read_text())
    jsonschema.Draft202012Validator(json.loads(schema_text())).validate(doc)
    assert doc["signed_by"]["key_id"] == key_id(load_public(_key(fleet)))
    by_id = {n["node_id"]: n for n in doc["nodes"]}
    assert sorted(by_id) == sorted(nodes)
    good, rolled, eol = by_id["tpm-good"], by_id["tpm-rolled-back"], by_id["legacy-eol"]
    assert good["attestation"]["result"] == "passed"
    assert good["secure_boot"] == "on"
    assert good["kernel"] == {
        "release": "6.1.0-27-amd64", "hold": True,
        "held_packages": ["linux-image-6.1.0-27-amd64"], "hold_error": None,
    }  # fmt: skip
    assert eol["kernel"]["hold"] is None  # never committed through the applier
    assert good["measured_boot_policy"] == {"policy": "default", "result": "passed", "reasons": []}
    assert good["identity"]["ek_certificate"] == {
        "sha256": EK_SHA256, "subject": "CN=EK of tpm-good", "serial": "1f2e",
    }  # fmt: skip
    assert good["firewall"] == {
        "enforced": True, "mode": "host", "ruleset_sha256": RULESET, "in_sync": True,
        "telemetry_off": True,
    }  # fmt: skip
    assert rolled["attestation"] == {
        "result": "failed",
        "last_attested_at": rolled["attestation"]["last_attested_at"],
        "reasons": ["Secure Boot is not on"],
    }
    assert rolled["measured_boot_policy"]["result"] == "failed"
    assert rolled["measured_boot_policy"]["policy"] == "pool secure"
    assert rolled["secure_boot"] == "off"
    assert rolled["updates"]["rollbacks"] == 1
    assert [h["update"] for h in rolled["updates"]["history"]] == ["rolled-back", "committed"]
    assert eol["driver"] == {
        "version": "470.256.02", "branch": "R470", "type": "LTSB", "status": "ended",
        "end_of_life": "2024-07",
    }  # fmt: skip
    assert eol["attestation"]["result"] == "unattested"
    assert eol["firewall"]["ruleset_sha256"] is None  # no firewall report
    assert by_id["ending-soon"]["driver"]["status"] == "ending-soon"  # R595 ends 2027-03
    assert by_id["ending-soon"]["updates"]["history"] == []
    assert by_id["never-reported"]["state"] == "new"
    assert doc["summary"]["attestation"] == {
        "passed": 1, "failed": 1, "no-attested-report": 0, "unattested": 3,
    }  # fmt: skip
    assert doc["summary"]["end_of_life_exposure"] == {
        "supported": 2, "ending-soon": 1, "ended": 1, "unknown": 1,
    }  # fmt: skip
    assert doc["summary"]["driver_versions"] == {
        "470.256.02": 1, "580.65.06": 2, "595.10.01": 1, "none": 1,
    }  # fmt: skip
    # Security advisories: the bulletins name 580.65.06 and 595.10.01; R470 is older
    # than every branch they list; a node that never reported is unknown.
    by_cve = {a["cve"]: a for a in good["advisories"]["open"]}
    assert by_cve["CVE-2025-23280"] == {
        "cve": "CVE-2025-23280", "severity": "high", "score": 7.0, "status": "affected",
        "fixed": "580.95.05", "bulletin": "https://nvidia.custhelp.com/app/answers/detail/a_id/5703",
    }  # fmt: skip
    assert good["advisories"]["fixed_by"] == "580.159.03"
    assert {a["status"] for a in eol["advisories"]["open"]} == {"branch-not-listed"}
    assert eol["advisories"]["fixed_by"] is None
    assert by_id["ending-soon"]["advisories"]["fixed_by"] == "595.71.05"
    assert by_id["never-reported"]["advisories"]["status"] == "unknown"
    advisories = doc["summary"]["advisories"]
    assert (advisories["exposed"], advisories["none-open"], advisories["unknown"]) == (4, 0, 1)
    [r580] = [c for c in advisories["cves"] if c["cve"] == "CVE-2025-23280"]
    assert r580["nodes"] == 3  # both R580 nodes, and R470 (branch not listed)
    assert_verifies_until_a_byte_changes(_key(fleet), report)

    html = _fetch(fleet, tmp_path, "html", "fleet")
    text = html.read_text()
    assert text.count("<svg") == 4
    assert all(node in text for node in nodes)
    assert "CVE-2025-23280" in text and "a_id/5703" in text
    assert "src=" not in text and "href=" not in text  # self-contained
    assert_verifies_until_a_byte_changes(_key(fleet), html)

    pdf = _fetch(fleet, tmp_path, "pdf", "fleet")
    shown = assert_reads_as_an_auditor(pdf, doc, tmp_path / "pages")
    assert all(node in shown for node in nodes)  # the node list
    assert "CVE-2025-23280" in shown and "a_id/5703" in shown
    # Exceptions: the failed measured boot, the ended branch, each with its evidence.
    assert "tpm-rolled-back" in shown and "Secure Boot is not on" in shown
    assert "branch R470, end of life 2024-07" in shown
    assert_verifies_until_a_byte_changes(_key(fleet), pdf)

    evidence = _fetch(fleet, tmp_path, "csv", "fleet")
    with evidence.open(newline="") as f:
        rows = {row["Node"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == sorted(nodes)
    assert rows["tpm-good"]["attested-boot result"] == "pass"
    assert rows["tpm-rolled-back"]["secure-boot result"] == "fail"
    assert rows["legacy-eol"]["driver-supported result"] == "fail"
    assert rows["legacy-eol"]["attested-boot result"] == "unknown"  # no TPM: not attested
    counted = {c: {r: 0 for r in ("pass", "fail", "unknown")} for c in doc["summary"]["controls"]}
    for row in rows.values():
        for control in counted:
            counted[control][row[f"{control} result"]] += 1
    assert counted == doc["summary"]["controls"]
    assert_verifies_until_a_byte_changes(_key(fleet), evidence)


def _table_words(document: dict[str, Any], name: str) -> set[str]:
    """Every word in the tables of the report as its PDF lays it out."""
    return {
        word
        for block in blocks(document, name)
        if isinstance(block, Grid)
        # A vertical table (a node's facts) has its headings in its first column.
        for row in (block.rows if block.vertical else (block.headings, *block.rows))
        for text in row
        for word in text.split()
    }


def assert_reads_as_an_auditor(pdf: Path, document: dict[str, Any], folder: Path) -> str:
    """The PDF renders (pdftoppm), and its text (pdftotext) reads whole: no word of a
    table split across lines, "Page N of M" and the header on every page, the summary
    and the exceptions, the signature's own file name; its metadata tells the truth
    and its fonts travel with it. Returns the text."""
    pages = _render(pdf, folder)
    text = subprocess.run(
        ["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    tokens = set(text.split())
    split = _table_words(document, pdf.name) - tokens
    assert not split, (sorted(split), text)
    by_page = text.split("\f")[: len(pages)]
    for number, page in enumerate(by_page, 1):
        assert f"Page {number} of {len(pages)}" in page
        assert f"generated {document['generated_at']}" in page
        assert f"signature: {pdf.name}.sig" in page
    assert "Summary" in tokens and "Exceptions" in tokens
    assert f"in {pdf.name}.sig." in " ".join(text.split())
    assert "FILE.sig" not in text
    info = dict(
        line.split(":", 1)
        for line in subprocess.run(
            ["pdfinfo", "-isodates", str(pdf)], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    )
    assert info["CreationDate"].strip() == document["generated_at"]
    assert info["Title"].strip().startswith("gpuward compliance report")
    assert info["Subject"].strip().startswith(f"Compliance of {len(document['nodes'])} node(s)")
    assert info["Producer"].strip().startswith("gpuward")
    fonts = subprocess.run(["pdffonts", str(pdf)], capture_output=True, text=True, check=True)
    listed = fonts.stdout.splitlines()[2:]
    assert listed and all(line.split()[-5] == "yes" for line in listed)  # the "emb" column
    return text


def _render(pdf: Path, folder: Path) -> list[Path]:
    """The PDF's pages as PNG files (poppler's pdftoppm), each checked not blank."""
    folder.mkdir()
    subprocess.run(["pdftoppm", "-png", "-r", "40", str(pdf), str(folder / "page")], check=True)
    pages = sorted(folder.glob("page-*.png"))
    for page in pages:
        with Image.open(page) as image:
            # One band ("L"): one (low, high) pair, not one per band.
            low, high = cast(tuple[int, int], image.convert("L").getextrema())
            assert low < 128 < high, f"{page.name} is blank"
    return pages


def test_node_report_and_refusals(fleet: Fleet, tmp_path: Path) -> None:
    _mixed_fleet(fleet)
    node = _fetch(fleet, tmp_path, "json", "node", "tpm-rolled-back")
    pdf = _fetch(fleet, tmp_path, "pdf", "node", "tpm-rolled-back")
    shown = assert_reads_as_an_auditor(pdf, json.loads(node.read_text()), tmp_path / "pages")
    assert "Update history" in shown and "rolled-back" in shown
    for report in (node, pdf):
        assert_verifies_until_a_byte_changes(_key(fleet), report)
    doc = json.loads(_fetch(fleet, tmp_path, "json", "node", "legacy-eol").read_text())
    jsonschema.Draft202012Validator(json.loads(schema_text())).validate(doc)
    assert doc["scope"] == "node"
    assert [n["node_id"] for n in doc["nodes"]] == ["legacy-eol"]

    out = str(tmp_path / "x.json")
    missing = gpuward("report", "node", "nope", "-o", out, *_viewer(fleet, tmp_path))
    assert_one_line_error(missing, "no enrolled node 'nope'")
    anonymous = gpuward("report", "fleet", "-o", out, "--server", fleet.url)
    assert_one_line_error(anonymous, "no operator token")
    assert not Path(out).exists()


def test_a_signature_by_another_key_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from keys.report_key import public_pem

    report = _fetch(fleet, tmp_path, "json", "fleet")
    other = tmp_path / "other.pub"
    other.write_bytes(public_pem(Ed25519PrivateKey.generate().public_key()))
    assert_one_line_error(
        gpuward("report", "verify", str(report), "--key", str(other)), "does not match"
    )
    report.with_name(report.name + ".sig").write_bytes(b"short")
    assert_one_line_error(
        gpuward("report", "verify", str(report), "--key", str(_key(fleet))), "64 bytes"
    )


@pytest.mark.parametrize("fmt", ["xml"])
def test_unknown_format_is_a_usage_error(fmt: str, tmp_path: Path) -> None:
    done = gpuward("report", "fleet", "--format", fmt, "-o", str(tmp_path / "r"))
    assert done.returncode == 2
    assert "invalid choice" in done.stderr


def test_history_names_the_rollout_and_the_operators_behind_each_change(
    fleet: Fleet, tmp_path: Path
) -> None:
    old, new = fleet.site.publish("580.65.06"), fleet.site.publish("580.82.07")
    node = fleet.node("gpu-a", pool="prod")
    assert node.report(driver="580.65.06", bundle=old.target_path).status == 202
    fleet.clock.advance(60)
    alice = fleet.site.server.issue_token("operator", "alice")
    bob = fleet.site.server.issue_token("operator", "bob")
    policy = {"waves": "100%", "max_unavailable": 1, "soak_s": 300}
    body = {"id": "r-audit", "pool": "prod", "target": new.target_path, "policy": policy}
    assert operator_post(fleet.url, "/v1/rollouts", alice, body).status == 201
    for command in ("pause", "resume"):
        done = operator_post(fleet.url, f"/v1/rollouts/r-audit/{command}", bob)
        assert done.status == 200, done.data
    fleet.clock.advance(60)
    assert node.report(driver="580.82.07", bundle=new.target_path).status == 202

    report = _fetch(fleet, tmp_path, "json", "node", "gpu-a")
    doc = json.loads(report.read_text())
    moved, first = doc["nodes"][0]["updates"]["history"]
    assert (moved["rollout"], moved["started_by"], moved["approved_by"]) == (
        "r-audit", "alice (operator)", ["bob (operator)"],
    )  # fmt: skip
    assert (first["rollout"], first["started_by"]) == (None, None)  # before any rollout
    pdf = _fetch(fleet, tmp_path, "pdf", "node", "gpu-a")
    shown = assert_reads_as_an_auditor(pdf, doc, tmp_path / "pages")
    assert "r-audit" in shown and "alice" in shown and "bob" in shown
