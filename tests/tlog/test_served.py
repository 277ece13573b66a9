"""The log as the real server keeps and serves it: what it logs (the bundles and
metadata it serves, compliance reports), the checkpoint and proofs operators and
nodes read, and a compliance report citing its checkpoint."""

from __future__ import annotations

import hashlib
import json
import subprocess
from typing import Any

import urllib3

from fleet import merkle
from fleet.tlog import ConsistencyProof, InclusionProof, LogEntry, LogExport
from keys import tlog_key
from tests.conftest import Site
from tests.simnode import SimNode, operator_get


def _export(site: Site, token: str) -> LogExport:
    response = operator_get(site.url, "/v1/log/export", token)
    assert response.status == 200, response.data
    return LogExport.from_dict(json.loads(response.data))


def _entries(export: LogExport) -> list[dict[str, Any]]:
    return [json.loads(doc) for doc in export.entries]


def test_the_server_logs_what_it_serves_and_proves_it(site: Site) -> None:
    verifier = tlog_key.NoteVerifier.parse((site.repo.root / "keys" / "tlog.vkey").read_text())
    token = site.server.issue_token("viewer")
    first = site.publish("580.95.05")
    site.server.call(lambda svc: svc.renewer.run_pass())  # type: ignore[union-attr]
    before = _export(site, token)
    old = tlog_key.verify_export(before, verifier).checkpoint
    bundles = [e for e in _entries(before) if e["kind"] == "bundle"]
    assert [(e["subject"], e["sha256"]) for e in bundles] == [(first.target_path, first.sha256)]
    assert {e["subject"] for e in _entries(before) if e["kind"] == "metadata"} >= {
        "image/root", "image/targets", "image/snapshot", "image/timestamp",
    }  # fmt: skip

    # Seen again on the next pass, nothing is logged twice; a new bundle is.
    second = site.publish("580.95.06")
    site.server.call(lambda svc: svc.renewer.run_pass())  # type: ignore[union-attr]
    after = _export(site, token)
    new = tlog_key.verify_export(after, verifier).checkpoint
    bundles = [e for e in _entries(after) if e["kind"] == "bundle"]
    assert [e["subject"] for e in bundles] == [first.target_path, second.target_path]

    response = operator_get(
        site.url, f"/v1/log/proof/consistency?old={old.size}&new={new.size}", token
    )
    proof = ConsistencyProof.from_dict(json.loads(response.data))
    merkle.verify_consistency(old.size, new.size, old.root, new.root, proof.hashes)

    # A node reads its proof with its own signed request, by the entry's leaf hash.
    node = SimNode(site.url, "gpu-1")
    assert node.enroll().status == 201
    leaf = LogEntry.from_dict(json.loads(after.entries[-1])).leaf_hash
    path = f"/v1/nodes/gpu-1/log/proof/inclusion?leaf_hash={leaf.hex()}"
    response = node.send("GET", path)
    assert response.status == 200, response.data
    inclusion = InclusionProof.from_dict(json.loads(response.data))
    checkpoint = verifier.verify(inclusion.checkpoint)
    merkle.verify_inclusion(
        leaf, inclusion.index, inclusion.size, inclusion.hashes, checkpoint.root
    )
    assert node.send("GET", path.replace("gpu-1", "gpu-2", 1)).status == 403
    unsigned = urllib3.request("GET", site.url + path, retries=False)
    assert unsigned.status == 401
    assert operator_get(site.url, "/v1/log/checkpoint", None).status == 401


def test_a_compliance_report_cites_its_checkpoint_and_is_logged(site: Site) -> None:
    verifier = tlog_key.NoteVerifier.parse((site.repo.root / "keys" / "tlog.vkey").read_text())
    token = site.server.issue_token("viewer")
    response = operator_get(site.url, "/v1/reports/fleet?format=json", token)
    assert response.status == 200, response.data
    cited = verifier.verify(json.loads(response.data)["log_checkpoint"])
    export = _export(site, token)
    logged = LogEntry.from_dict(json.loads(export.entries[cited.size]))
    assert (logged.kind.value, logged.subject) == ("compliance-report", "fleet")
    assert logged.sha256 == hashlib.sha256(response.data).hexdigest()
    assert tlog_key.verify_export(export, verifier).tree.root(cited.size) == cited.root
    # The HTML and PDF cite it too, in words an auditor reads.
    for fmt in ("html", "pdf"):
        shown = operator_get(site.url, f"/v1/reports/fleet?format={fmt}", token)
        assert shown.status == 200, shown.data
        text = shown.data.decode() if fmt == "html" else _pdf_text(shown.data)
        words = " ".join(text.split())
        assert "Made under transparency log checkpoint" in words
        assert f"tree size {cited.size + 1 + (fmt == 'pdf')}, root hash" in words


def _pdf_text(pdf: bytes) -> str:
    done = subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True)
    return done.stdout.decode()
