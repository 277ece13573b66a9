"""Strict readers for untrusted JSON objects.

Manifests arrive inside signed metadata, reports arrive from the network: both
are parsed by these helpers so that unknown keys, wrong types, oversized strings
and huge lists are rejected with a message naming the offending field, instead of
surfacing later as a ``KeyError`` deep inside the code.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Mapping
from typing import Any

from fleet.errors import InvalidDocument

MAX_STRING = 4096


def canonical_json(doc: object) -> bytes:
    """The one encoding both sides hash: sorted keys, no whitespace, ASCII only."""
    return json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


class Reader:
    """Reads fields of one JSON object, checking each as it goes."""

    def __init__(self, doc: object, where: str, *, allowed: frozenset[str]) -> None:
        # JSON objects are dicts: the exact type test spares most the ABC's check.
        if type(doc) is not dict and not isinstance(doc, Mapping):
            raise InvalidDocument(f"{where}: expected a JSON object")
        if not allowed.issuperset(doc):
            unknown = sorted(set(doc) - allowed)
            raise InvalidDocument(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
        self._doc: Mapping[str, Any] = doc
        self._where = where

    def _get(self, key: str, default: Any) -> Any:
        """The raw value; ``default`` (when not None) stands in for a missing key."""
        if key not in self._doc:
            if default is not None:
                return default
            raise InvalidDocument(f"{self._where}: missing field {key!r}")
        return self._doc[key]

    def text(
        self,
        key: str,
        *,
        pattern: re.Pattern[str] | None = None,
        max_len: int = MAX_STRING,
        choices: frozenset[str] | None = None,
        default: str | None = None,
    ) -> str:
        value = self._get(key, default)
        return self._check_str(key, value, pattern, max_len, choices)

    def optional_text(
        self, key: str, *, max_len: int = MAX_STRING, pattern: re.Pattern[str] | None = None
    ) -> str | None:
        value = self._doc.get(key)
        if value is None:
            return None
        return self._check_str(key, value, pattern, max_len, None)

    def _check_str(
        self,
        key: str,
        value: object,
        pattern: re.Pattern[str] | None,
        max_len: int,
        choices: frozenset[str] | None,
    ) -> str:
        if not isinstance(value, str):
            raise InvalidDocument(f"{self._where}: {key!r} must be a string")
        if len(value) > max_len:
            raise InvalidDocument(f"{self._where}: {key!r} is longer than {max_len} characters")
        if pattern is not None and not pattern.fullmatch(value):
            raise InvalidDocument(f"{self._where}: {key!r} has an invalid value {value[:80]!r}")
        if choices is not None and value not in choices:
            raise InvalidDocument(
                f"{self._where}: {key!r} must be one of {', '.join(sorted(choices))}"
            )
        return value

    def integer(
        self, key: str, *, minimum: int = 0, maximum: int = 2**63 - 1, default: int | None = None
    ) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidDocument(f"{self._where}: {key!r} must be an integer")
        if not minimum <= value <= maximum:
            raise InvalidDocument(f"{self._where}: {key!r} must be between {minimum} and {maximum}")
        return value

    def optional_integer(
        self, key: str, *, minimum: int = 0, maximum: int = 2**63 - 1
    ) -> int | None:
        """An integer, or None when the field is missing or null (an unknown measurement)."""
        if self._doc.get(key) is None:
            return None
        return self.integer(key, minimum=minimum, maximum=maximum)

    def number(self, key: str, *, minimum: float = 0.0, maximum: float = 1e18) -> float:
        value = self._get(key, None)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidDocument(f"{self._where}: {key!r} must be a number")
        if not minimum <= value <= maximum:  # also refuses NaN
            raise InvalidDocument(f"{self._where}: {key!r} must be between {minimum} and {maximum}")
        return float(value)

    def optional_boolean(self, key: str) -> bool | None:
        if self._doc.get(key) is None:
            return None
        return self.boolean(key)

    def boolean(self, key: str, *, default: bool | None = None) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise InvalidDocument(f"{self._where}: {key!r} must be true or false")
        return value

    def items(
        self, key: str, *, max_items: int, default: builtins.list[Any] | None = None
    ) -> builtins.list[Any]:
        value = self._get(key, default)
        if not isinstance(value, list):
            raise InvalidDocument(f"{self._where}: {key!r} must be a list")
        if len(value) > max_items:
            raise InvalidDocument(f"{self._where}: {key!r} has more than {max_items} items")
        return value

    def item_where(self, key: str, index: int) -> str:
        return f"{self._where}.{key}[{index}]"

    @property
    def where(self) -> str:
        """How messages name this object, for checks made outside the reader."""
        return self._where

    def raw(self, key: str) -> Any:
        """A required field's value, unchecked (null allowed): the caller checks it."""
        if key not in self._doc:
            raise InvalidDocument(f"{self._where}: missing field {key!r}")
        return self._doc[key]

    def optional_raw(self, key: str) -> Any:
        """A field's value, unchecked; None when it is missing or null."""
        return self._doc.get(key)

    def nullable_text(
        self, key: str, *, max_len: int = MAX_STRING, pattern: re.Pattern[str] | None = None
    ) -> str | None:
        """A field that must be present, as a string or an explicit null."""
        value = self.raw(key)
        if value is None:
            return None
        return self._check_str(key, value, pattern, max_len, None)
