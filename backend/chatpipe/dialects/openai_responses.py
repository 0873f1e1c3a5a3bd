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
ends a complete stream; ``response.failed`` and ``error`` end it with an error,
and so does a ``response.completed`` without a status after no content.

Without ``"stream": true`` the answer is one Response object
(https://platform.openai.com/docs/api-reference/responses/object)::

    {"id": "resp_1", "object": "response", "status": "completed",
     "incomplete_details": null, "error": null,
     "output": [{"type": "reasoning", "summary": [{"type": "summary_text", "text": "..."}]},
                {"type": "message", "role": "assistant", "content": [
                    {"type": "output_text", "text": "Hi", "annotations": []},
                    {"type": "refusal", "refusal": "..."}]},
                {"type": "function_call", "call_id": "call_1", "name": "f",
                 "arguments": "{\\"x\\": 1}"}],
     "usage": {"input_tokens": 9, "output_tokens": 2, "total_tokens": 11}}

Request shape: https://platform.openai.com/docs/api-reference/responses/create
(the conversation is ``input``, a string or a list of items).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from chatpipe import protocol
from chatpipe.dialects import base, mediaparts, toolturns
from chatpipe.dialects.providererrors import stream_error
from chatpipe.dialects.base import parse_json
from chatpipe.errors import StreamError

_REASONING = ("response.reasoning_summary_text.delta", "response.reasoning_text.delta")

#: ``incomplete_details.reason`` -> OpenAI ``finish_reason``.
INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


class Parser(base.Parser):
    """Parser of Responses stream events; see the module docstring."""

    terminator = "event: response.completed"

    def parse(self, event: Any) -> Iterable[dict]:
        """Return the protocol events for one server-sent event.

        Raises:
            StreamError: ``error`` or ``response.failed``; a
                ``response.completed`` without a status after no content.
            MalformedEvent: data that is not a JSON object.
        """
        payload = parse_json(event.data)
        kind = payload.get("type") or event.event
        text = payload.get("delta")
        if kind == "response.output_text.delta":
            out = [protocol.delta(text)] if text else []
        elif kind in _REASONING:
            out = [protocol.reasoning(text)] if text else []
        elif kind == "response.refusal.delta":
            out = [protocol.refusal(text)] if text else []
        elif kind == "response.function_call_arguments.delta":
            out = self.tool_call(payload.get("output_index"), text or "")
        elif kind == "response.output_item.added":
            item = payload.get("item") or {}
            if item.get("type") != "function_call":
                return []
            out = self.tool_call(payload.get("output_index"), item.get("arguments") or "",
                                 item.get("call_id"), item.get("name"))
        elif kind in ("response.completed", "response.incomplete"):
            response = payload.get("response") or {}
            status = response.get("status")
            if status is None and not self.content:
                raise self.empty_answer()
            if kind == "response.incomplete":
                status = "incomplete"
            return self._finish(response, status or "completed")
        elif kind == "response.failed":
            err = (payload.get("response") or {}).get("error") or {}
            raise stream_error({"error": err}, "the response failed")
        elif kind == "error":
            raise stream_error(payload)
        else:
            return []
        if out:
            self.content = True
        return out

    def _finish(self, response: dict, status: str) -> list[dict]:
        """``usage`` (if RESPONSE has it) and ``done`` for a response whose
        STATUS is ``completed`` or ``incomplete``; the answer is done."""
        self.done = True
        if status == "incomplete":
            reason = (response.get("incomplete_details") or {}).get("reason")
            done = protocol.done(INCOMPLETE.get(reason, "length"), reason or status)
        else:
            done = protocol.done("tool_calls" if self.has_tool_calls else "stop", status)
        usage = response.get("usage")
        return ([usage_event(usage)] if usage else []) + [done]

    def parse_document(self, doc: Any) -> list[dict]:
        """Return the protocol events for a Response object DOC (see the
        module docstring): the reasoning (summaries and reasoning text), the
        ``output_text`` and the refusals as one event each, one
        ``tool_call`` per ``function_call`` item, ``usage``, ``done``.

        Raises:
            StreamError: DOC is not a Response; its status is ``failed``
                (the provider's message), or not finished (``queued``,
                ``in_progress``, ``cancelled``); it has no status and no
                content.
        """
        if not isinstance(doc, dict) or not isinstance(doc.get("output", []), list):
            raise StreamError("the server's JSON answer is not a Responses API response: "
                              f"{json.dumps(doc, ensure_ascii=False)[:200]}")
        status = doc.get("status")
        if status == "failed":
            raise stream_error({"error": doc.get("error") or {}}, "the response failed")
        if status not in (None, "completed", "incomplete"):
            raise StreamError(f"the response is not finished: its status is {status}")
        texts: list[tuple[str, Any]] = []
        calls = []
        for item in doc.get("output") or ():
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            if kind == "message":
                for part in item.get("content") or ():
                    if not isinstance(part, dict):
                        continue
                    if part.get("type") == "output_text":
                        texts.append(("delta", part.get("text")))
                    elif part.get("type") == "refusal":
                        texts.append(("refusal", part.get("refusal")))
            elif kind == "reasoning":
                for part in (item.get("summary") or []) + (item.get("content") or []):
                    if isinstance(part, dict):
                        texts.append(("reasoning", part.get("text")))
            elif kind == "function_call":
                calls.append(item)
        out = self.document_events(texts)
        for i, call in enumerate(calls):
            arguments = call.get("arguments")
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments if arguments is not None else {},
                                       ensure_ascii=False)
            out.extend(self.tool_call(i, arguments, call.get("call_id"), call.get("name")))
        if not out and status is None:
            raise self.empty_answer()
        return out + self._finish(doc, status or "completed")


def usage_event(usage: dict) -> dict:
    """Turn a Responses ``usage`` object into a protocol ``usage`` event (tokens)."""
    return protocol.usage(usage.get("input_tokens"), usage.get("output_tokens"),
                          usage.get("total_tokens"),
                          **base.token_details(usage.get("output_tokens_details"),
                                               usage.get("input_tokens_details")))


class Dialect(base.Dialect):
    """The Responses API: the conversation is ``input`` (a string input
    becomes the first user message).

    Tools (https://platform.openai.com/docs/guides/function-calling?api-mode=responses,
    https://platform.openai.com/docs/api-reference/responses/create): a
    definition is ``{"type": "function", "name", "description",
    "parameters", "strict": false}`` (not strict: any JSON Schema is
    accepted); an answer is its message, then one ``{"type":
    "function_call", "call_id", "name", "arguments"}`` item per call; a
    result is ``{"type": "function_call_output", "call_id", "output"}``
    (no error flag: an error's text starts with ``Error: ``).

    Tool turns without tools: the reference states no rule that
    ``function_call`` and ``function_call_output`` items need a function
    tool in the request, so :attr:`tool_turns_need_tools` is False; where
    it is set, they go as messages (:meth:`item_as_text`).
    """

    name = "openai-responses"
    parser = Parser
    history_key = "input"
    media_limits = mediaparts.OPENAI_RESPONSES

    def message(self, message: dict) -> dict:
        """MESSAGE, its ``text`` parts (if its content is a list) as
        ``input_text`` (``output_text`` in an answer)."""
        content = message.get("content")
        if not isinstance(content, list):
            return message
        kind = "output_text" if message.get("role") == "assistant" else "input_text"
        return {**message, "content": [{**p, "type": kind} if isinstance(p, dict)
                                       and p.get("type") == "text" else p for p in content]}

    def media_part(self, media: Any) -> dict:
        """Responses (https://platform.openai.com/docs/guides/images-vision,
        https://platform.openai.com/docs/guides/pdf-files): ``{"type":
        "input_image", "image_url": DATA-URL or URL, "detail": "auto"}``; a
        document ``{"type": "input_file", "filename", "file_data":
        DATA-URL}`` or ``{"type": "input_file", "file_url"}``."""
        if media.kind == "image":
            return {"type": "input_image", "image_url": media.url or media.data_url(),
                    "detail": "auto"}
        if media.url:
            return {"type": "input_file", "file_url": media.url}
        return {"type": "input_file", "filename": media.filename, "file_data": media.data_url()}

    def add_context(self, body: dict, text: str) -> None:
        """Put TEXT (a request's rendered context) after the system prompt:
        after the template's ``instructions`` when it has them, else as
        :meth:`base.Dialect.add_context` does, in a ``system`` message of
        ``input``.  OpenAI caches a repeated prefix by itself, which the
        same context's same bytes let hit.
        https://platform.openai.com/docs/guides/prompt-caching"""
        if isinstance(body.get("instructions"), str) and body["instructions"]:
            body["instructions"] = base.joined(body["instructions"], text)
        else:
            super().add_context(body, text)

    def assistant_message(self, text: str, tool_calls: list[dict] | None = None) -> list[dict]:
        """An answer: its message (if it has text, or no calls), then one
        ``function_call`` item per call of TOOL_CALLS."""
        items: list[dict] = [{"role": "assistant", "content": text}] if text or not tool_calls else []
        items += [{"type": "function_call", "call_id": call["id"], "name": call["name"],
                   "arguments": call["arguments"]} for call in tool_calls or ()]
        return items

    def item_as_text(self, item: Any, names: dict[str, str]) -> tuple[Any, str | None]:
        """ITEM, a ``function_call`` item as an assistant message (group
        ``calls``) and a ``function_call_output`` item as a user message
        (group ``results``; see :mod:`chatpipe.dialects.toolturns`)."""
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "function_call":
            names[item.get("call_id")] = item.get("name")
            return {"role": "assistant", "content": toolturns.call_text(
                item.get("name"), item.get("arguments"))}, "calls"
        if kind == "function_call_output":
            return {"role": "user", "content": toolturns.result_text(
                names.get(item.get("call_id")), toolturns.text_of(item.get("output")))}, "results"
        return item, None

    def add_tool_result(self, conversation: list, result: dict) -> None:
        """Append RESULT as a ``function_call_output`` item; with images,
        its ``output`` is a list of ``input_text`` and ``input_image``
        parts (https://platform.openai.com/docs/api-reference/responses/create,
        ``function_call_output.output``)."""
        images, notes = mediaparts.tool_images(self.media_limits, result)
        text = base.error_text({**result, "images": []}) + notes
        output: Any = [{"type": "input_text", "text": text},
                       *map(self.media_part, images)] if images else text
        conversation.append({"type": "function_call_output", "call_id": result["tool_call_id"],
                             "output": output})

    def add_tools(self, body: dict, tools: list[dict]) -> None:
        """Offer TOOLS as ``{"type": "function", "name", "description",
        "parameters", "strict": false}``."""
        body.setdefault("tools", []).extend(
            {"type": "function", "name": t["name"], "description": t.get("description", ""),
             "parameters": base.parameters(t), "strict": False} for t in tools)

    def set_params(self, body: dict, params: dict) -> None:
        """Set PARAMS as ``temperature`` and ``max_output_tokens``:
        https://platform.openai.com/docs/api-reference/responses/create"""
        if "temperature" in params:
            body["temperature"] = params["temperature"]
        if "max_tokens" in params:
            body["max_output_tokens"] = params["max_tokens"]
