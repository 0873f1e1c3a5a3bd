"""JSON input with bounded nesting: templates, ``--messages`` and request lines.

``json.loads`` raises ``RecursionError`` on deeply nested input (and a
value nested a few hundred levels deep breaks any recursive code that walks
it later).  :func:`loads` turns both into an ordinary
``json.JSONDecodeError`` with the position where the nesting went too deep,
so callers report it like any other syntax error, with line and column.
"""

from __future__ import annotations

import json
from typing import Any

#: Deepest nesting of arrays and objects accepted (real requests use < 10).
MAX_DEPTH = 64


def loads(text: str | bytes) -> Any:
    """Parse the JSON TEXT; as ``json.loads``, with nesting bounded.

    Raises:
        json.JSONDecodeError: invalid JSON, or arrays and objects nested
            deeper than :data:`MAX_DEPTH` (``msg``, ``lineno``, ``colno``
            and ``pos`` point at the first bracket too deep).
        UnicodeDecodeError: TEXT is bytes that are not UTF-8.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    try:
        value = json.loads(text)
    except RecursionError:
        raise _too_deep(text) from None
    if _deeper_than(value, MAX_DEPTH):
        raise _too_deep(text)
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether VALUE nests arrays and objects deeper than LIMIT (no recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return True
            items = node.values() if isinstance(node, dict) else node
            stack.extend((item, depth + 1) for item in items if isinstance(item, (dict, list)))
    return False


def _too_deep(text: str) -> json.JSONDecodeError:
    """The error for TEXT nested too deeply, at its first bracket too deep."""
    depth, in_string, escaped, pos = 0, False, False, 0
    for pos, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                break
        elif char in "]}":
            depth -= 1
    return json.JSONDecodeError(f"arrays and objects nested deeper than {MAX_DEPTH} levels",
                                text, pos)
