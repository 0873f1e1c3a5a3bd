"""API dialects: each turns one API's stream into protocol events and knows
its request shape.  The shared base classes and helpers are in
:mod:`chatpipe.dialects.base`; each module here defines a ``Parser`` and a
``Dialect`` subclass of them.
"""

from __future__ import annotations

import importlib

from chatpipe.dialects.base import Dialect

#: Dialect name (the template's ``chatpipe.api``) -> module name.
DIALECTS = {
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
    return importlib.import_module(DIALECTS[name]).Dialect()
