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
a fragment of a tool call's arguments; ``signature_delta`` ends a
``thinking`` block with its signature, and a ``redacted_thinking`` block
comes whole (``{"type": "redacted_thinking", "data"}``): the answer's
thinking blocks go with its ``done`` event (:class:`base.Done`), for the
tool loop to send back (see :class:`Dialect`).
``message_stop`` ends the stream; a ``message_stop`` after no content and
no ``stop_reason`` is an error.  An ``error`` event can come on an HTTP 200
stream (e.g. ``overloaded_error``).

Without ``"stream": true`` the answer is one Message object
(https://docs.anthropic.com/en/api/messages#response)::

    {"id": "msg_1", "type": "message", "role": "assistant", "model": "...",
     "content": [{"type": "thinking", "thinking": "...", "signature": "..."},
                 {"type": "text", "text": "Hi"},
                 {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}}],
     "stop_reason": "tool_use", "usage": {"input_tokens": 9, "output_tokens": 20}}

Request shape: https://docs.anthropic.com/en/api/messages (the system
prompt is the top-level ``system``, not a message).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from chatpipe import protocol
from chatpipe.dialects import base, mediaparts, modellist, toolturns
from chatpipe.dialects.providererrors import stream_error
from chatpipe.dialects.base import SYSTEM_ROLES, parse_json
from chatpipe.errors import StreamError

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
        self.thinking: dict[Any, dict] = {}

    def parse(self, event: Any) -> Iterable[dict]:
        """Return the protocol events for one server-sent event.

        Raises:
            StreamError: an ``error`` event (retryable for overload, rate
                limit and API errors); a ``message_stop`` with no content
                and no ``stop_reason`` before it.
            MalformedEvent: data that is not a JSON object.
        """
        payload = parse_json(event.data)
        kind = payload.get("type") or event.event
        if kind == "content_block_delta":
            delta = payload.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                out = [protocol.delta(delta["text"])] if delta.get("text") else []
            elif dtype == "thinking_delta":
                out = [protocol.reasoning(delta["thinking"])] if delta.get("thinking") else []
                self._thinking(payload.get("index"), delta.get("thinking"), "")
            elif dtype == "signature_delta":
                self._thinking(payload.get("index"), "", delta.get("signature"))
                return []
            elif dtype == "input_json_delta":
                out = self.tool_call(payload.get("index"), delta.get("partial_json") or "")
            else:
                return []
            if out:
                self.content = True
            return out
        if kind == "content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") in ("tool_use", "server_tool_use"):
                self.content = True
                return self.tool_call(payload.get("index"), "", block.get("id"), block.get("name"))
            if block.get("type") == "thinking":
                self._thinking(payload.get("index"), block.get("thinking"), block.get("signature"))
            elif block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str):
                self.thinking[payload.get("index")] = {"data": block["data"]}
            return []
        if kind == "message_start":
            self._add_usage((payload.get("message") or {}).get("usage"))
            return []
        if kind == "message_delta":
            self.stop_reason = (payload.get("delta") or {}).get("stop_reason") or self.stop_reason
            self._add_usage(payload.get("usage"))
            return []
        if kind == "message_stop":
            if not self.content and self.stop_reason is None:
                raise self.empty_answer()
            return self._finish([])
        if kind == "error":
            raise stream_error(payload)
        return []  # ping, content_block_stop, and types added later

    def _thinking(self, index: Any, text: Any, signature: Any) -> None:
        """Add TEXT and SIGNATURE (pieces, strings or None) to the thinking
        block INDEX (started if new)."""
        block = self.thinking.setdefault(index, {"text": "", "signature": ""})
        if "data" not in block:
            block["text"] += text if isinstance(text, str) else ""
            block["signature"] += signature if isinstance(signature, str) else ""

    def _finish(self, out: list[dict]) -> list[dict]:
        """OUT, then ``usage`` (if reported) and ``done`` (a
        :class:`base.Done` with the answer's thinking blocks, in order);
        the answer is done."""
        self.done = True
        if self.usage:
            out.append(self.usage_event())
        done = base.Done(protocol.done(FINISH.get(self.stop_reason, self.stop_reason),
                                       self.stop_reason))
        done.thinking = list(self.thinking.values())
        out.append(done)
        return out

    def parse_document(self, doc: Any) -> list[dict]:
        """Return the protocol events for a Message object DOC (see the
        module docstring): the thinking and the text as one event each, one
        ``tool_call`` per ``tool_use`` block (its ``input`` as a JSON text),
        ``usage``, ``done``.

        Raises:
            StreamError: DOC is not a Message, or has no content and no
                ``stop_reason``.
        """
        if not isinstance(doc, dict) or not isinstance(doc.get("content", []), list):
            raise StreamError("the server's JSON answer is not a Messages API message: "
                              f"{json.dumps(doc, ensure_ascii=False)[:200]}")
        blocks = [b for b in doc.get("content") or () if isinstance(b, dict)]
        out = self.document_events(
            ("reasoning", b.get("thinking")) if b.get("type") == "thinking" else
            ("delta", b.get("text")) if b.get("type") == "text" else ("delta", None)
            for b in blocks)
        for i, block in enumerate(blocks):
            if block.get("type") == "thinking":
                self._thinking(i, block.get("thinking"), block.get("signature"))
            elif block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str):
                self.thinking[i] = {"data": block["data"]}
            if block.get("type") in ("tool_use", "server_tool_use"):
                arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
                out.extend(self.tool_call(i, arguments, block.get("id"), block.get("name")))
        self.stop_reason = doc.get("stop_reason")
        if not out and self.stop_reason is None:
            raise self.empty_answer()
        self._add_usage(doc.get("usage"))
        return self._finish(out)

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
    """Anthropic Messages: a system message becomes the top-level ``system``.

    Tools (https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use,
    https://docs.anthropic.com/en/api/messages): a definition is ``{"name",
    "description", "input_schema"}``; an answer's calls are ``tool_use``
    blocks ``{"type": "tool_use", "id", "name", "input": {...}}`` after its
    text block; the results of one answer go in one user message of
    ``tool_result`` blocks ``{"type": "tool_result", "tool_use_id",
    "content", "is_error": true}`` (``is_error`` only on errors).

    Extended thinking with tools
    (https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking#preserving-thinking-blocks):
    an answer that calls tools goes back with its ``thinking`` blocks
    (``{"type": "thinking", "thinking", "signature"}``) and
    ``redacted_thinking`` blocks (``{"type": "redacted_thinking",
    "data"}``), unmodified, before its ``tool_use`` blocks, or the API
    refuses the request that carries the results.  The neutral answer
    carries them as ``thinking: [{"text", "signature"} | {"data"}]``
    (:meth:`add_thinking`); they are opaque data, sent back only to this
    API, as they came.

    Tool turns without tools: the Messages API answered HTTP 400
    ("Requests which include tool_use or tool_result blocks must define
    tools") until 27 February 2025, when it began to take them without
    ``tools`` (https://docs.anthropic.com/en/release-notes/api), so
    :attr:`tool_turns_need_tools` is False; a dialect for an endpoint that
    still refuses them sets it, and gets them as text blocks
    (:meth:`item_as_text`).
    """

    name = "anthropic-messages"
    parser = Parser
    media_limits = mediaparts.ANTHROPIC

    def media_part(self, media: Any) -> dict:
        """An ``image`` or ``document`` block with a ``base64`` source
        ``{"type": "base64", "media_type", "data"}``, or a ``url`` source
        for a URL: https://docs.claude.com/en/docs/build-with-claude/vision,
        https://docs.claude.com/en/docs/build-with-claude/pdf-support
        (a ``text/plain`` document has a ``text`` source of its text)."""
        if media.url:
            source = {"type": "url", "url": media.url}
        elif media.mime_type == "text/plain":
            source = {"type": "text", "media_type": "text/plain",
                      "data": (media.data or b"").decode("utf-8", "replace")}
        else:
            source = {"type": "base64", "media_type": media.mime_type, "data": media.base64()}
        return {"type": media.kind, "source": source}

    def add_messages(self, body: dict, messages: list[dict]) -> None:
        """Append MESSAGES (neutral, see :class:`base.Dialect`) to
        ``body["messages"]``; a system message becomes the top-level
        ``system`` prompt, replacing the template's."""
        system = [m["content"] for m in messages if m.get("role") in SYSTEM_ROLES]
        if system:
            body["system"] = "\n\n".join(s if isinstance(s, str) else "" for s in system)
        super().add_messages(body, [m for m in messages if m.get("role") not in SYSTEM_ROLES])

    def add_context(self, body: dict, text: str) -> None:
        """Put TEXT (a request's rendered context) after the system prompt,
        as a ``system`` text block of its own with a ``cache_control``
        breakpoint, so that the following turns of a chat with a long
        context read it from Anthropic's prompt cache (billed as cache
        reads) rather than as new input; no breakpoint when the request
        has the API's most, 4, already.
        https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching"""
        system = body.get("system")
        blocks = (list(system) if isinstance(system, list)
                  else [{"type": "text", "text": system}] if isinstance(system, str) and system
                  else [])
        block: dict[str, Any] = {"type": "text", "text": text}
        if _breakpoints(body) < 4:
            block["cache_control"] = {"type": "ephemeral"}
        body["system"] = [*blocks, block]

    def assistant_message(self, text: str, tool_calls: list[dict] | None = None) -> list[dict]:
        """An answer: its TEXT, and its TOOL_CALLS as ``tool_use`` blocks
        (no text block when the text is empty: the API refuses empty ones)."""
        if not tool_calls:
            return [{"role": "assistant", "content": text}]
        content = [{"type": "text", "text": text}] if text else []
        content += [{"type": "tool_use", "id": call["id"], "name": call["name"],
                     "input": base.arguments_object(call["arguments"])} for call in tool_calls]
        return [{"role": "assistant", "content": content}]

    def add_thinking(self, items: list[dict], thinking: Any) -> list[dict]:
        """ITEMS (one assistant message) with THINKING's blocks first in its
        content: ``{"text", "signature"}`` as a ``thinking`` block,
        ``{"data"}`` as a ``redacted_thinking`` block (others, and a
        thinking block without a signature, which the API refuses, are
        left out)."""
        blocks = []
        for block in thinking if isinstance(thinking, list) else ():
            block = block if isinstance(block, dict) else {}
            if isinstance(block.get("data"), str):
                blocks.append({"type": "redacted_thinking", "data": block["data"]})
            elif (isinstance(block.get("text"), str) and isinstance(block.get("signature"), str)
                  and block["signature"]):
                blocks.append({"type": "thinking", "thinking": block["text"],
                               "signature": block["signature"]})
        if blocks and items and isinstance(items[0].get("content"), list):
            items[0]["content"][:0] = blocks
        return items

    def item_as_text(self, item: Any, names: dict[str, str]) -> tuple[Any, str | None]:
        """ITEM with its ``tool_use`` blocks and ``tool_result`` blocks as
        ``text`` blocks (see :mod:`chatpipe.dialects.toolturns`); its other
        blocks (text, thinking) are kept."""
        content = item.get("content") if isinstance(item, dict) else None
        if not isinstance(content, list):
            return item, None
        blocks = []
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "tool_use":
                names[block.get("id")] = block.get("name")
                block = {"type": "text", "text": toolturns.call_text(block.get("name"),
                                                                     block.get("input") or {})}
            elif kind == "tool_result":
                block = {"type": "text", "text": toolturns.result_text(
                    names.get(block.get("tool_use_id")), toolturns.text_of(block.get("content")),
                    bool(block.get("is_error")))}
            blocks.append(block)
        return {**item, "content": blocks}, None

    def add_tool_result(self, conversation: list, result: dict) -> None:
        """Add a ``tool_result`` block to the user message of results that
        ends CONVERSATION, or start one; the result's images are ``image``
        blocks of its content (others a note in its text:
        :func:`mediaparts.tool_images`).
        https://docs.claude.com/en/docs/agents-and-tools/tool-use/implement-tool-use"""
        images, notes = mediaparts.tool_images(self.media_limits, result)
        text = (result.get("content") or "") + notes
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": result["tool_call_id"],
                                 "content": [{"type": "text", "text": text},
                                             *map(self.media_part, images)] if images else text}
        if result.get("is_error"):
            block["is_error"] = True
        last = conversation[-1] if conversation else None
        if (isinstance(last, dict) and last.get("role") == "user"
                and isinstance(last.get("content"), list) and last["content"]
                and all(isinstance(b, dict) and b.get("type") == "tool_result"
                        for b in last["content"])):
            last["content"].append(block)
        else:
            conversation.append({"role": "user", "content": [block]})

    def add_tools(self, body: dict, tools: list[dict]) -> None:
        """Offer TOOLS as ``{"name", "description", "input_schema"}``."""
        body.setdefault("tools", []).extend(
            {"name": t["name"], "description": t.get("description", ""),
             "input_schema": base.parameters(t)} for t in tools)

    endpoint_paths = ("/messages",)

    def models_request(self, url: str, headers: dict[str, str],
                       ) -> tuple[str, dict[str, str], dict[str, str]] | None:
        """``GET {base}/models`` (BASE: the URL without ``/messages``,
        ``https://api.anthropic.com/v1``) with ``anthropic-version`` (added
        if the template has none), in pages of ``limit`` (at most 1000):
        https://platform.claude.com/docs/en/api/models-list"""
        found = super().models_request(url, headers)
        if found is None:
            return None
        where, headers, _ = found
        if not any(k.lower() == "anthropic-version" for k in headers):
            headers = {**headers, "anthropic-version": "2023-06-01"}
        return where, headers, {"limit": "1000"}

    def parse_models(self, doc: Any) -> tuple[list[dict[str, Any]], dict[str, str] | None] | None:
        """``{"data": [{"id", "created_at", "display_name", "type"}],
        "has_more", "first_id", "last_id"}``, continued with
        ``after_id=last_id``."""
        items = modellist.list_items(doc, "data")
        if items is None:
            return None
        models = [modellist.model_entry(m.get("id"), m.get("created_at"),
                                        display_name=m.get("display_name"),
                                        context_window=m.get("max_input_tokens")) for m in items]
        last = doc.get("last_id")
        following = ({"limit": "1000", "after_id": last}
                     if doc.get("has_more") is True and isinstance(last, str) and last else None)
        return [m for m in models if m is not None], following


def _breakpoints(value: Any) -> int:
    """How many ``cache_control`` breakpoints VALUE (a request body) has."""
    if isinstance(value, dict):
        return ("cache_control" in value) + sum(_breakpoints(v) for v in value.values())
    if isinstance(value, list):
        return sum(_breakpoints(v) for v in value)
    return 0
