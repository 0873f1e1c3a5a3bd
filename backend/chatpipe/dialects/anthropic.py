"""The Anthropic Messages stream.

Format: https://docs.anthropic.com/en/api/messages-streaming
Named server-sent events, each with a JSON payload carrying its own ``type``::

    event: message_start        {"message": {"id", "model", "usage": {"input_tokens"}}}
    event: content_block_start  {"index": 0, "content_block": {"type": "text"|"thinking"|"tool_use", ...}}
    event: content_block_delta  {"index": 0, "delta": {"type": "text_delta", "text": "Hi"}}
    event: content_block_stop   {"index": 0}
    event: message_delta        {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}
    event: message_stop         {}
    event: ping                 {}
    event: error                {"error": {"type": "overloaded_error", "message": "Overloaded"}}

``text_delta`` is text, ``thinking_delta`` reasoning, ``input_json_delta``
a fragment of a tool call's arguments; ``signature_delta`` is ignored.
``message_stop`` ends the stream.  An ``error`` event can come on an HTTP
200 stream (e.g. ``overloaded_error``).

Request shape: https://docs.anthropic.com/en/api/messages (the system
prompt is the top-level ``system``, not a message).
"""

from __future__ import annotations

from typing import Any, Iterable

from chatpipe import protocol
from chatpipe.dialects import base
from chatpipe.dialects.base import SYSTEM_ROLES, parse_json

#: Anthropic ``stop_reason`` -> OpenAI ``finish_reason``.
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
          "max_tokens": "length", "model_context_window_exceeded": "length",
          "tool_use": "tool_calls", "refusal": "content_filter"}


class Parser(base.Parser):
    """Parser of Messages stream events; see the module docstring."""

    terminator = "event: message_stop"

    def __init__(self) -> None:
        super().__init__()
        self.stop_reason: str | None = None
        self.usage: dict[str, int] = {}

    def parse(self, event: Any) -> Iterable[dict]:
        """Return the protocol events for one server-sent event.

        Raises:
            StreamError: an ``error`` event (retryable for overload, rate
                limit and API errors).
            MalformedEvent: data that is not a JSON object.
        """
        payload = parse_json(event.data)
        kind = payload.get("type") or event.event
        if kind == "content_block_delta":
            delta = payload.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                return [protocol.delta(delta["text"])] if delta.get("text") else []
            if dtype == "thinking_delta":
                return [protocol.reasoning(delta["thinking"])] if delta.get("thinking") else []
            if dtype == "input_json_delta":
                return self.tool_call(payload.get("index"), delta.get("partial_json") or "")
            return []
        if kind == "content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") in ("tool_use", "server_tool_use"):
                return self.tool_call(payload.get("index"), "", block.get("id"), block.get("name"))
            return []
        if kind == "message_start":
            self._add_usage((payload.get("message") or {}).get("usage"))
            return []
        if kind == "message_delta":
            self.stop_reason = (payload.get("delta") or {}).get("stop_reason") or self.stop_reason
            self._add_usage(payload.get("usage"))
            return []
        if kind == "message_stop":
            self.done = True
            out = [self.usage_event()] if self.usage else []
            out.append(protocol.done(FINISH.get(self.stop_reason, self.stop_reason),
                                     self.stop_reason))
            return out
        if kind == "error":
            raise base.stream_error(payload)
        return []  # ping, content_block_stop, and types added later

    def _add_usage(self, usage: dict | None) -> None:
        for key, value in (usage or {}).items():
            if isinstance(value, int):
                self.usage[key] = value

    def usage_event(self) -> dict:
        """The protocol ``usage`` event (tokens) for what was reported.

        ``input_tokens`` counts cached input too (as OpenAI's does), with
        the cache reads also in ``cached_tokens``.
        """
        u = self.usage
        cached = u.get("cache_read_input_tokens")
        inputs = None
        if "input_tokens" in u:
            inputs = u["input_tokens"] + (cached or 0) + u.get("cache_creation_input_tokens", 0)
        return protocol.usage(inputs, u.get("output_tokens"), cached_tokens=cached)


class Dialect(base.Dialect):
    """Anthropic Messages: a system message becomes the top-level ``system``."""

    name = "anthropic-messages"
    parser = Parser

    def add_messages(self, body: dict, messages: list[dict]) -> None:
        """Append MESSAGES to ``body["messages"]``; a system message becomes
        the top-level ``system`` prompt, replacing the template's."""
        system = [m["content"] for m in messages if m.get("role") in SYSTEM_ROLES]
        if system:
            body["system"] = "\n\n".join(s if isinstance(s, str) else "" for s in system)
        body.setdefault("messages", []).extend(
            m for m in messages if m.get("role") not in SYSTEM_ROLES)
