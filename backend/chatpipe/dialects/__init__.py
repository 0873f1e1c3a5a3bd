"""API dialects: each turns one API's stream events into protocol events.

The events layer (:mod:`chatpipe.events`) gives server-sent events as parsed
by sseclient-py, or NDJSON lines; a dialect's ``Decoder`` turns each into
zero or more protocol events (plain dicts, see docs/protocol.md).  A dialect
module provides:

- ``Decoder``: a subclass of :class:`Decoder`;
- ``add_messages(body, messages)``: append chat messages, given in the
  OpenAI ``{"role", "content"}`` shape, to a request body, converting them
  to the API's own shape;
- ``assistant_message(text)``: the message that records an answer, in the
  API's shape (for ``--save``);
- optionally ``set_model(request, model)``, where the model is not the
  body's ``model`` (Gemini puts it in the URL).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Hashable, Iterable

from chatpipe.errors import StreamError

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


class MalformedEvent(Exception):
    """An event whose data is not what the dialect expects (e.g. not JSON).

    The stream loop treats it as "ended early" when it is the last event
    (a cut-off event), and as a protocol error otherwise.
    """


class Decoder:
    """Turns one response's events into protocol events.

    Attributes:
        framing: ``"sse"`` (server-sent events) or ``"ndjson"`` (one JSON
            object per line).
        terminator: what ends a complete stream, for the "ended early" message.
        not_streaming_hint: advice for an endpoint that did not stream.
        done: True once the stream's terminator has been seen; the caller
            stops reading then.
    """

    framing = "sse"
    terminator = "the end-of-stream event"
    #: What to do when the endpoint answers one JSON document instead of a stream.
    not_streaming_hint = 'set "stream": true in the template'

    def __init__(self) -> None:
        self.done = False
        self._tool_indexes: dict[Hashable, int] = {}

    def decode(self, event: Any) -> Iterable[dict]:
        """Return the protocol events for one event.

        EVENT has ``.event`` (the SSE event type, ``"message"`` by default)
        and ``.data`` (a string).

        Raises:
            chatpipe.errors.StreamError: the provider reported an error in
                the stream.
            MalformedEvent: the event's data cannot be decoded.
        """
        raise NotImplementedError

    def end(self) -> Iterable[dict]:
        """Return the last events when the body ends before :attr:`done`.

        Most APIs end with a terminator, so by default this raises.

        Raises:
            StreamError: the stream ended early.
        """
        raise StreamError(f"the stream ended early: the connection closed before "
                          f"{self.terminator}", retryable=True)

    def tool_index(self, key: Hashable) -> tuple[int, bool]:
        """Return ``(index, new)``: the protocol index of the provider's tool
        call KEY (numbered 0, 1, ... in order of appearance), and whether it
        was seen for the first time."""
        index = self._tool_indexes.get(key)
        if index is not None:
            return index, False
        index = self._tool_indexes[key] = len(self._tool_indexes)
        return index, True

    @property
    def has_tool_calls(self) -> bool:
        """Whether any tool call was seen."""
        return bool(self._tool_indexes)


def done_event(raw: str | None, normalised: str | None) -> dict:
    """A ``done`` event; ``raw_finish_reason`` only when it differs."""
    event: dict[str, Any] = {"type": "done", "finish_reason": normalised}
    if raw is not None and raw != normalised:
        event["raw_finish_reason"] = raw
    return event


def tool_call_events(index: int, arguments: str, id: str | None = None,
                     name: str | None = None) -> list[dict]:
    """``[tool_call event]`` for a fragment of the arguments of call INDEX,
    or ``[]`` for an empty fragment that brings no id or name either.

    ID and NAME are given with a call's first fragment.
    """
    if not (arguments or id or name):
        return []
    event: dict[str, Any] = {"type": "tool_call", "index": index}
    if id:
        event["id"] = id
    if name:
        event["name"] = name
    event["arguments"] = arguments
    return [event]


def get(name: str) -> ModuleType:
    """Return the dialect module for NAME (a key of :data:`DIALECTS`).

    Raises:
        KeyError: unknown dialect (templates are checked before this).
    """
    return importlib.import_module(DIALECTS[name])
