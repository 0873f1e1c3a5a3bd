"""The OpenAI Responses API stream.

Format: https://platform.openai.com/docs/api-reference/responses-streaming
Named server-sent events whose JSON payload repeats the ``type``::

    event: response.created                 {"response": {"id", "model", ...}}
    event: response.output_item.added       {"output_index": 0, "item": {"type": "function_call", "call_id", "name"}}
    event: response.output_text.delta       {"delta": "Hi"}
    event: response.reasoning_summary_text.delta  {"delta": "..."}
    event: response.function_call_arguments.delta {"output_index": 0, "delta": "{\\"ci"}
    event: response.completed               {"response": {"status": "completed", "usage": {...}}}
    event: response.incomplete              {"response": {"incomplete_details": {"reason": "max_output_tokens"}}}
    event: response.failed                  {"response": {"error": {"message": ...}}}
    event: error                            {"code", "message"} or {"error": {"code", "message"}}

There is no ``[DONE]``: ``response.completed`` or ``response.incomplete``
ends a complete stream; ``response.failed`` and ``error`` end it with an error.

Request shape: https://platform.openai.com/docs/api-reference/responses/create
(the conversation is ``input``, a string or a list of items).
"""

from __future__ import annotations

from typing import Any, Iterable

from chatpipe import protocol
from chatpipe.dialects import base
from chatpipe.dialects.base import parse_json

_REASONING = ("response.reasoning_summary_text.delta", "response.reasoning_text.delta")

#: ``incomplete_details.reason`` -> OpenAI ``finish_reason``.
INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


class Parser(base.Parser):
    """Parser of Responses stream events; see the module docstring."""

    terminator = "event: response.completed"

    def parse(self, event: Any) -> Iterable[dict]:
        """Return the protocol events for one server-sent event.

        Raises:
            StreamError: ``error`` or ``response.failed``.
            MalformedEvent: data that is not a JSON object.
        """
        payload = parse_json(event.data)
        kind = payload.get("type") or event.event
        text = payload.get("delta")
        if kind == "response.output_text.delta":
            return [protocol.delta(text)] if text else []
        if kind in _REASONING:
            return [protocol.reasoning(text)] if text else []
        if kind == "response.refusal.delta":
            return [protocol.refusal(text)] if text else []
        if kind == "response.function_call_arguments.delta":
            return self.tool_call(payload.get("output_index"), text or "")
        if kind == "response.output_item.added":
            item = payload.get("item") or {}
            if item.get("type") == "function_call":
                return self.tool_call(payload.get("output_index"), item.get("arguments") or "",
                                      item.get("call_id"), item.get("name"))
            return []
        if kind in ("response.completed", "response.incomplete"):
            self.done = True
            response = payload.get("response") or {}
            status = response.get("status") or kind.rsplit(".", 1)[1]
            if kind == "response.incomplete":
                reason = (response.get("incomplete_details") or {}).get("reason")
                done = protocol.done(INCOMPLETE.get(reason, "length"), reason or status)
            else:
                done = protocol.done("tool_calls" if self.has_tool_calls else "stop", status)
            usage = response.get("usage")
            return ([usage_event(usage)] if usage else []) + [done]
        if kind == "response.failed":
            err = (payload.get("response") or {}).get("error") or {}
            raise base.stream_error({"error": err}, "the response failed")
        if kind == "error":
            raise base.stream_error(payload)
        return []


def usage_event(usage: dict) -> dict:
    """Turn a Responses ``usage`` object into a protocol ``usage`` event (tokens)."""
    return protocol.usage(usage.get("input_tokens"), usage.get("output_tokens"),
                          usage.get("total_tokens"),
                          **base.token_details(usage.get("output_tokens_details"),
                                               usage.get("input_tokens_details")))


class Dialect(base.Dialect):
    """The Responses API: the conversation is ``input`` (a string input
    becomes the first user message)."""

    name = "openai-responses"
    parser = Parser
    history_key = "input"
