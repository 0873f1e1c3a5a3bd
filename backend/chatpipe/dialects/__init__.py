"""API dialects: each turns one API's stream events into protocol events.

The transport layer (:mod:`chatpipe.transport`) gives server-sent events, as
parsed by sseclient-py; a dialect's :class:`Decoder` turns each into zero or
more protocol events (plain dicts, see docs/protocol.md).  A dialect module
provides:

- ``Decoder``: a subclass of :class:`Decoder`;
- ``add_messages(body, messages)``: append chat messages, given in the
  OpenAI ``{"role", "content"}`` shape, to a request body;
- ``assistant_message(text)``: the message to save for an answer (``--save``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Iterable

#: Dialect name (the template's ``chatpipe.api``) -> module name.
DIALECTS = {
    "openai-chat": "chatpipe.dialects.openai_chat",
}


class MalformedEvent(Exception):
    """An event whose data is not what the dialect expects (e.g. not JSON).

    The stream loop treats it as "ended early" when it is the last event
    (a cut-off event), and as a protocol error otherwise.
    """


class Decoder:
    """Turns one response's events into protocol events.

    Attributes:
        done: True once the stream's terminator has been seen; the caller
            stops reading then.
    """

    #: Name of the terminator, for the "ended early" message.
    terminator = "the end-of-stream event"

    def __init__(self) -> None:
        self.done = False

    def decode(self, event: Any) -> Iterable[dict]:
        """Return the protocol events for one sseclient-py ``Event``.

        Raises:
            chatpipe.errors.StreamError: the provider reported an error in
                the stream.
            MalformedEvent: the event's data cannot be decoded.
        """
        raise NotImplementedError


def get(name: str) -> ModuleType:
    """Return the dialect module for NAME (a key of :data:`DIALECTS`).

    Raises:
        KeyError: unknown dialect (templates are checked before this).
    """
    return importlib.import_module(DIALECTS[name])
