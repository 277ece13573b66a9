"""Wire documents, declared once.

A wire document is a frozen dataclass whose JSON form crosses a trust
boundary: reports and evidence from nodes, enrollment messages, rollout
records. Each one states its fields once, as a ``Document`` of ``Field``\\ s
whose kinds (``Text``, ``Integer``, ``ListOf``, ``Ref`` ...) carry the bounds,
and from that one declaration come the three things that used to be written by
hand and drifted apart:

* the strict reader (``from_dict``): unknown fields, wrong types, oversized
  strings and lists are refused with a message naming the field, as
  ``fleet.schema.Reader`` words them;
* the writer (``to_dict``);
* the JSON Schema the server publishes in its OpenAPI document
  (``server.openapi``).

A class opts in by deriving from ``Wire`` and setting ``WIRE``; the registry of
every wire document is ``fleet.documents.WIRE_DOCUMENTS``. Checks that span
fields (a report's outcome, a PCR selection's order) stay in the dataclass's
``__post_init__``: the reader runs them by constructing it, and names the
document in their message.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Self

from fleet.errors import InvalidDocument
from fleet.schema import MAX_STRING

_REF = "#/components/schemas/"
MAX_INT = 2**63 - 1


def _name(where: str, key: str | None) -> str:
    """How a message names a value: the field within its object, or the object itself."""
    return f"{where}: {key!r}" if key is not None else f"{where}:"


class Kind:
    """One JSON value's type and bounds: how to read it, write it and describe it."""

    def read(self, value: object, where: str, key: str | None) -> Any:
        """The Python value of ``value``, checked; ``key`` names it inside ``where``."""
        raise NotImplementedError

    def write(self, value: Any) -> Any:
        """The JSON value of ``value``."""
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        """The JSON Schema (draft 2020-12, as OpenAPI 3.1 uses) of the JSON value."""
        raise NotImplementedError


def _ecma(pattern: re.Pattern[str]) -> str:
    """A full-match Python pattern as an anchored JSON Schema pattern."""
    return f"^(?:{pattern.pattern})$"


@dataclasses.dataclass(frozen=True)
class Text(Kind):
    max_len: int = MAX_STRING
    pattern: re.Pattern[str] | None = None
    choices: frozenset[str] | None = None

    def read(self, value: object, where: str, key: str | None) -> str:
        if not isinstance(value, str):
            raise InvalidDocument(f"{_name(where, key)} must be a string")
        if len(value) > self.max_len:
            raise InvalidDocument(f"{_name(where, key)} is longer than {self.max_len} characters")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise InvalidDocument(f"{_name(where, key)} has an invalid value {value[:80]!r}")
        if self.choices is not None and value not in self.choices:
            raise InvalidDocument(
                f"{_name(where, key)} must be one of {', '.join(sorted(self.choices))}"
            )
        return value

    def write(self, value: Any) -> Any:
        return value

    def schema(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"type": "string", "enum": sorted(self.choices)}
        doc: dict[str, Any] = {"type": "string", "maxLength": self.max_len}
        if self.pattern is not None:
            doc["pattern"] = _ecma(self.pattern)
        return doc


@dataclasses.dataclass(frozen=True)
class Choice(Kind):
    """One value of a string enum, read as the enum member."""

    members: type[enum.StrEnum]

    @functools.cached_property
    def _text(self) -> Text:
        return Text(choices=frozenset(member.value for member in self.members))

    def read(self, value: object, where: str, key: str | None) -> enum.StrEnum:
        return self.members(self._text.read(value, where, key))

    def write(self, value: Any) -> Any:
        return str(value.value)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": [member.value for member in self.members]}


@dataclasses.dataclass(frozen=True)
class Integer(Kind):
    minimum: int = 0
    maximum: int = MAX_INT

    def read(self, value: object, where: str, key: str | None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidDocument(f"{_name(where, key)} must be an integer")
        if not self.minimum <= value <= self.maximum:
            raise InvalidDocument(
                f"{_name(where, key)} must be between {self.minimum} and {self.maximum}"
            )
        return value

    def write(self, value: Any) -> Any:
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}


@dataclasses.dataclass(frozen=True)
class Number(Kind):
    minimum: float = 0.0
    maximum: float = 1e18

    def read(self, value: object, where: str, key: str | None) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidDocument(f"{_name(where, key)} must be a number")
        if not self.minimum <= value <= self.maximum:  # also refuses NaN
            raise InvalidDocument(
                f"{_name(where, key)} must be between {self.minimum} and {self.maximum}"
            )
        return float(value)

    def write(self, value: Any) -> Any:
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "number", "minimum": self.minimum, "maximum": self.maximum}


@dataclasses.dataclass(frozen=True)
class Boolean(Kind):
    def read(self, value: object, where: str, key: str | None) -> bool:
        if not isinstance(value, bool):
            raise InvalidDocument(f"{_name(where, key)} must be true or false")
        return value

    def write(self, value: Any) -> Any:
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


@dataclasses.dataclass(frozen=True)
class Bytes(Kind):
    """Bytes as standard base64, bounded before decoding."""

    max_bytes: int
    exact: int | None = None
    description: str = ""

    @property
    def max_len(self) -> int:
        return 4 * ((self.max_bytes + 2) // 3)

    @functools.cached_property
    def _text(self) -> Text:
        return Text(max_len=self.max_len)

    def read(self, value: object, where: str, key: str | None) -> bytes:
        text = self._text.read(value, where, key)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidDocument(f"{_name(where, key)} is not valid base64") from None
        if self.exact is not None and len(data) != self.exact:
            raise InvalidDocument(
                f"{_name(where, key)} must be {self.exact} bytes, not {len(data)}"
            )
        if len(data) > self.max_bytes:
            raise InvalidDocument(f"{_name(where, key)} is longer than {self.max_bytes} bytes")
        return data

    def write(self, value: Any) -> Any:
        return base64.b64encode(value).decode("ascii")

    def schema(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": "string",
            "contentEncoding": "base64",
            "pattern": _ecma(_BASE64),
            "maxLength": self.max_len,
        }
        if self.exact is not None:
            doc["minLength"] = doc["maxLength"] = 4 * ((self.exact + 2) // 3)
        if self.description:
            doc["description"] = self.description
        return doc


@dataclasses.dataclass(frozen=True)
class Nullable(Kind):
    """``inner``, or null (read as None)."""

    inner: Kind

    def read(self, value: object, where: str, key: str | None) -> Any:
        return None if value is None else self.inner.read(value, where, key)

    def write(self, value: Any) -> Any:
        return None if value is None else self.inner.write(value)

    def schema(self) -> dict[str, Any]:
        inner = self.inner.schema()
        if isinstance(inner.get("type"), str) and "enum" not in inner:
            return {**inner, "type": [inner["type"], "null"]}
        return {"anyOf": [inner, {"type": "null"}]}


@dataclasses.dataclass(frozen=True)
class ListOf(Kind):
    """A bounded JSON list, read as a tuple."""

    item: Kind
    max_items: int
    min_items: int = 0

    def read(self, value: object, where: str, key: str | None) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise InvalidDocument(f"{_name(where, key)} must be a list")
        if len(value) > self.max_items:
            raise InvalidDocument(f"{_name(where, key)} has more than {self.max_items} items")
        if len(value) < self.min_items:
            raise InvalidDocument(f"{_name(where, key)} needs at least {self.min_items} item(s)")
        if not value:  # most lists of a report (a GPU's problems, its findings) are empty
            return ()
        read, prefix = self.item.read, key or ""
        return tuple([read(item, where, f"{prefix}[{i}]") for i, item in enumerate(value)])

    def write(self, value: Any) -> Any:
        return [self.item.write(item) for item in value]

    def schema(self) -> dict[str, Any]:
        doc = {"type": "array", "maxItems": self.max_items, "items": self.item.schema()}
        if self.min_items:
            doc["minItems"] = self.min_items
        return doc


@dataclasses.dataclass(frozen=True)
class MapOf(Kind):
    """A JSON object used as a map: bounded keys, values of one kind; read as a dict."""

    keys: Text
    values: Kind
    max_items: int
    min_items: int = 0

    def read(self, value: object, where: str, key: str | None) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise InvalidDocument(f"{_name(where, key)} must be a JSON object")
        if not self.min_items <= len(value) <= self.max_items:
            raise InvalidDocument(
                f"{_name(where, key)} must have {self.min_items} to {self.max_items} entries"
            )
        inner = where if key is None else f"{where}.{key}"
        names, values = self.keys.read, self.values.read
        return {
            names(name, inner, "key"): values(item, inner, str(name))
            for name, item in value.items()
        }

    def write(self, value: Any) -> Any:
        return {name: self.values.write(item) for name, item in value.items()}

    def schema(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": "object",
            "propertyNames": self.keys.schema(),
            "additionalProperties": self.values.schema(),
            "maxProperties": self.max_items,
        }
        if self.min_items:
            doc["minProperties"] = self.min_items
        return doc


@dataclasses.dataclass(frozen=True)
class Opaque(Kind):
    """A JSON object another component reads (enrollment evidence): only bounded here."""

    max_items: int
    description: str

    def read(self, value: object, where: str, key: str | None) -> Mapping[str, Any]:
        if not isinstance(value, Mapping) or len(value) > self.max_items:
            raise InvalidDocument(f"{_name(where, key)} must be an object of few fields")
        return value

    def write(self, value: Any) -> Any:
        return dict(value)

    def schema(self) -> dict[str, Any]:
        return {"type": "object", "maxProperties": self.max_items, "description": self.description}


@dataclasses.dataclass(frozen=True)
class Convert(Kind):
    """``inner`` turned into a domain value and back: ``decode`` may refuse with
    InvalidDocument, whose message (naming what it checks) is prefixed with the
    object it came from.

    The schema cannot say everything ``decode`` checks, so ``examples`` (JSON
    values it accepts) are published with it, and the wire tests draw from them.
    """

    inner: Kind
    decode: Callable[[Any], Any]
    encode: Callable[[Any], Any]
    examples: tuple[Any, ...]
    description: str = ""

    def read(self, value: object, where: str, key: str | None) -> Any:
        raw = self.inner.read(value, where, key)
        try:
            return self.decode(raw)
        except InvalidDocument as exc:
            raise InvalidDocument(f"{where}: {exc}") from None

    def write(self, value: Any) -> Any:
        return self.inner.write(self.encode(value))

    def schema(self) -> dict[str, Any]:
        doc = {**self.inner.schema(), "examples": list(self.examples)}
        return {**doc, "description": self.description} if self.description else doc


class Ref(Kind):
    """A nested wire document, published as a reference to its own component schema."""

    def __init__(self, cls: type[Wire]) -> None:
        self.cls = cls

    def read(self, value: object, where: str, key: str | None) -> Any:
        # Through from_dict: a document may do more there (a report makes its text Unicode).
        return self.cls.from_dict(value, where if key is None else f"{where}.{key}")

    def write(self, value: Any) -> Any:
        return self.cls.WIRE.write(value)

    def schema(self) -> dict[str, Any]:
        return {"$ref": _REF + self.cls.wire_name()}


_MISSING: Any = object()


@dataclasses.dataclass(frozen=True)
class Field:
    """One key of a document.

    ``default``: what a missing key stands for (the key is then optional); without
    one the key is required. ``omit_default``: ``to_dict`` leaves the key out when
    the value is the default, so documents without it read and digest as before
    it existed. ``derived``: written from the attribute of that name (a
    property), read for its type only and never trusted.
    """

    name: str
    kind: Kind
    default: Any = _MISSING
    omit_default: bool = False
    derived: bool = False
    description: str = ""

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def schema(self) -> dict[str, Any]:
        doc = self.kind.schema()
        if not self.required and self.default is not None:
            doc = {**doc, "default": self.kind.write(self.default)}
        if self.description:
            doc = {**doc, "description": self.description}
        return doc


def optional(name: str, kind: Kind, description: str = "") -> Field:
    """A field that may be missing or null, both read as None; written as null."""
    return Field(name, Nullable(kind), default=None, description=description)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A document's reader, compiled: the dataclass, and per field its name, its
    kind's read, its default (``_MISSING`` when required) and whether it is kept."""

    owner: type[Any]
    fields: tuple[tuple[str, Callable[[object, str, str | None], Any], Any, bool], ...]


_SCHEMA_NUMBER = Integer()  # how a versioned document's "schema" is read


class Document(Kind):
    """A JSON object with declared fields, read into the dataclass that holds it.

    ``version``: the document carries ``"schema": version``, refused with
    ``version_refusal`` when it differs. ``where``: how messages name a
    top-level document.
    """

    def __init__(
        self,
        *fields: Field,
        name: str | None = None,
        where: str | None = None,
        version: int | None = None,
        version_refusal: str = "unsupported schema version; upgrade gpuward",
        description: str = "",
    ) -> None:
        self.fields = fields
        self.version = version
        self.version_refusal = version_refusal
        self._name = name
        self._where = where
        self._description = description
        self.cls: type[Any] | None = None
        self._plan: _Plan | None = None
        self.keys = frozenset(f.name for f in fields) | (
            frozenset() if version is None else frozenset({"schema"})
        )

    def __set_name__(self, owner: type[Any], attribute: str) -> None:
        self.cls = owner
        self._plan = None  # compiled for its owner

    def _owner(self) -> type[Any]:
        if self.cls is None:
            raise TypeError("a Document must be the WIRE attribute of its dataclass")
        return self.cls

    @property
    def name(self) -> str:
        """The document's component name in the OpenAPI document."""
        return self._name or self._owner().__name__

    @property
    def where(self) -> str:
        return self._where or self.name

    def _compile(self) -> _Plan:
        """What ``read`` needs, worked out once from the declaration: a report's
        eight GPU entries, and every report after it, are read by the same plan."""
        plan = _Plan(
            self._owner(),
            tuple((f.name, f.kind.read, f.default, not f.derived) for f in self.fields),
        )
        self._plan = plan
        return plan

    def read(self, value: object, where: str, key: str | None) -> Any:
        plan = self._plan or self._compile()
        where = where if key is None else f"{where}.{key}"
        # JSON objects are dicts: the exact type test spares most the ABC's check.
        if type(value) is not dict and not isinstance(value, Mapping):
            raise InvalidDocument(f"{where}: expected a JSON object")
        if not self.keys.issuperset(value):
            unknown = sorted(set(value) - self.keys)
            raise InvalidDocument(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
        if self.version is not None:
            if "schema" not in value:
                raise InvalidDocument(f"{where}: missing field 'schema'")
            if _SCHEMA_NUMBER.read(value["schema"], where, "schema") != self.version:
                raise InvalidDocument(f"{where}: {self.version_refusal}")
        values: dict[str, Any] = {}
        for name, read, default, kept in plan.fields:
            if name in value:
                item = read(value[name], where, name)
            elif default is _MISSING:
                raise InvalidDocument(f"{where}: missing field {name!r}")
            else:
                item = default
            if kept:
                values[name] = item
        try:
            return plan.owner(**values)
        except InvalidDocument as exc:
            # The dataclass names itself as a top-level document; say where it is.
            raise InvalidDocument(f"{where}: {str(exc).removeprefix(self.where + ': ')}") from None

    def write(self, value: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {} if self.version is None else {"schema": self.version}
        for field in self.fields:
            item = getattr(value, field.name)
            if field.omit_default and item == field.default:
                continue
            doc[field.name] = field.kind.write(item)
        return doc

    def schema(self) -> dict[str, Any]:
        properties = {f.name: f.schema() for f in self.fields}
        required = [f.name for f in self.fields if f.required]
        if self.version is not None:
            properties = {"schema": {"type": "integer", "const": self.version}, **properties}
            required = ["schema", *required]
        doc: dict[str, Any] = {
            "type": "object",
            "additionalProperties": False,
            "required": required,
            "properties": properties,
        }
        description = self._description or _docstring(self._owner())
        if description:
            doc["description"] = description
        return doc


def _docstring(cls: type[Any]) -> str:
    """A class's own docstring, first paragraph; dataclass's generated one is no description."""
    text = cls.__doc__ or ""
    if text.startswith(f"{cls.__name__}("):
        return ""
    return " ".join(text.strip().split("\n\n")[0].split())


class Wire:
    """A wire document: ``from_dict`` and ``to_dict`` from the class's ``WIRE`` declaration."""

    WIRE: ClassVar[Kind]

    @classmethod
    def wire_name(cls) -> str:
        """The document's component name in the OpenAPI document."""
        wire = cls.WIRE
        return wire.name if isinstance(wire, Document) else cls.__name__

    @classmethod
    def from_dict(cls, doc: object, where: str | None = None) -> Self:
        """The document in ``doc``, strictly read: it comes from outside."""
        wire = cls.WIRE
        if not where:
            where = wire.where if isinstance(wire, Document) else cls.__name__
        value = wire.read(doc, where, None)
        assert isinstance(value, cls)
        return value

    def to_dict(self) -> dict[str, Any]:
        doc = type(self).WIRE.write(self)
        assert isinstance(doc, dict)  # every wire document is a JSON object
        return doc


def schemas(documents: Iterable[type[Wire]]) -> dict[str, Any]:
    """The component schemas of ``documents``, by component name."""
    found: dict[str, Any] = {}
    for cls in documents:
        name = cls.wire_name()
        if name in found:
            raise TypeError(f"two wire documents are named {name}; give one a name=")
        found[name] = cls.WIRE.schema()
    return found
