"""Kept compliance reports: made on request or on the schedule, every format signed,
logged, listed, fetched with its signature, and trended against the one before."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from server.http import Services
from server.report_runs import scheduled_report
from server.store import KeptFile, KeptReport
from tests.cli.test_errors import assert_one_line_error, gpuward
from tests.conftest import Fleet, make_site
from tests.netutil import wait_for
from tests.report.test_report import _key, assert_verifies_until_a_byte_changes
from tests.simnode import FakeClock, operator_get, operator_post

DAY = 86_400


def _flags(fleet: Fleet, tmp_path: Path, role: str) -> tuple[str, ...]:
    token = tmp_path / f"{role}.token"
    if not token.exists():
        token.write_text(fleet.token(role))
    return ("--server", fleet.url, "--token-file", str(token))


def _keep(fleet: Fleet, tmp_path: Path) -> str:
    done = gpuward("report", "keep", "fleet", *_flags(fleet, tmp_path, "operator"))
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[1].rstrip(":")


def _kept(fleet: Fleet, tmp_path: Path) -> list[dict[str, Any]]:
    done = gpuward("report", "kept", "--json", *_flags(fleet, tmp_path, "viewer"))
    assert done.returncode == 0, done.stderr
    reports: list[dict[str, Any]] = json.loads(done.stdout)["reports"]
    return reports


def _log_entries(fleet: Fleet) -> list[dict[str, Any]]:
    response = operator_get(fleet.url, "/v1/log/entries?start=0", fleet.token("viewer"))
    assert response.status == 200, response.data
    # Each entry as the log hashes it: its canonical JSON.
    return [json.loads(entry) for entry in json.loads(response.data)["entries"]]


def test_a_kept_report_is_signed_logged_and_trended_against_the_last(
    fleet: Fleet, tmp_path: Path
) -> None:
    legacy = fleet.node("legacy")
    assert legacy.report(driver="470.256.02", bundle="drivers/R470/x.bundle").status == 202
    assert fleet.node("current").report(driver="580.65.06").status == 202
    first = _keep(fleet, tmp_path)

    [listed] = _kept(fleet, tmp_path)
    assert listed["report_id"] == first
    assert listed["made_by"] == "test"  # the operator token's name
    assert sorted(f["format"] for f in listed["files"]) == ["csv", "html", "json", "pdf"]
    out = tmp_path / "first"
    out.mkdir()
    done = gpuward("report", "fetch", first, "-o", str(out), *_flags(fleet, tmp_path, "viewer"))
    assert done.returncode == 0, done.stderr
    key = _key(fleet)
    logged = {e["sha256"]: e for e in _log_entries(fleet) if e["kind"] == "compliance-report"}
    for file in listed["files"]:
        path = out / file["name"]
        body = path.read_bytes()
        assert len(body) == file["size"]
        assert hashlib.sha256(body).hexdigest() == file["sha256"]
        # Each file is in the audit history, naming its kept report.
        assert logged[file["sha256"]]["detail"]["report"] == first
        assert logged[file["sha256"]]["detail"]["format"] == file["format"]
        assert_verifies_until_a_byte_changes(key, path)
    document = json.loads((out / _name(listed, "json")).read_bytes())
    assert document["trend"]["previous"] is None

    # The legacy node moves to a supported branch; the next report says what changed.
    fleet.clock.advance(DAY)
    assert legacy.report(driver="580.65.06").status == 202
    second = _keep(fleet, tmp_path)
    assert [r["report_id"] for r in _kept(fleet, tmp_path)] == [second, first]
    again = tmp_path / "second"
    again.mkdir()
    for fmt in ("json", "pdf"):
        done = gpuward("report", "fetch", second, "--format", fmt, "-o", str(again),
                       *_flags(fleet, tmp_path, "viewer"))  # fmt: skip
        assert done.returncode == 0, done.stderr
    [newest, _] = _kept(fleet, tmp_path)
    trend = json.loads((again / _name(newest, "json")).read_bytes())["trend"]
    assert trend["previous"]["report_id"] == first
    assert trend["nodes"] == 0
    assert trend["controls"]["driver-supported"] == {"pass": 1, "fail": -1, "unknown": 0}
    text = subprocess.run(
        ["pdftotext", "-layout", str(again / _name(newest, "pdf")), "-"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"against report {first}" in text
    assert "pass +1, fail -1, unknown +0" in text


def _name(report: dict[str, Any], fmt: str) -> str:
    return str(next(f["name"] for f in report["files"] if f["format"] == fmt))


def test_keeping_needs_an_operator_and_a_report_id_names_nothing_else(
    fleet: Fleet, tmp_path: Path
) -> None:
    viewer = fleet.token("viewer")
    refused = operator_post(fleet.url, "/v1/reports/fleet", viewer)
    assert refused.status == 403, refused.data
    assert_one_line_error(
        gpuward("report", "keep", "fleet", *_flags(fleet, tmp_path, "viewer")), "role"
    )
    assert (
        operator_post(fleet.url, "/v1/reports/nodes/nobody", fleet.token("operator")).status == 404
    )
    kept = operator_post(fleet.url, "/v1/reports/fleet", fleet.token("operator"))
    assert kept.status == 201, kept.data
    report_id = json.loads(kept.data)["report_id"]
    for path in (
        "/v1/reports/kept/..%2F..%2Fetc%2Fpasswd/json",
        f"/v1/reports/kept/{report_id}%00/json",
        f"/v1/reports/kept/{report_id}/exe",
        f"/v1/reports/kept/{report_id[:-1]}{'1' if report_id.endswith('0') else '0'}/json",
    ):
        response = operator_get(fleet.url, path, viewer)
        assert response.status == 404, (path, response.data)
        assert "error" in json.loads(response.data)
    for query in ("scope=everything", "limit=0", "limit=abc", "limit=99999999999999999999"):
        response = operator_get(fleet.url, f"/v1/reports/kept?{query}", viewer)
        assert response.status == 400, (query, response.data)
    assert operator_get(fleet.url, "/v1/reports/kept", None).status == 401
    assert_one_line_error(
        gpuward("report", "fetch", "../../etc/passwd", *_flags(fleet, tmp_path, "viewer")),
        "is not a report id",
    )


def _scheduled(fleet: Fleet, schedule: str, concurrent: int = 1) -> list[KeptReport | None]:
    """The server's scheduled duty run ``concurrent`` times at once, as replicas would."""

    async def run(svc: Services) -> list[KeptReport | None]:
        config = dataclasses.replace(svc.config, report_schedule=schedule, reports_kept=2)
        scheduled = dataclasses.replace(svc, config=config)
        return list(await asyncio.gather(*(scheduled_report(scheduled) for _ in range(concurrent))))

    return fleet.site.server.call(run)


@pytest.mark.parametrize("schedule", ["daily", "weekly"])
def test_the_schedule_keeps_one_report_a_period_and_forgets_the_oldest(
    fleet: Fleet, tmp_path: Path, schedule: str
) -> None:
    assert fleet.node("n1").report(driver="580.65.06").status == 202
    # Replicas racing for the same day keep one report between them.
    made = [r for r in _scheduled(fleet, schedule, concurrent=3) if r is not None]
    assert len(made) == 1 and made[0].made_by == "schedule"
    assert _scheduled(fleet, schedule) == [None]  # the period has its report
    period = DAY if schedule == "daily" else 7 * DAY
    ids = [made[0].report_id]
    for _ in range(2):
        fleet.clock.advance(period)
        [next_one] = _scheduled(fleet, schedule)
        assert next_one is not None
        ids.append(next_one.report_id)
    # reports_kept = 2: the first is forgotten, with its files.
    assert [r["report_id"] for r in _kept(fleet, tmp_path)] == ids[:0:-1]
    gone = operator_get(fleet.url, f"/v1/reports/kept/{ids[0]}/pdf", fleet.token("viewer"))
    assert gone.status == 404
    assert _scheduled(fleet, "off") == [None]


def test_a_server_on_a_schedule_keeps_its_report_as_it_starts(
    _template_repo: Path, tmp_path: Path
) -> None:
    for site in make_site(_template_repo, tmp_path, f"sqlite://{tmp_path / 'fleet.db'}",
                          FakeClock(), report_schedule="weekly"):  # fmt: skip
        kept = functools.partial(_listed, site.url, site.server.issue_token("viewer"))
        [report] = wait_for("the week's scheduled report", kept, timeout_s=120)
        assert report["made_by"] == "schedule"
        assert report["report_id"].startswith("fleet-20270115T")
        # What the GpuwardScheduledReportMissing alert watches.
        scraped = operator_get(site.url, "/metrics", site.server.issue_token("viewer"))
        assert scraped.status == 200, scraped.data
        series = dict(
            line.rsplit(" ", 1)
            for line in scraped.data.decode().splitlines()
            if line.startswith("gpuward_compliance_report_")
        )
        assert float(series["gpuward_compliance_report_schedule_seconds"]) == 7 * DAY
        last = float(series["gpuward_compliance_report_last_scheduled_timestamp_seconds"])
        assert last == report["generated_at"]


def _listed(url: str, token: str) -> list[dict[str, Any]]:
    response = operator_get(url, "/v1/reports/kept", token)
    assert response.status == 200, response.data
    reports: list[dict[str, Any]] = json.loads(response.data)["reports"]
    return reports


def test_fetch_writes_only_plain_file_names_whatever_the_server_says(
    fleet: Fleet, tmp_path: Path
) -> None:
    body = b"%PDF-1.4 not really"
    hostile = KeptReport(
        "fleet-20270115T080000Z-0badc0de", "fleet", "fleet", 1_800_000_000, "someone", "ab" * 32,
        "{}", (KeptFile("pdf", "../../escaped.pdf", hashlib.sha256(body).hexdigest(), len(body),
                        b"sig"),),
    )  # fmt: skip

    async def plant(svc: Services) -> None:
        assert await svc.store.keep_report(hostile, {"pdf": body})

    fleet.site.server.call(plant)
    out = tmp_path / "out" / "deep"
    out.mkdir(parents=True)
    refused = gpuward("report", "fetch", hostile.report_id, "-o", str(out),
                      *_flags(fleet, tmp_path, "viewer"))  # fmt: skip
    assert_one_line_error(refused, "not a file name")
    assert not (tmp_path / "escaped.pdf").exists() and list(out.iterdir()) == []
