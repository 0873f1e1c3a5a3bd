"""The OpenAI Chat Completions stream, as OpenAI and compatible servers send it.

Format: https://platform.openai.com/docs/api-reference/chat-streaming
Each server-sent event's data is a ``chat.completion.chunk`` object::

    data: {"id":"chatcmpl-1","model":"gpt-4o","choices":[{"index":0,
           "delta":{"role":"assistant","content":""},"finish_reason":null}]}
    data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"Hi"}}]}
    data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}
    data: {"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":9,
           "completion_tokens":2,"total_tokens":11}}
    data: [DONE]

The usage chunk comes only with ``stream_options.include_usage``.  An error
can arrive mid-stream as ``data: {"error": {"message": ...}}``.  Only choice
0 is followed (``n > 1`` is not supported yet).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from chatpipe.dialects import Decoder as _Decoder, MalformedEvent
from chatpipe.errors import StreamError

#: ``error.type`` / ``error.code`` values that mean "try again later".
_RETRYABLE_ERRORS = frozenset({
    "server_error", "rate_limit_exceeded", "rate_limit_error", "overloaded_error",
    "api_error", "timeout", "service_unavailable"})


def error_from(payload: Any) -> StreamError:
    """Make a :class:`StreamError` from an ``{"error": ...}`` payload.

    Accepts ``{"error": {"message", "type", "code"}}`` (OpenAI) and
    ``{"error": "text"}`` (llama.cpp, Ollama).
    """
    err = payload.get("error")
    if isinstance(err, dict):
        message = err.get("message") or json.dumps(err, ensure_ascii=False)
        kinds = {str(err.get("type")), str(err.get("code"))}
        return StreamError(str(message), retryable=bool(kinds & _RETRYABLE_ERRORS))
    return StreamError(str(err))


class Decoder(_Decoder):
    """Decoder for ``chat.completion.chunk`` events; see the module docstring."""

    terminator = "data: [DONE]"

    def __init__(self) -> None:
        super().__init__()
        self.finish_reason: str | None = None
        self.usage: dict | None = None

    def decode(self, event: Any) -> Iterable[dict]:
        """Return the protocol events for one server-sent event.

        Emits ``delta`` for non-empty ``choices[index 0].delta.content``; at
        ``[DONE]``, ``usage`` (the last one reported, if any) then ``done``.

        Raises:
            StreamError: an ``error`` payload or ``event: error``.
            MalformedEvent: data that is not a JSON object.
        """
        data = event.data
        if data.strip() == "[DONE]":
            self.done = True
            out = []
            if self.usage is not None:
                out.append(self.usage)
            out.append({"type": "done", "finish_reason": self.finish_reason})
            return out
        try:
            chunk = json.loads(data)
        except ValueError:
            raise MalformedEvent(data) from None
        if not isinstance(chunk, dict):
            raise MalformedEvent(data)
        if "error" in chunk or event.event == "error":
            raise error_from(chunk if "error" in chunk else {"error": chunk})
        out = []
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                out.append({"type": "delta", "content": content})
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        usage = chunk.get("usage")
        if usage:
            self.usage = usage_event(usage)
        return out


def usage_event(usage: dict) -> dict:
    """Turn an OpenAI ``usage`` object into a protocol ``usage`` event (tokens)."""
    event = {"type": "usage",
             "input_tokens": usage.get("prompt_tokens"),
             "output_tokens": usage.get("completion_tokens"),
             "total_tokens": usage.get("total_tokens")}
    if event["total_tokens"] is None and None not in (event["input_tokens"], event["output_tokens"]):
        event["total_tokens"] = event["input_tokens"] + event["output_tokens"]
    return event


SYSTEM_ROLES = ("system", "developer")


def add_messages(body: dict, messages: list[dict]) -> None:
    """Append MESSAGES (``{"role", "content"}`` objects) to ``body["messages"]``.

    If MESSAGES hold a system (or developer) message, it replaces the
    template's own: the template's system and developer messages are dropped.
    """
    conversation = body.setdefault("messages", [])
    if any(m.get("role") in SYSTEM_ROLES for m in messages):
        conversation[:] = [m for m in conversation
                           if not (isinstance(m, dict) and m.get("role") in SYSTEM_ROLES)]
    conversation.extend(messages)


def assistant_message(text: str) -> dict:
    """Return the chat message that records an answer TEXT."""
    return {"role": "assistant", "content": text}
