"""What is said of a tool and its calls: the name a tool is offered
under (:func:`offered_name`), the text shown when the user is asked about
a call (:func:`shown`, :func:`shown_arguments`), and a result as the model
gets it (:func:`capped`).  The tools themselves, and how a call is
answered, are in :mod:`chatpipe.tools`.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatpipe.tools import Tool


#: A name every API takes for a tool (OpenAI's and Anthropic's rule).
VALID_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: Default largest tool result sent to the model, in bytes (UTF-8).
MAX_RESULT_BYTES = 100_000


def offered_name(tool: Tool, taken: set[str] | dict) -> str:
    """The name under which TOOL is offered to the model: its own name
    when it is valid (:data:`VALID_NAME`) and not TAKEN; else its name
    with every other character turned into ``_`` and cut to 64
    characters; when that is taken, with ``_SERVER`` (its source's
    name) added, then ``_2``, ``_3``...: never one of TAKEN."""
    def fit(base: str, suffix: str) -> str:
        return base[:64 - len(suffix)] + suffix

    base = re.sub(r"[^A-Za-z0-9_-]", "_", tool.name)[:64] or "tool"
    if base not in taken:
        return base
    server = re.sub(r"[^A-Za-z0-9_-]", "_", tool.source.removeprefix("mcp:"))[:30]
    name = fit(base, f"_{server}")
    number = 2
    while name in taken:
        name = fit(base, f"_{server}_{number}")
        number += 1
    return name


#: Characters never shown as they are: bidi embeddings, overrides and
#: isolates, the directional marks, and the control characters (C0 but
#: tab and newline, DEL, C1); each is shown as its ``\uXXXX`` escape.
_HIDDEN = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c"
                     "\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(text: str, newlines: bool = True) -> str:
    """TEXT as it may be shown to the user when asking about a tool call:
    each bidi control (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F,
    U+061C) and control character (tab and, with NEWLINES, newline
    kept) as its visible ``\\uXXXX`` escape, so that what the user reads
    is what runs."""
    text = _HIDDEN.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text if newlines else text.replace("\n", "\\u000a")


def shown_arguments(arguments: str) -> str:
    """A call's ARGUMENTS (a JSON text) as shown when asking: the whole
    of them, pretty-printed when they are JSON (else as written), through
    :func:`shown`."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
        text = json.dumps(value, ensure_ascii=False, indent=2)
    except ValueError:
        text = arguments
    return shown(text)


def capped(content: str, limit: int) -> str:
    """CONTENT, a tool's result, in at most LIMIT bytes of UTF-8: when it
    is longer, its start (cut at a character's boundary) and
    ``\\n[truncated: N of M bytes]`` (N the bytes of CONTENT kept, M all
    of them), the two together LIMIT bytes at most; a LIMIT of 0 or less
    keeps it whole."""
    data = content.encode("utf-8", "surrogatepass")
    if limit <= 0 or len(data) <= limit:
        return content
    room = max(0, limit - len(f"\n[truncated: {limit} of {len(data)} bytes]"))
    kept = data[:room].decode("utf-8", "ignore")
    size = len(kept.encode("utf-8", "surrogatepass"))
    return f"{kept}\n[truncated: {size} of {len(data)} bytes]"
