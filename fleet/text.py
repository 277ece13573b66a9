"""Strings from nodes, made into text every renderer can write.

JSON can spell what is not Unicode text: ``"\\ud800"`` parses into a Python
string holding a lone surrogate, which UTF-8 cannot encode, so an HTML page or
an HTTP answer containing one fails whole, and keeps failing while the stored
report is shown. The report reader replaces lone surrogates as a report
arrives; the renderers pass what they show through here as well, for strings
stored before that or reaching them another way.
"""

from __future__ import annotations

import re
from typing import Any

REPLACEMENT = "\ufffd"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def unicode_text(value: str) -> str:
    """``value`` with each lone surrogate replaced by U+FFFD, one for one."""
    if value.isascii():  # most text: no surrogate, and no regex pass over it
        return value
    return _LONE_SURROGATE.sub(REPLACEMENT, value)


def unicode_texts(value: Any) -> Any:
    """JSON-shaped ``value`` (dicts, lists, strings, scalars) with every string,
    keys included, made ``unicode_text``; tuples come back as lists."""
    if isinstance(value, str):
        return unicode_text(value)
    if isinstance(value, dict):
        return {unicode_texts(k): unicode_texts(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [unicode_texts(v) for v in value]
    return value
