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

- ``delta.content`` is text; ``delta.refusal`` a refusal (OpenAI);
  ``delta.reasoning_content`` (DeepSeek, vLLM, llama.cpp) and
  ``delta.reasoning`` (OpenRouter, Ollama's OpenAI endpoint) are reasoning.
  OpenRouter repeats its reasoning in ``reasoning_details``, which is ignored.
- ``delta.tool_calls[]`` carry ``index``, then ``id`` and ``function.name``
  once, and ``function.arguments`` in fragments.
- Usage comes in the last chunk with ``stream_options.include_usage``
  (OpenAI), on the finish chunk (DeepSeek), or in a chunk of its own after it
  (OpenRouter); the last one reported is emitted just before ``done``.
- An error can arrive mid-stream as ``data: {"error": {"message": ...}}``.
- Only choice 0 is followed (``n > 1`` gives choice 0's answer).
- ``data: [DONE]`` ends the stream (with or without the space).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from chatpipe.dialects import Decoder as _Decoder, MalformedEvent, done_event, tool_call_events
from chatpipe.errors import StreamError

#: ``error.type`` / ``error.code`` values that mean "try again later".
RETRYABLE_ERRORS = frozenset({
    "server_error", "rate_limit_exceeded", "rate_limit_error", "overloaded_error",
    "api_error", "timeout", "service_unavailable", "internal_server_error"})

SYSTEM_ROLES = ("system", "developer")


def error_from(payload: Any) -> StreamError:
    """Make a :class:`StreamError` from an ``{"error": ...}`` payload.

    Accepts ``{"error": {"message", "type", "code"}}`` (OpenAI, Anthropic)
    and ``{"error": "text"}`` (llama.cpp, Ollama).
    """
    err = payload.get("error") if isinstance(payload, dict) else payload
    if isinstance(err, dict):
        message = err.get("message") or json.dumps(err, ensure_ascii=False)
        kinds = {str(err.get("type")), str(err.get("code"))}
        return StreamError(str(message), retryable=bool(kinds & RETRYABLE_ERRORS))
    return StreamError(str(err))


_raw_decode = json.JSONDecoder().raw_decode


def parse_json(data: str) -> dict:
    """Parse an event's DATA as a JSON object.

    Raises:
        MalformedEvent: not JSON, or not an object.
    """
    try:
        value, end = _raw_decode(data)
    except ValueError:
        raise MalformedEvent(data) from None
    if not isinstance(value, dict) or (end != len(data) and data[end:].strip()):
        raise MalformedEvent(data)
    return value


class Decoder(_Decoder):
    """Decoder for ``chat.completion.chunk`` events; see the module docstring."""

    terminator = "data: [DONE]"

    def __init__(self) -> None:
        super().__init__()
        self.finish_reason: str | None = None
        self.usage: dict | None = None

    def decode(self, event: Any) -> Iterable[dict]:
        """Return the protocol events for one server-sent event.

        Emits ``delta``, ``reasoning``, ``refusal`` and ``tool_call`` for
        choice 0; at ``[DONE]``, ``usage`` (the last reported) and ``done``.

        Raises:
            StreamError: an ``error`` payload or ``event: error``.
            MalformedEvent: data that is not a JSON object.
        """
        data = event.data
        if data[:1] != "{" and data.strip() == "[DONE]":
            self.done = True
            out = [self.usage] if self.usage is not None else []
            out.append(done_event(self.finish_reason, self.finish_reason))
            return out
        chunk = parse_json(data)
        if "error" in chunk or event.event == "error":
            raise error_from(chunk if "error" in chunk else {"error": chunk})
        out = []
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if delta:
                content = delta.get("content")
                if len(delta) > 1 or not content:  # anything besides text?
                    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                    if reasoning and isinstance(reasoning, str):
                        out.append({"type": "reasoning", "content": reasoning})
                if content:
                    out.append({"type": "delta", "content": content})
                if len(delta) > 1 or not content:
                    refusal = delta.get("refusal")
                    if refusal:
                        out.append({"type": "refusal", "content": refusal})
                    for call in delta.get("tool_calls") or ():
                        index, _ = self.tool_index(call.get("index", 0))
                        function = call.get("function") or {}
                        out.extend(tool_call_events(index, function.get("arguments") or "",
                                                    call.get("id"), function.get("name")))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        usage = chunk.get("usage")
        if usage:
            self.usage = usage_event(usage)
        return out


def usage_event(usage: dict) -> dict:
    """Turn an OpenAI ``usage`` object into a protocol ``usage`` event (tokens).

    Adds ``reasoning_tokens`` and ``cached_tokens`` where the provider gives them.
    """
    event = {"type": "usage",
             "input_tokens": usage.get("prompt_tokens"),
             "output_tokens": usage.get("completion_tokens"),
             "total_tokens": usage.get("total_tokens")}
    if event["total_tokens"] is None and None not in (event["input_tokens"], event["output_tokens"]):
        event["total_tokens"] = event["input_tokens"] + event["output_tokens"]
    return add_token_details(event, usage.get("completion_tokens_details"),
                             usage.get("prompt_tokens_details"))


def add_token_details(event: dict, output_details: dict | None,
                      input_details: dict | None) -> dict:
    """Add ``reasoning_tokens`` and ``cached_tokens`` to a ``usage`` EVENT
    from OpenAI-style ``*_tokens_details`` objects, where given; return EVENT."""
    reasoning = (output_details or {}).get("reasoning_tokens")
    if reasoning is not None:
        event["reasoning_tokens"] = reasoning
    cached = (input_details or {}).get("cached_tokens")
    if cached is not None:
        event["cached_tokens"] = cached
    return event


def add_messages(body: dict, messages: list[dict], key: str = "messages") -> None:
    """Append MESSAGES (``{"role", "content"}`` objects) to ``body[KEY]``.

    If MESSAGES hold a system (or developer) message, it replaces the
    template's own: the template's system and developer messages are dropped.
    """
    conversation = body.get(key)
    if not isinstance(conversation, list):
        conversation = body[key] = [] if conversation is None else [
            {"role": "user", "content": conversation}]
    if any(m.get("role") in SYSTEM_ROLES for m in messages):
        conversation[:] = [m for m in conversation
                           if not (isinstance(m, dict) and m.get("role") in SYSTEM_ROLES)]
    conversation.extend(messages)


def assistant_message(text: str) -> dict:
    """Return the chat message that records an answer TEXT."""
    return {"role": "assistant", "content": text}
