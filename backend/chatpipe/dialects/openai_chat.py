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
- ``data: [DONE]`` ends the stream (with or without the space).  A
  ``[DONE]`` after no content at all and no finish reason is an error:
  llama-cpp-python ends a request that a newer one interrupts that way.

Without ``"stream": true`` the answer is one ``chat.completion`` object
(https://platform.openai.com/docs/api-reference/chat/object)::

    {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
     "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi",
                  "refusal": null, "tool_calls": [{"id": "call_1", "type": "function",
                  "function": {"name": "f", "arguments": "{\\"x\\": 1}"}}]},
                  "finish_reason": "stop"}],
     "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}

with ``message.reasoning_content`` or ``message.reasoning`` where the
server gives reasoning (as in streams).

Request shape: https://platform.openai.com/docs/api-reference/chat/create
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from chatpipe import protocol
from chatpipe.dialects import base
from chatpipe.dialects.providererrors import stream_error
from chatpipe.dialects.base import parse_json
from chatpipe.errors import StreamError


class Parser(base.Parser):
    """Parser of ``chat.completion.chunk`` events; see the module docstring."""

    terminator = "data: [DONE]"

    def __init__(self) -> None:
        super().__init__()
        self.finish_reason: str | None = None
        self.usage: dict | None = None

    def parse(self, event: Any) -> Iterable[dict]:
        """Return the protocol events for one server-sent event.

        Emits ``delta``, ``reasoning``, ``refusal`` and ``tool_call`` for
        choice 0; at ``[DONE]``, ``usage`` (the last reported) and ``done``.

        Raises:
            StreamError: an ``error`` payload or ``event: error``; a
                ``[DONE]`` with no content and no finish reason before it.
            MalformedEvent: data that is not a JSON object.
        """
        data = event.data
        if data[:1] != "{" and data.strip() == "[DONE]":
            if not self.content and self.finish_reason is None:
                raise self.empty_answer()
            self.done = True
            out = [self.usage] if self.usage is not None else []
            out.append(protocol.done(self.finish_reason))
            return out
        chunk = parse_json(data)
        if "error" in chunk or event.event == "error":
            raise stream_error(chunk if "error" in chunk else {"error": chunk})
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
                        out.append(protocol.reasoning(reasoning))
                if content:
                    out.append(protocol.delta(content))
                if len(delta) > 1 or not content:
                    refusal = delta.get("refusal")
                    if refusal:
                        out.append(protocol.refusal(refusal))
                    for call in delta.get("tool_calls") or ():
                        function = call.get("function") or {}
                        out.extend(self.tool_call(call.get("index", 0),
                                                  function.get("arguments") or "",
                                                  call.get("id"), function.get("name")))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        usage = chunk.get("usage")
        if usage:
            self.usage = usage_event(usage)
        if out:
            self.content = True
        return out

    def parse_document(self, doc: Any) -> list[dict]:
        """Return the protocol events for a ``chat.completion`` object DOC
        (see the module docstring): choice 0's reasoning, text and refusal
        as one event each, one ``tool_call`` per call (whole arguments),
        ``usage``, ``done``.

        Raises:
            StreamError: DOC is not a chat completion object, or has no
                content and no finish reason.
        """
        if not isinstance(doc, dict) or not isinstance(doc.get("choices", []), list):
            raise StreamError("the server's JSON answer is not a chat completion: "
                              f"{json.dumps(doc, ensure_ascii=False)[:200]}")
        choice = next((c for c in doc.get("choices") or ()
                       if isinstance(c, dict) and c.get("index", 0) == 0), {})
        message = choice.get("message") or {}
        out = self.document_events((
            ("reasoning", message.get("reasoning_content") or message.get("reasoning")),
            ("delta", _text(message.get("content"))),
            ("refusal", message.get("refusal"))))
        for i, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") or {}
            arguments = function.get("arguments")
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments if arguments is not None else {},
                                       ensure_ascii=False)
            out.extend(self.tool_call(i, arguments, call.get("id"), function.get("name")))
        finish = choice.get("finish_reason")
        if not out and not finish:
            raise self.empty_answer()
        self.done = True
        if doc.get("usage"):
            out.append(usage_event(doc["usage"]))
        out.append(protocol.done(finish))
        return out


def _text(content: Any) -> str | None:
    """A message's ``content``: a string, or (some compatible servers) a
    list of ``{"type": "text", "text"}`` parts, joined."""
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content
                       if isinstance(p, dict) and p.get("type", "text") == "text")
    return content


def usage_event(usage: dict) -> dict:
    """Turn an OpenAI ``usage`` object into a protocol ``usage`` event (tokens),
    with ``reasoning_tokens`` and ``cached_tokens`` where the provider gives them."""
    return protocol.usage(usage.get("prompt_tokens"), usage.get("completion_tokens"),
                          usage.get("total_tokens"),
                          **base.token_details(usage.get("completion_tokens_details"),
                                               usage.get("prompt_tokens_details")))


class Dialect(base.Dialect):
    """OpenAI chat completions: the base class's ``messages`` shape (with
    its tool turns as text when a request offers no tools: see
    :meth:`base.Dialect.item_as_text`)."""

    name = "openai-chat"
    parser = Parser
