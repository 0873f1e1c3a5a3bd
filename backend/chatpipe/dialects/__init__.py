"""API dialects: each turns one API's stream into protocol events and knows
its request shape.  The shared base classes and helpers are in
:mod:`chatpipe.dialects.base`; each module here defines a ``Parser`` and a
``Dialect`` subclass of them.
"""

from __future__ import annotations

import importlib

from chatpipe.dialects.base import Dialect

#: Dialect name (the template's ``chatpipe.api``) -> the name of the module
#: that defines its ``Dialect`` (imported when first used), or a
#: :class:`Dialect` subclass given to :func:`register`.
DIALECTS: dict[str, str | type[Dialect]] = {
    "openai-chat": "chatpipe.dialects.openai_chat",
    "openai-responses": "chatpipe.dialects.openai_responses",
    "anthropic-messages": "chatpipe.dialects.anthropic",
    "gemini": "chatpipe.dialects.gemini",
    "ollama": "chatpipe.dialects.ollama",
}

#: The OpenAI ``finish_reason`` vocabulary the protocol normalises to.
FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter")


def get(name: str) -> Dialect:
    """Return the dialect NAME (a key of :data:`DIALECTS`).

    Raises:
        KeyError: unknown dialect (templates are checked before this).
    """
    entry = DIALECTS[name]
    if isinstance(entry, str):
        entry = importlib.import_module(entry).Dialect
    return entry()


def register(dialect: type[Dialect]) -> None:
    """Add DIALECT (a :class:`Dialect` subclass) under its ``name``, for
    templates (``chatpipe.api``) and :func:`get`; a dialect of that name is
    replaced.  See :mod:`chatpipe.dialects.base` for a dialect outside the
    package."""
    DIALECTS[dialect.name] = dialect
