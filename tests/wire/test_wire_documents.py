"""Every wire document against the OpenAPI document the real server serves.

Documents are generated from their declarations (``fleet.wire``), read with
their own ``from_dict``, and then each instance's ``to_dict`` must validate
against the component schema fetched from ``GET /v1/openapi.json`` of the live
app, and read back to an equal instance. The checks are shown to catch drift:
a mutated served schema, and a declaration whose writer no longer matches.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import importlib
import inspect
import json
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import urllib3
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fleet
from fleet import wire
from fleet.attestation import BANKS, AttestationEvidence, PcrSelection
from fleet.documents import WIRE_DOCUMENTS
from fleet.errors import InvalidDocument
from fleet.report import HealthReport
from tests.conftest import make_site
from tests.simnode import report_doc

# Fleet classes with from_dict and to_dict that are not wire documents, and why.
NOT_WIRE: dict[str, str] = {
    "fleet.driverlog.DriverEvent": "a signed entry of the node's own measurement log, never "
    "served: its digest and signature are computed, not declared",
    "fleet.manifest.BundleManifest": "rides in signed TUF metadata, not in the server's API; "
    "its reader tells an old bundle apart from a newer schema",
}

Json = Any


@pytest.fixture(scope="module")
def served(_template_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Json]:
    """The OpenAPI document as the real server serves it."""
    base = tmp_path_factory.mktemp("wire")
    for site in make_site(_template_repo, base, str(base / "s.db")):
        yield json.loads(urllib3.request("GET", f"{site.url}/v1/openapi.json").data)


def drift(cls: type[wire.Wire], openapi: Json, instance: wire.Wire) -> list[str]:
    """How ``instance`` (of ``cls``) disagrees with ``openapi``'s schema for it, or
    with its own reader; empty when it does not."""
    root = {"$ref": f"#/components/schemas/{cls.wire_name()}", "components": openapi["components"]}
    doc = json.loads(json.dumps(instance.to_dict()))
    problems = [
        f"schema: {error.json_path}: {error.message}"
        for error in jsonschema.Draft202012Validator(root).iter_errors(doc)
    ]
    try:
        again = cls.from_dict(doc)
    except InvalidDocument as exc:
        return [*problems, f"reader refuses what to_dict wrote: {exc}"]
    if again != instance:
        problems.append(f"round trip changed it: {instance!r} became {again!r}")
    return problems


def json_values(kind: wire.Kind) -> st.SearchStrategy[Json]:
    """JSON values the declaration ``kind`` describes."""
    if isinstance(kind, wire.Document):
        return _documents(kind)
    if isinstance(kind, wire.Ref):
        return st.deferred(lambda: documents_of(kind.cls))
    if isinstance(kind, wire.Text):
        if kind.choices is not None:
            return st.sampled_from(sorted(kind.choices))
        if kind.pattern is not None:
            return st.from_regex(kind.pattern, fullmatch=True).filter(
                lambda s: len(s) <= kind.max_len
            )
        return st.text(max_size=min(kind.max_len, 40))
    if isinstance(kind, wire.Choice):
        return st.sampled_from([member.value for member in kind.members])
    if isinstance(kind, wire.Integer):
        return st.integers(kind.minimum, kind.maximum)
    if isinstance(kind, wire.Number):
        return st.floats(kind.minimum, kind.maximum, allow_nan=False)
    if isinstance(kind, wire.Boolean):
        return st.booleans()
    if isinstance(kind, wire.Bytes):
        low, high = (kind.exact, kind.exact) if kind.exact else (0, min(kind.max_bytes, 48))
        return st.binary(min_size=low, max_size=high).map(lambda b: base64.b64encode(b).decode())
    if isinstance(kind, wire.Nullable):
        return st.none() | json_values(kind.inner)
    if isinstance(kind, wire.ListOf):
        return st.lists(
            json_values(kind.item), min_size=kind.min_items, max_size=min(kind.max_items, 3)
        )
    if isinstance(kind, wire.MapOf):
        return st.dictionaries(
            json_values(kind.keys),
            json_values(kind.values),
            min_size=kind.min_items,
            max_size=min(kind.max_items, 3),
        )
    if isinstance(kind, wire.Opaque):
        scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
        return st.dictionaries(st.text(max_size=10), scalars, max_size=min(kind.max_items, 3))
    if isinstance(kind, wire.Convert):
        return st.sampled_from(kind.examples)
    raise AssertionError(f"no strategy for {kind!r}: teach json_values this kind")


def _documents(document: wire.Document) -> st.SearchStrategy[Json]:
    required = {f.name: json_values(f.kind) for f in document.fields if f.required}
    if document.version is not None:
        required["schema"] = st.just(document.version)
    optional = {f.name: json_values(f.kind) for f in document.fields if not f.required}
    return st.fixed_dictionaries(required, optional=optional)


def documents_of(cls: type[wire.Wire]) -> st.SearchStrategy[Json]:
    """Documents of ``cls``: from its declaration, or where its dataclass checks a
    rule across fields that random documents would almost never meet, from
    ``ACROSS_FIELDS``."""
    across = ACROSS_FIELDS.get(cls)
    return across() if across is not None else json_values(cls.WIRE)


@st.composite
def _evidence(draw: st.DrawFn) -> Json:
    """Evidence whose PCR values are exactly the selected ones, each its bank's size,
    and whose log digest, when it sends the log, is the log's."""
    doc = draw(json_values(AttestationEvidence.WIRE))
    selection = draw(json_values(PcrSelection.WIRE))
    doc["selection"] = selection
    doc["pcrs"] = {
        bank: {
            str(pcr): draw(st.binary(min_size=BANKS[bank][1], max_size=BANKS[bank][1])).hex()
            for pcr in pcrs
        }
        for bank, pcrs in selection.items()
    }
    if doc["event_log"] is not None:
        log = base64.b64decode(doc["event_log"])
        doc["event_log_sha256"] = draw(st.sampled_from([None, hashlib.sha256(log).hexdigest()]))
    return doc


ACROSS_FIELDS: dict[type[wire.Wire], Callable[[], st.SearchStrategy[Json]]] = {
    AttestationEvidence: _evidence,
}


def instances(cls: type[wire.Wire]) -> st.SearchStrategy[wire.Wire | None]:
    """Instances of ``cls`` read from generated documents; None where the
    dataclass refuses one for a rule across fields (at least one way to name a
    GPU). The test draws again then, and hypothesis fails it when that happens
    too often to make instances."""

    def read(doc: Json) -> wire.Wire | None:
        try:
            return cls.from_dict(doc)
        except InvalidDocument:
            return None

    return documents_of(cls).map(read)


def _names(cls: type[Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@pytest.mark.parametrize("cls", WIRE_DOCUMENTS, ids=lambda c: c.__name__)
def test_documents_match_the_served_schema_and_their_reader(
    served: Json, cls: type[wire.Wire]
) -> None:
    @given(instance=instances(cls))
    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
    )
    def check(instance: wire.Wire | None) -> None:
        assume(instance is not None)
        assert instance is not None
        assert drift(cls, served, instance) == []

    check()


def test_the_server_serves_each_declaration(served: Json) -> None:
    components = served["components"]["schemas"]
    for cls in WIRE_DOCUMENTS:
        assert components[cls.wire_name()] == json.loads(json.dumps(cls.WIRE.schema())), cls


def test_every_fleet_document_is_registered() -> None:
    found = set()
    for module in pkgutil.iter_modules(fleet.__path__):
        loaded = importlib.import_module(f"fleet.{module.name}")
        for _, cls in inspect.getmembers(loaded, inspect.isclass):
            if cls.__module__ != loaded.__name__ or cls is wire.Wire:
                continue
            if {"from_dict", "to_dict"} <= set(dir(cls)):
                found.add(cls)
    registered = {_names(c) for c in WIRE_DOCUMENTS}
    assert {_names(c) for c in found} - set(NOT_WIRE) == registered
    assert all(issubclass(c, wire.Wire) for c in WIRE_DOCUMENTS)


def _report() -> HealthReport:
    return HealthReport.from_dict(report_doc("n1", driver="580.95.05"))


def test_a_drifted_served_schema_is_caught(served: Json) -> None:
    assert drift(HealthReport, served, _report()) == []
    stale = copy.deepcopy(served)
    report_schema = stale["components"]["schemas"]["HealthReport"]
    report_schema["properties"]["driver_version"] = {"type": "string", "pattern": r"^\d+$"}
    assert any("driver_version" in p for p in drift(HealthReport, stale, _report()))
    del report_schema["properties"]["reason"]
    assert any("reason" in p for p in drift(HealthReport, stale, _report()))


def test_a_drifted_declaration_is_caught(served: Json) -> None:
    """A declaration that no longer matches the served schema, and a writer its
    reader does not invert: both are reported."""
    widened = tuple(
        wire.Field("reason", wire.Text(max_len=4096)) if f.name == "reason" else f
        for f in HealthReport.WIRE.fields
    )

    @dataclass(frozen=True)
    class WidenedReport(HealthReport):
        WIRE = wire.Document(*widened, name="HealthReport", version=1)

    long = WidenedReport.from_dict({**report_doc("n1"), "reason": "x" * 2000})
    assert any("reason" in p and "too long" in p for p in drift(WidenedReport, served, long))

    @dataclass(frozen=True)
    class Shouting(wire.Wire):
        text: str
        WIRE = wire.Document(
            wire.Field(
                "text",
                wire.Convert(wire.Text(), decode=str, encode=str.upper, examples=("quiet",)),
            ),
            name="Finding",
        )

    problems = drift(Shouting, served, Shouting("quiet"))
    assert any("round trip changed it" in p for p in problems), problems
    assert any("'rule' is a required property" in p for p in problems), problems
