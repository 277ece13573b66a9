"""A report of any fleet: hypothesis writes nodes in any state, with any reasons and
histories, to a real store; the report renders in every format and its counts are
the store's own, counted here from what was written."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import jsonschema
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.attestation_verdict import AttestationVerdict
from fleet.catalog import default_catalog
from fleet.compliance import CONTROL_RESULTS, report_document, schema_text
from fleet.report import HealthReport, KernelHoldReport
from server.config import ServerConfig
from server.report_facts import fleet_facts
from server.report_render import CONTENT_TYPES, render
from server.store import EnrolledNode, open_store
from tests.simnode import report_doc

NOW = 1_800_000_000
DRIVERS = (None, "580.65.06", "595.10.01", "470.256.02", "535.216.03", "999.1.1")


@dataclass(frozen=True)
class Sent:
    """One report a node sent, and the server's verdict on it if it was attested."""

    driver: str | None
    update: str
    reason: str
    healthy: bool
    verdict: bool | None  # None: not attested
    secure_boot: bool | None
    kernel_held: bool | None  # None: no kernel hold reported
    age_s: int


@dataclass(frozen=True)
class Spec:
    tpm: bool
    sent: tuple[Sent, ...]  # oldest first


REASON = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(["", "ok"])
SENT = st.builds(
    Sent,
    st.sampled_from(DRIVERS),
    st.sampled_from(["committed", "rolled-back", "failed", "up-to-date"]),
    REASON,
    st.booleans(),
    st.none() | st.booleans(),
    st.none() | st.booleans(),
    st.none() | st.booleans(),
    st.integers(0, 40 * 86_400),
)
FLEETS = st.lists(
    st.builds(Spec, st.booleans(), st.lists(SENT, max_size=4).map(tuple)), max_size=12
)


async def _write(db: str, fleet: list[Spec]) -> None:
    store = await open_store(db)
    try:
        for i, spec in enumerate(fleet):
            node_id = f"node-{i:02}"
            await store.enroll(
                EnrolledNode(node_id=node_id, public_key=bytes(32), pool=f"pool-{i % 3}",
                             attested=spec.tpm, attestation="tpm2" if spec.tpm else "unattested",
                             enrolled_at=NOW - 50 * 86_400)
            )  # fmt: skip
            # Received in order: the newest report last, as the ages allow.
            for n, sent in enumerate(sorted(spec.sent, key=lambda s: -s.age_s)):
                doc = report_doc(node_id, driver=sent.driver, update=sent.update,
                                 healthy=sent.healthy)  # fmt: skip
                doc["reason"] = sent.reason
                if sent.kernel_held is not None:
                    doc["kernel_hold"] = KernelHoldReport(
                        "6.1.0-27-amd64", "apt", sent.kernel_held, ("linux-image",),
                        "" if sent.kernel_held else sent.reason,
                    ).to_dict()  # fmt: skip
                verdict = (
                    None
                    if sent.verdict is None or not spec.tpm
                    else AttestationVerdict(sent.verdict, 1, "ef" * 32, "default",
                                            () if sent.verdict else (sent.reason or "refused",),
                                            sent.secure_boot)
                )  # fmt: skip
                report = HealthReport.from_dict(doc)
                await store.add_report(report, NOW - sent.age_s, "127.0.0.1", f"{i}-{n}", verdict)
    finally:
        await store.close()


async def _document(db: str, folder: Path) -> dict[str, object]:
    store = await open_store(db)
    try:
        found = await fleet_facts(store, NOW, ServerConfig(repo=folder, db=db))
    finally:
        await store.close()
    return report_document("fleet", found, default_catalog(), NOW, "ab" * 32, "ed25519")


def _expected(fleet: list[Spec]) -> tuple[Counter[str], int]:
    """Attestation results and rollbacks, counted from what was written."""
    results: Counter[str] = Counter()
    rollbacks = 0
    for spec in fleet:
        # Written oldest first (stable for equal ages): the last written is the newest.
        newest_first = sorted(spec.sent, key=lambda s: -s.age_s)[::-1]
        attested = [s for s in newest_first if s.verdict is not None and spec.tpm]
        if attested:
            results["passed" if attested[0].verdict else "failed"] += 1
        else:
            results["no-attested-report" if spec.tpm else "unattested"] += 1
        rollbacks += sum(1 for s in spec.sent if s.update == "rolled-back")
    return results, rollbacks


@settings(max_examples=30, deadline=None)
@given(fleet=FLEETS)
def test_a_report_of_any_fleet_renders_and_counts_what_the_store_holds(fleet: list[Spec]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db = f"sqlite://{folder / 'fleet.db'}"
        asyncio.run(_write(db, fleet))
        doc = asyncio.run(_document(db, folder))
        jsonschema.Draft202012Validator(json.loads(schema_text())).validate(doc)
        summary = doc["summary"]
        assert isinstance(summary, dict)
        results, rollbacks = _expected(fleet)
        assert summary["nodes"] == len(fleet)
        assert summary["attestation"] == {r: results.get(r, 0) for r in summary["attestation"]}
        assert summary["rollbacks"] == rollbacks
        fails = 0
        for counts in summary["controls"].values():
            assert sum(counts.values()) == len(fleet)
            fails += counts["fail"]
        assert len(doc["exceptions"]) == fails  # type: ignore[arg-type]

        files = {fmt: render(doc, fmt) for fmt in CONTENT_TYPES}
        assert json.loads(files["json"]) == json.loads(json.dumps(doc))
        rows = list(csv.DictReader(io.StringIO(files["csv"].decode(), newline="")))
        assert len(rows) == len(fleet)
        for control, counts in summary["controls"].items():
            found = Counter(row[f"{control} result"] for row in rows)
            assert {r: found.get(r, 0) for r in CONTROL_RESULTS} == counts
        html = files["html"].decode()
        assert all(f"node-{i:02}" in html for i in range(len(fleet)))
        (folder / "r.pdf").write_bytes(files["pdf"])
        text = subprocess.run(["pdftotext", str(folder / "r.pdf"), "-"], capture_output=True,
                              text=True, check=True).stdout  # fmt: skip
        assert "Page 1 of" in text and "Exceptions" in text
        assert all(f"node-{i:02}" in text for i in range(len(fleet)))
