"""The attestation verdict kept with a report: written and read by one declaration,
and a stored verdict that is not one is refused naming where it was read."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fleet.attestation_verdict import AttestationVerdict, AttestedDriver
from fleet.driverlog import DriverEvent
from fleet.errors import InvalidDocument

DRIVER = AttestedDriver(15, 3, 7, "drivers/r580.bundle", "ab" * 32, "580.95.05", 1_700_000_000)
WHERE = "the verdict on node n1's latest report"


def verdicts() -> list[AttestationVerdict]:
    return [
        AttestationVerdict(True, 7, "ef" * 32, "pool canary", (), True, DRIVER),
        AttestationVerdict(False, 0, None, None, ("no event log", "event 4: \udc80"), None, None),
        AttestationVerdict(
            False, 2**32 - 1, "ef" * 32, "default", ("Secure Boot is not on",), False
        ),
    ]


@pytest.mark.parametrize("verdict", verdicts())
def test_a_verdict_reads_back_as_it_was_written(verdict: AttestationVerdict) -> None:
    assert AttestationVerdict.from_dict(verdict.to_dict(), WHERE) == verdict
    assert AttestationVerdict.from_json(verdict.to_json(), WHERE) == verdict


def test_the_driver_kept_is_the_measured_event_without_its_signature() -> None:
    event = DriverEvent(15, "drivers/r580.bundle", "ab" * 32, "580.95.05", 1_700_000_000,
                        seq=3, reset_count=7, signature="cd" * 64)  # fmt: skip
    assert AttestedDriver.of(event) == DRIVER
    # The form shown since the driver was first measured: the event, and when.
    assert DRIVER.to_dict() == {**event.measured(), "measured_at": event.measured_at}


def test_a_verdict_written_before_policies_secure_boot_and_the_driver_reads_as_unjudged() -> None:
    old = {"passed": True, "reset_count": 3, "event_log_sha256": "ef" * 32, "reasons": []}
    assert AttestationVerdict.from_json(json.dumps(old), WHERE) == AttestationVerdict(
        True, 3, "ef" * 32, None, (), None, None
    )


def _valid() -> dict[str, Any]:
    return verdicts()[0].to_dict()


HOSTILE: list[tuple[str, object, str]] = [
    ("not JSON", "{'passed': true", "not JSON"),
    ("a list", [], "expected a JSON object"),
    ("an unknown field", {**_valid(), "admin": True}, "unknown field(s) admin"),
    ("passed missing", {k: v for k, v in _valid().items() if k != "passed"}, "'passed'"),
    ("passed as text", {**_valid(), "passed": "true"}, "'passed' must be true or false"),
    ("a negative reset count", {**_valid(), "reset_count": -1}, "'reset_count'"),
    ("a log digest not hex", {**_valid(), "event_log_sha256": "z" * 64}, "'event_log_sha256'"),
    ("reasons as text", {**_valid(), "reasons": "none"}, "'reasons' must be a list"),
    ("a reason not text", {**_valid(), "reasons": [{"why": 1}]}, "'reasons[0]' must be a string"),
    ("secure_boot as a number", {**_valid(), "secure_boot": 1}, "'secure_boot'"),
    ("a driver as text", {**_valid(), "driver": "r580"}, f"{WHERE}.driver: expected a JSON"),
    (
        "a key event for the driver",
        {**_valid(), "driver": {**DRIVER.to_dict(), "kind": "key"}},
        f"{WHERE}.driver: 'kind' must be one of driver",
    ),
    (
        "a driver without its digest",
        {**_valid(), "driver": {k: v for k, v in DRIVER.to_dict().items() if k != "sha256"}},
        "missing field 'sha256'",
    ),
    (
        "a driver on a PCR that does not exist",
        {**_valid(), "driver": {**DRIVER.to_dict(), "pcr": 24}},
        "'pcr' must be between 0 and 23",
    ),
]


@pytest.mark.parametrize(("stored", "message"), [(s, m) for _, s, m in HOSTILE],
                         ids=[name for name, _, _ in HOSTILE])  # fmt: skip
def test_a_stored_verdict_that_is_not_one_is_refused_naming_where(
    stored: object, message: str
) -> None:
    text = stored if isinstance(stored, str) else json.dumps(stored)
    with pytest.raises(
        InvalidDocument, match=r"^the verdict on node n1's latest report"
    ) as refused:
        AttestationVerdict.from_json(text, WHERE)
    assert message in str(refused.value)
