"""The advisory feed in the catalog: NVIDIA's bulletins as transcribed, what is open
on which driver, the fleet's counts, and a malformed feed refused by field."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from typing import Any

import pytest

from fleet.advisories import AFFECTED, BRANCH_NOT_LISTED, AdvisoryFeed
from fleet.catalog import default_catalog, load_catalog
from fleet.errors import InvalidDocument
from fleet.versions import DriverVersion
from tests.compat.test_catalog import _DELETE, _set

RAW = resources.files("fleet").joinpath("data/catalog.json").read_bytes()
GOOD: dict[str, Any] = json.loads(RAW)


def _feed() -> AdvisoryFeed:
    feed = default_catalog().advisories
    assert feed is not None
    return feed


def _open(driver: str) -> dict[str, tuple[str, str | None]]:
    """CVE -> (status, fixed) of what is open on ``driver``."""
    return {a.cve: (a.status, a.fixed) for a in _feed().open_for(DriverVersion.parse(driver))}


def test_every_entry_cites_its_bulletin() -> None:
    feed = _feed()
    assert [b.id for b in feed.bulletins] == ["5614", "5630", "5670", "5703", "5747", "5821"]
    for bulletin in feed.bulletins:
        assert bulletin.url == f"https://nvidia.custhelp.com/app/answers/detail/a_id/{bulletin.id}"
        assert re.fullmatch(
            rf"https://github\.com/NVIDIA/product-security/blob/main/20\d\d/{bulletin.id}/"
            rf"{bulletin.id}\.md",
            bulletin.source,
        )
        assert bulletin.title.endswith(bulletin.published.strftime("%B %Y"))
    # What a node is shown names the bulletin that says so.
    for advisory in _feed().open_for(DriverVersion.parse("470.256.02")):
        assert advisory.bulletin.startswith("https://nvidia.custhelp.com/app/answers/detail/a_id/")
    assert "Tesla" in feed.about and "CVE-2025-23280" in feed.about


@pytest.mark.parametrize(
    ("cve", "score", "severity", "fixed"),
    [
        ("CVE-2024-0150", 7.1, "high",
         {"R535": "535.230.02", "R550": "550.144.03", "R570": "570.86.15"}),
        ("CVE-2024-53869", 5.5, "medium", {"R550": "550.144.03", "R570": "570.86.15"}),
        ("CVE-2024-0149", 3.3, "low",
         {"R535": "535.230.02", "R550": "550.144.03", "R570": "570.86.15"}),
        ("CVE-2025-23244", 7.8, "high", {"R535": "535.247.01", "R550": "550.163.01",
                                        "R570": "570.133.07", "R575": "575.51.02"}),
        ("CVE-2025-23279", 7.0, "high", {"R570": "570.172.08"}),
        ("CVE-2025-23286", 4.4, "medium", {"R535": "535.261.03"}),
        ("CVE-2025-23280", 7.0, "high",
         {"R535": "535.274.02", "R570": "570.195.03", "R580": "580.95.05"}),
        ("CVE-2025-33219", 7.8, "high", {"R535": "535.288.01", "R570": "570.211.01",
                                        "R580": "580.126.09", "R590": "590.48.01"}),
        ("CVE-2026-24187", 8.8, "high",
         {"R535": "535.309.01", "R580": "580.159.03", "R595": "595.71.05"}),
        ("CVE-2026-24193", 7.8, "high", {"R535": "535.309.01", "R580": "580.159.03"}),
        ("CVE-2026-24198", 5.6, "medium", {"R580": "580.159.03", "R595": "595.71.05"}),
    ],
)  # fmt: skip
def test_bulletin_rows_as_nvidia_published_them(
    cve: str, score: float, severity: str, fixed: dict[str, str]
) -> None:
    [advisory] = [a for b in _feed().bulletins for a in b.advisories if a.cve == cve]
    assert (advisory.score, advisory.severity) == (score, severity)
    assert {b: v.text for b, v in advisory.fixed} == fixed


def test_the_feed_agrees_with_the_catalogs_facts() -> None:
    catalog = default_catalog()
    fixes = {
        (b, v.text)
        for bulletin in _feed().bulletins
        for a in bulletin.advisories
        for b, v in a.fixed
    }
    assert {b for b, _ in fixes} <= {b.name for b in catalog.branches}
    # R570's and R590's first releases fixed the January 2025 and 2026 bulletins.
    assert ("R570", catalog.require_branch("R570").first_release) in fixes
    assert ("R590", catalog.require_branch("R590").first_release) in fixes
    # The April 2025 fix is R550's last release; 580.95.05 is CUDA 13.0 U2's driver.
    assert ("R550", "550.163.01") in fixes and "550.163.01" in str(
        catalog.require_branch("R550").note
    )
    assert catalog.min_driver_for_cuda(
        next(r.version for r in catalog.cuda_releases if str(r.version) == "13.0 U2")
    ) == DriverVersion.parse("580.95.05")


def test_a_driver_before_a_listed_fix_is_affected() -> None:
    # Debian bookworm-backports' 535.216.03, which the packaging tests install.
    found = _open("535.216.03")
    assert found["CVE-2024-0150"] == (AFFECTED, "535.230.02")
    assert found["CVE-2025-23286"] == (AFFECTED, "535.261.03")
    assert "CVE-2024-53869" not in found  # January 2025 evaluated R535 and did not list it
    assert "CVE-2025-23279" not in found  # July 2025 lists R570 only for the installer race
    assert "CVE-2026-24198" not in found
    assert all(status == AFFECTED for status, _ in found.values())
    exposure = default_catalog().exposure("535.216.03")
    assert exposure is not None
    assert exposure.fixed_by == "535.309.01"  # the last fix in R535 closes them all
    assert exposure.open[0].cve == "CVE-2026-24187"  # 8.8, the worst first
    assert exposure.worst == "high"
    assert exposure.catalog_version == 2


def test_each_fix_closes_what_it_fixes() -> None:
    assert set(_open("535.288.01")) == {
        a.cve for a in _feed().bulletins[-1].advisories if a.fixed_in("R535") is not None
    }
    assert _open("535.309.01") == {}
    assert set(_open("580.126.09")) == {
        a.cve for a in _feed().bulletins[-1].advisories if a.fixed_in("R580") is not None
    }
    assert _open("595.71.05") == {}
    assert _open("610.57.04") == {}  # newer than every branch the bulletins list


def test_an_older_unlisted_branch_might_be_affected() -> None:
    r550 = _open("550.163.01")  # R550's last release fixed what listed R550, then it ended
    assert "CVE-2025-23244" not in r550 and "CVE-2024-0150" not in r550
    assert r550["CVE-2025-23280"] == (BRANCH_NOT_LISTED, None)
    exposure = default_catalog().exposure("550.163.01")
    assert exposure is not None and exposure.fixed_by is None  # no fix in the branch
    # R590 is older than R595, which May 2026 lists, and is not listed itself.
    assert set(_open("590.48.01")) == {a.cve for a in _feed().bulletins[-1].advisories}
    assert {s for s, _ in _open("590.48.01").values()} == {BRANCH_NOT_LISTED}
    # R565 sat between R550 and R570 in January 2025, unlisted.
    assert _open("565.77")["CVE-2024-0150"] == (BRANCH_NOT_LISTED, None)
    assert len(_open("470.256.02")) == sum(len(b.advisories) for b in _feed().bulletins)


def test_fleet_counts_by_worst_severity_and_cve() -> None:
    fleet = _feed().fleet(
        {"535.216.03": 3, "580.95.05": 2, "595.71.05": 1, "550.163.01": 1, "none": 4}, 2
    )
    assert (fleet.nodes, fleet.exposed, fleet.high, fleet.medium, fleet.critical) == (7, 6, 6, 0, 0)
    assert fleet.bulletins == 6 and fleet.catalog_version == 2
    by_cve = {c.cve: c for c in fleet.cves}
    worst = by_cve["CVE-2026-24187"]
    assert (worst.nodes, worst.affected, worst.branch_not_listed) == (6, 5, 1)
    assert worst.drivers == ("535.216.03", "550.163.01", "580.95.05")
    assert fleet.cves[0].cve == "CVE-2026-24187"  # the highest score leads
    assert "CVE-2024-53869" not in by_cve  # open on none of these drivers
    empty = _feed().fleet({"none": 3}, 2)
    assert (empty.nodes, empty.exposed, empty.cves) == (0, 0, ())


def test_a_catalog_without_the_feed_still_reads() -> None:
    old = copy.deepcopy(GOOD)
    del old["advisories"]
    catalog = load_catalog(json.dumps(old).encode())
    assert catalog.advisories is None
    assert catalog.exposure("535.216.03") is None  # unknown, not clean
    assert catalog.branches == default_catalog().branches


def _change(path: str, value: Any) -> Any:
    """A change to the catalog's advisory feed, at ``path`` below it."""
    return _set(f"advisories.{path}", value)


_B0 = r"catalog\.advisories\.bulletins\[0\]"
_C0 = rf"{_B0}\.cves\[0\]"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_change("schema", 2), "unsupported advisories schema"),
        (_change("extra", 1), r"catalog\.advisories: unknown field"),
        (_change("bulletins", {}), "'bulletins' must be a list"),
        (_change("bulletins.0.url", "javascript:alert(1)"), rf"{_B0}: 'url' has an invalid"),
        (_change("bulletins.0.url", "http://nvidia.custhelp.com/x"), rf"{_B0}: 'url' has an"),
        (_change("bulletins.0.source", _DELETE), rf"{_B0}: missing field 'source'"),
        (_change("bulletins.0.id", "56<b>"), rf"{_B0}: 'id' has an invalid value"),
        (_change("bulletins.1.id", "5614"), r"bulletins\[1\]: bulletin 5614 twice"),
        (_change("bulletins.0.published", "2025-02-30"), "'published' is not a real date"),
        (_change("bulletins.0.updated", "2025-01-01"), "'updated' 2025-01-01 is before"),
        (_change("bulletins.0.cves", []), rf"{_B0}: 'cves' is empty"),
        (_change("bulletins.0.cves.0.cve", "CVE-24-1"), rf"{_C0}: 'cve' has an invalid"),
        (_change("bulletins.0.cves.0.score", "7.1"), rf"{_C0}: 'score' must be a number"),
        (_change("bulletins.0.cves.0.score", 11), rf"{_C0}: 'score' must be between"),
        (_change("bulletins.0.cves.0.score", 7.15), rf"{_C0}: 'score' 7.15 has more than one"),
        (_change("bulletins.0.cves.0.severity", "critical"), rf"{_C0}: 'severity' critical "
         "contradicts 'score' 7.1"),
        (_change("bulletins.0.cves.0.severity", "urgent"), rf"{_C0}: 'severity' must be one of"),
        (_change("bulletins.0.cves.0.vector", "AV:L"), rf"{_C0}: 'vector' has an invalid"),
        (_change("bulletins.0.cves.0.cwe", "787"), rf"{_C0}: 'cwe' has an invalid"),
        (_change("bulletins.0.cves.0.summary", "x" * 513), rf"{_C0}: 'summary' is longer"),
        (_change("bulletins.0.cves.0.fixed", {}), rf"{_C0}: 'fixed' must map 1 to 32"),
        (_change("bulletins.0.cves.0.fixed", ["535.230.02"]), rf"{_C0}: 'fixed' must map"),
        (_change("bulletins.0.cves.0.fixed.R535", "550.144.03"),
         rf"{_C0}: 'fixed'\.R535 is 550\.144\.03, a release of R550"),
        (_change("bulletins.0.cves.0.fixed.R535", 535), rf"{_C0}: 'fixed'\.R535 must be a driver"),
        (_change("bulletins.0.cves.0.fixed.R999", "999.1.1"),
         rf"{_C0}: 'fixed' names R999, which is not among the catalog's branches"),
        (_change("bulletins.0.cves.0.fixed.535", "535.1.1"),
         rf"{_C0}: 'fixed' has an invalid branch '535'"),
        (_change("bulletins.1.cves.0.cve", "CVE-2024-0150"),
         r"bulletins\[1\]: CVE-2024-0150 is already in another bulletin"),
    ],
)  # fmt: skip
def test_a_malformed_feed_is_refused_naming_the_field(change: Any, message: str) -> None:
    doc = copy.deepcopy(GOOD)
    change(doc)
    with pytest.raises(InvalidDocument, match=message):
        load_catalog(json.dumps(doc).encode())
