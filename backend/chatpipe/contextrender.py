"""The context as text: :func:`render` (the one rendering of resolved items)
and :func:`place` (where it goes among the messages).

The rendering is byte-identical for the same pieces (no time, no order but
the items' own and a folder's sorted files), so that unchanged context keeps
providers' prompt caches warm.  It is Markdown::

    # Context

    The files and texts the user attached, each under its name.

    ## src/app.py (lines 10-20, python)
    ```python
    ...the lines...
    ```

Each piece is headed with its name (a path relative to the project root, a
text's name, or ``SERVER:URI``), its line range and its language when
known; its fence is one backtick longer than the longest run of backticks
in its text, and at least three, so a Markdown file full of fences stays
whole.
"""

from __future__ import annotations

import re
from typing import Any

from chatpipe.context import Piece, Resolved
from chatpipe.errors import UsageError

#: What comes before the pieces.
HEADING = "# Context\n\nThe files and texts the user attached, each under its name.\n"

_BACKTICKS = re.compile(r"`+")


def fence_for(text: str) -> str:
    """The backtick fence for TEXT: one longer than its longest run of
    backticks, at least 3."""
    return "`" * max(3, 1 + max((len(run) for run in _BACKTICKS.findall(text)), default=0))


def render_piece(piece: Piece) -> str:
    """PIECE as its heading line and fenced text, ending with a newline."""
    details = []
    if piece.lines is not None:
        start, end = piece.lines
        details.append(f"line {start}" if start == end else f"lines {start}-{end}")
    if piece.language:
        details.append(piece.language)
    heading = f"## {piece.display}" + (f" ({', '.join(details)})" if details else "")
    fence = fence_for(piece.text)
    body = piece.text if not piece.text or piece.text.endswith("\n") else piece.text + "\n"
    return f"{heading}\n{fence}{piece.language or ''}\n{body}{fence}\n"


def render(resolved: Resolved) -> str:
    """RESOLVED's pieces as one Markdown text (see the module docstring), or
    ``""`` when there are none.  Same pieces, same bytes."""
    if not resolved.pieces:
        return ""
    return "\n".join([HEADING] + [render_piece(piece) for piece in resolved.pieces])


#: Where :func:`place` may put the context.
PLACES = ("system", "user")


def _joined(content: Any, rendered: str, before: bool) -> Any:
    """CONTENT (a string, a list of content parts, or None) with RENDERED
    before or after it, a blank line between, in the same shape."""
    if isinstance(content, list):
        part = {"type": "text", "text": rendered}
        return [part, *content] if before else [*content, part]
    if not content:
        return rendered
    return f"{rendered}\n\n{content}" if before else f"{content}\n\n{rendered}"


def place(messages: list[dict], rendered: str, where: str = "system") -> list[dict]:
    """MESSAGES (neutral ``{"role", "content"}`` dicts, left unchanged) with
    the RENDERED context put in, as a new list.

    WHERE is ``"system"`` (the default: appended to the first system
    message's content after a blank line, or a new system message first
    when there is none; the context then stays before the whole chat and
    a prompt cache holds it) or ``"user"`` (before the last user message's
    text, a blank line between).  A content given as a list of parts gets
    the context as a ``{"type": "text"}`` part of its own.  An empty
    RENDERED changes nothing.

    Raises:
        UsageError: WHERE is neither, or is ``"user"`` with no user message.
    """
    if where not in PLACES:
        raise UsageError(f"the context's place must be one of {', '.join(PLACES)}, not {where!r}")
    out = list(messages)
    if not rendered:
        return out
    role = "system" if where == "system" else "user"
    indexes = [i for i, message in enumerate(out) if message.get("role") == role]
    if not indexes:
        if where == "user":
            raise UsageError("the context goes before the last user message, but there is none")
        return [{"role": "system", "content": rendered}, *out]
    i = indexes[0] if where == "system" else indexes[-1]
    out[i] = {**out[i], "content": _joined(out[i].get("content"), rendered, before=where == "user")}
    return out
