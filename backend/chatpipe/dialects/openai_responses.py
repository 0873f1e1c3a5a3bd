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
"""

from __future__ import annotations

from typing import Any, Iterable

from chatpipe.dialects import Decoder as _Decoder, done_event, tool_call_events
from chatpipe.dialects.openai_chat import (RETRYABLE_ERRORS, add_messages as _add,
                                           add_token_details, parse_json)
from chatpipe.errors import StreamError

_REASONING = ("response.reasoning_summary_text.delta", "response.reasoning_text.delta")

#: ``incomplete_details.reason`` -> OpenAI ``finish_reason``.
INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


def _error(err: dict) -> StreamError:
    message = err.get("message") or err.get("code") or "the response failed"
    kinds = {str(err.get("code")), str(err.get("type"))}
    return StreamError(str(message), retryable=bool(kinds & RETRYABLE_ERRORS))


class Decoder(_Decoder):
    """Decoder for Responses stream events; see the module docstring."""

    terminator = "event: response.completed"

    def decode(self, event: Any) -> Iterable[dict]:
        """Return the protocol events for one server-sent event.

        Raises:
            StreamError: ``error`` or ``response.failed``.
            MalformedEvent: data that is not a JSON object.
        """
        payload = parse_json(event.data)
        kind = payload.get("type") or event.event
        if kind == "response.output_text.delta":
            return [{"type": "delta", "content": payload["delta"]}] if payload.get("delta") else []
        if kind in _REASONING:
            return ([{"type": "reasoning", "content": payload["delta"]}]
                    if payload.get("delta") else [])
        if kind == "response.refusal.delta":
            return [{"type": "refusal", "content": payload["delta"]}] if payload.get("delta") else []
        if kind == "response.function_call_arguments.delta":
            index, _ = self.tool_index(payload.get("output_index"))
            return tool_call_events(index, payload.get("delta") or "")
        if kind == "response.output_item.added":
            item = payload.get("item") or {}
            if item.get("type") == "function_call":
                index, _ = self.tool_index(payload.get("output_index"))
                return tool_call_events(index, item.get("arguments") or "",
                                        item.get("call_id"), item.get("name"))
            return []
        if kind in ("response.completed", "response.incomplete"):
            self.done = True
            response = payload.get("response") or {}
            status = response.get("status") or kind.rsplit(".", 1)[1]
            if kind == "response.incomplete":
                reason = (response.get("incomplete_details") or {}).get("reason")
                done = done_event(reason or status, INCOMPLETE.get(reason, "length"))
            else:
                done = done_event(status, "tool_calls" if self.has_tool_calls else "stop")
            usage = response.get("usage")
            return ([usage_event(usage)] if usage else []) + [done]
        if kind == "response.failed":
            raise _error((payload.get("response") or {}).get("error") or {})
        if kind == "error":
            err = payload.get("error")
            raise _error(err if isinstance(err, dict) else payload)
        return []


def usage_event(usage: dict) -> dict:
    """Turn a Responses ``usage`` object into a protocol ``usage`` event (tokens)."""
    event = {"type": "usage", "input_tokens": usage.get("input_tokens"),
             "output_tokens": usage.get("output_tokens"),
             "total_tokens": usage.get("total_tokens")}
    return add_token_details(event, usage.get("output_tokens_details"),
                             usage.get("input_tokens_details"))


def add_messages(body: dict, messages: list[dict]) -> None:
    """Append MESSAGES to ``body["input"]`` (a string input becomes the
    first user message); a system message replaces the template's system
    and developer messages."""
    _add(body, messages, key="input")


def assistant_message(text: str) -> dict:
    """Return the input item that records an answer TEXT."""
    return {"role": "assistant", "content": text}
