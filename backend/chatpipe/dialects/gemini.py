"""The Gemini ``streamGenerateContent`` stream (with ``?alt=sse``).

Format: https://ai.google.dev/api/generate-content#method:-models.streamgeneratecontent
Each server-sent event's data is a ``GenerateContentResponse``::

    data: {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]},
           "index": 0}], "usageMetadata": {"promptTokenCount": 5, ...}}
    data: {"candidates": [{"content": {"parts": [{"text": "!"}]},
           "finishReason": "STOP"}], "usageMetadata": {...}}

Parts with ``"thought": true`` are reasoning; ``functionCall`` parts are
whole tool calls (``args`` is an object).  ``usageMetadata`` is cumulative:
the last one is emitted.  ``promptFeedback.blockReason`` means the prompt was
blocked.  There is no terminator: a stream is complete when a candidate has
a ``finishReason`` and the body ends.  The model is part of the URL
(``models/NAME:streamGenerateContent``).

Not streamed, the answer is one JSON document (``application/json``):
``generateContent`` answers one ``GenerateContentResponse``
(https://ai.google.dev/api/generate-content#v1beta.GenerateContentResponse),
and ``streamGenerateContent`` without ``alt=sse`` the JSON array of the
chunks it would have streamed; :meth:`Parser.parse_document` takes both.

Request shape: https://ai.google.dev/api/generate-content#request-body
(``contents`` with roles ``user`` and ``model``, ``systemInstruction``).
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from chatpipe import media, protocol
from chatpipe.dialects import base, mediaparts, modellist, toolturns
from chatpipe.dialects.providererrors import stream_error
from chatpipe.dialects.base import SYSTEM_ROLES, MalformedEvent, parse_json
from chatpipe.errors import StreamError

#: Gemini ``finishReason`` -> OpenAI ``finish_reason`` (others: ``stop``).
FINISH = {"MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
          "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter",
          "SPII": "content_filter", "IMAGE_SAFETY": "content_filter"}


class Parser(base.Parser):
    """Parser of ``GenerateContentResponse`` events; see the module docstring."""

    terminator = "a chunk with a finishReason"
    not_streaming_hint = "add ?alt=sse to the streamGenerateContent URL"

    def __init__(self) -> None:
        super().__init__()
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.calls = 0

    def parse(self, event: Any) -> Iterable[dict]:
        """Return the protocol events for one server-sent event.

        Raises:
            StreamError: an ``error`` payload, or a blocked prompt.
            MalformedEvent: data that is not JSON.
        """
        try:
            payloads = [parse_json(event.data)]
        except MalformedEvent:
            # Some servers separate events by a single LF: one data line each.
            if "\n" not in event.data:
                raise
            payloads = [parse_json(line) for line in event.data.split("\n") if line.strip()]
        out: list[dict] = []
        for payload in payloads:
            out.extend(self._parse(payload))
        return out

    def _parse(self, chunk: dict) -> list[dict]:
        if "error" in chunk:
            raise stream_error(chunk)
        blocked = (chunk.get("promptFeedback") or {}).get("blockReason")
        if blocked:
            raise StreamError(f"the prompt was blocked ({blocked})")
        out: list[dict] = []
        for candidate in chunk.get("candidates") or ():
            if candidate.get("index", 0) != 0:
                continue
            for part in (candidate.get("content") or {}).get("parts") or ():
                if "functionCall" in part:
                    call = part["functionCall"]
                    out.extend(self.tool_call(
                        self.calls, json.dumps(call.get("args") or {}, ensure_ascii=False),
                        call.get("id"), call.get("name"), part.get("thoughtSignature")))
                    self.calls += 1
                elif part.get("text"):
                    make = protocol.reasoning if part.get("thought") else protocol.delta
                    out.append(make(part["text"]))
            if candidate.get("finishReason"):
                self.finish_reason = candidate["finishReason"]
        if chunk.get("usageMetadata"):
            self.usage = usage_event(chunk["usageMetadata"])
        return out

    def parse_document(self, doc: Any) -> list[dict]:
        """Return the protocol events for a non-streaming answer DOC: one
        ``GenerateContentResponse``, or the JSON array of them that
        ``streamGenerateContent`` gives without ``alt=sse``, each element
        parsed as a chunk.  The reasoning and the text come as one event
        each, then the tool calls, ``usage`` and ``done``.

        Raises:
            StreamError: an element is not an object, or is an error or a
                blocked prompt; no candidate has a ``finishReason``.
        """
        events: list[dict] = []
        for chunk in doc if isinstance(doc, list) else [doc]:
            if not isinstance(chunk, dict):
                raise StreamError("the server's JSON answer is not a GenerateContentResponse: "
                                  f"{json.dumps(chunk, ensure_ascii=False)[:200]}")
            events.extend(self._parse(chunk))
        if self.finish_reason is None:
            raise StreamError("the server's JSON answer has no candidate with a finishReason")
        out = self.document_events((e["type"], e["content"]) for e in events
                                   if e["type"] != "tool_call")
        out.extend(e for e in events if e["type"] == "tool_call")
        return out + list(self.end())

    def end(self) -> Iterable[dict]:
        """At the end of the body: ``usage`` and ``done`` if a candidate
        finished, else the stream ended early.

        Raises:
            StreamError: no ``finishReason`` was seen.
        """
        if self.finish_reason is None:
            return super().end()
        self.done = True
        raw = self.finish_reason
        normalised = FINISH.get(raw, "tool_calls" if self.has_tool_calls else "stop")
        return ([self.usage] if self.usage else []) + [protocol.done(normalised, raw)]


def usage_event(meta: dict) -> dict:
    """Turn ``usageMetadata`` into a protocol ``usage`` event (tokens).

    Output tokens count the thinking tokens too (also given as
    ``reasoning_tokens``), so that input + output = total.
    """
    thoughts = meta.get("thoughtsTokenCount")
    output = meta.get("candidatesTokenCount")
    if thoughts is not None:
        output = (output or 0) + thoughts
    return protocol.usage(meta.get("promptTokenCount"), output, meta.get("totalTokenCount"),
                          reasoning_tokens=thoughts,
                          cached_tokens=meta.get("cachedContentTokenCount"))


def _provider_id(call_id: Any) -> bool:
    """Whether CALL_ID is one Gemini gave (not one chatpipe made up)."""
    return isinstance(call_id, str) and bool(call_id) and not call_id.startswith(base.LOCAL_CALL_ID)


def _parts(content: Any) -> list[dict]:
    """CONTENT (a string or a list of neutral parts) as Gemini parts: text
    parts as ``{"text"}``; media parts are kept, for :meth:`Dialect.media_part`."""
    if isinstance(content, list):
        return [p if media.is_media(p) else {"text": p.get("text", "")}
                if isinstance(p, dict) else {"text": str(p)} for p in content]
    return [{"text": content or ""}]


class Dialect(base.Dialect):
    """Gemini: ``contents`` with roles ``user`` and ``model``, the system
    prompt in ``systemInstruction``, the model in the URL.

    Tools (https://ai.google.dev/gemini-api/docs/function-calling,
    https://ai.google.dev/api/caching#FunctionDeclaration): definitions go
    in ``tools: [{"functionDeclarations": [{"name", "description",
    "parametersJsonSchema"}]}]`` (JSON Schema as is); an answer's calls are
    ``functionCall`` parts ``{"functionCall": {"name", "args", "id"},
    "thoughtSignature"}`` (the signature sent back as it came, which
    Gemini 3 requires: https://ai.google.dev/gemini-api/docs/thought-signatures);
    the results of one answer are ``functionResponse`` parts in one
    ``user`` content, ``{"functionResponse": {"name", "id", "response":
    {"output": TEXT}}}``, ``{"error": TEXT}`` for an error
    (https://ai.google.dev/api/caching#FunctionResponse).  Call ids are
    sent only when Gemini gave them.  The neutral ``thinking`` of an
    answer is dropped: Gemini's own rule is the signature of each call.

    Tool turns without tools: a ``functionResponse``'s ``name`` "matches
    FunctionDeclaration.name and FunctionCall.name"
    (https://ai.google.dev/api/caching#FunctionResponse), and a
    third-party report has the API refuse (HTTP 400, "Request contains an
    invalid argument") one whose name no declaration has.  Yet
    :attr:`tool_turns_need_tools` is False here: the turns go back as they
    are; set, they go as ``text`` parts (:meth:`item_as_text`).
    """

    name = "gemini"
    parser = Parser
    history_key = "contents"
    media_limits = mediaparts.GEMINI
    parts_key = "parts"

    def media_part(self, media: Any) -> dict:
        """An ``inlineData`` part ``{"mimeType", "data": BASE64}``:
        https://ai.google.dev/api/caching#Blob,
        https://ai.google.dev/gemini-api/docs/image-understanding
        (URLs are refused before: Gemini reads ``fileData`` only from its
        Files API)."""
        return {"inlineData": {"mimeType": media.mime_type, "data": media.base64()}}

    def add_messages(self, body: dict, messages: list[dict]) -> None:
        """Append MESSAGES (neutral, see :class:`base.Dialect`) to
        ``body["contents"]`` as Gemini contents (role ``assistant`` becomes
        ``model``); a system message becomes ``systemInstruction``,
        replacing the template's."""
        for m in messages:
            if m.get("role") in SYSTEM_ROLES:
                body["systemInstruction"] = {"parts": _parts(m.get("content"))}
        super().add_messages(body, [m for m in messages if m.get("role") not in SYSTEM_ROLES])

    def add_context(self, body: dict, text: str) -> None:
        """Put TEXT (a request's rendered context) after the system prompt:
        one more part of ``systemInstruction``.  Gemini caches a repeated
        prefix by itself (implicit caching), which the same context's
        same bytes let hit.
        https://ai.google.dev/gemini-api/docs/caching"""
        instruction = body.get("systemInstruction")
        parts = instruction.get("parts") if isinstance(instruction, dict) else None
        parts = list(parts) if isinstance(parts, list) else []
        body["systemInstruction"] = {**(instruction if isinstance(instruction, dict) else {}),
                                     "parts": [*parts, {"text": text}]}

    def message(self, message: dict) -> dict:
        """A message as a content of role ``user`` or ``model``."""
        role = "model" if message.get("role") == "assistant" else "user"
        return {"role": role, "parts": _parts(message.get("content"))}

    def assistant_message(self, text: str, tool_calls: list[dict] | None = None) -> list[dict]:
        """An answer: its TEXT part (if any, or if there are no calls) and
        one ``functionCall`` part per call of TOOL_CALLS."""
        parts: list[dict] = [{"text": text}] if text or not tool_calls else []
        for call in tool_calls or ():
            function: dict[str, Any] = {"name": call["name"],
                                        "args": base.arguments_object(call["arguments"])}
            if _provider_id(call.get("id")):
                function["id"] = call["id"]
            part: dict[str, Any] = {"functionCall": function}
            if call.get("signature"):
                part["thoughtSignature"] = call["signature"]
            parts.append(part)
        return [{"role": "model", "parts": parts}]

    def add_tool_result(self, conversation: list, result: dict) -> None:
        """Add a ``functionResponse`` part to the ``user`` content of
        results that ends CONVERSATION, or start one."""
        key = "error" if result.get("is_error") else "output"
        response: dict[str, Any] = {"name": result.get("name") or "",
                                    "response": {key: (result.get("content") or "") + "".join(
                                        mediaparts.image_note(p, "chatpipe sends no images in "
                                                              "Gemini function responses")
                                        for p in result.get("images") or ())}}
        if _provider_id(result.get("tool_call_id")):
            response["id"] = result["tool_call_id"]
        part = {"functionResponse": response}
        last = conversation[-1] if conversation else None
        if (isinstance(last, dict) and last.get("role") == "user" and last.get("parts")
                and all(isinstance(p, dict) and "functionResponse" in p for p in last["parts"])):
            last["parts"].append(part)
        else:
            conversation.append({"role": "user", "parts": [part]})

    def offers_tools(self, body: dict) -> bool:
        """Whether BODY declares a function (``functionDeclarations`` in a
        ``tools`` entry; ``googleSearch`` alone declares none)."""
        tools = body.get("tools")
        return isinstance(tools, list) and any(
            isinstance(t, dict) and t.get("functionDeclarations") for t in tools)

    def item_as_text(self, item: Any, names: dict[str, str]) -> tuple[Any, str | None]:
        """ITEM (a content) with its ``functionCall`` and ``functionResponse``
        parts as ``text`` parts (see :mod:`chatpipe.dialects.toolturns`)."""
        parts = item.get("parts") if isinstance(item, dict) else None
        if not isinstance(parts, list):
            return item, None
        out = []
        for part in parts:
            call = part.get("functionCall") if isinstance(part, dict) else None
            response = part.get("functionResponse") if isinstance(part, dict) else None
            if isinstance(call, dict):
                part = {"text": toolturns.call_text(call.get("name"), call.get("args") or {})}
            elif isinstance(response, dict):
                value = response.get("response")
                value = value if isinstance(value, dict) else {"output": value}
                failed = "error" in value and "output" not in value
                part = {"text": toolturns.result_text(
                    response.get("name"), value.get("error" if failed else "output", value), failed)}
            out.append(part)
        return {**item, "parts": out}, None

    def add_tools(self, body: dict, tools: list[dict]) -> None:
        """Offer TOOLS as one ``functionDeclarations`` tool."""
        body.setdefault("tools", []).append({"functionDeclarations": [
            {"name": t["name"], "description": t.get("description", ""),
             "parametersJsonSchema": base.parameters(t)} for t in tools]})

    def set_params(self, body: dict, params: dict) -> None:
        """Set PARAMS in ``generationConfig`` (``temperature``,
        ``maxOutputTokens``): https://ai.google.dev/api/generate-content#generationconfig"""
        config = body.setdefault("generationConfig", {})
        if "temperature" in params:
            config["temperature"] = params["temperature"]
        if "max_tokens" in params:
            config["maxOutputTokens"] = params["max_tokens"]

    def model_of(self, request: Any) -> str | None:
        """The model in REQUEST's URL (``.../models/NAME:streamGenerateContent``)."""
        match = re.search(r"/models/([^/:?]+):", request.url)
        return match.group(1) if match else None

    def set_model(self, request: Any, model: str) -> None:
        """Put MODEL in REQUEST's URL (``.../models/MODEL:streamGenerateContent``)."""
        request.url = re.sub(r"/models/[^/:?]+:", f"/models/{model}:", request.url, count=1)

    def streaming_hint(self, url: str | None, body: dict) -> str | None:
        """Gemini streams at ``models/NAME:streamGenerateContent?alt=sse``."""
        if "alt=sse" in (url or "") and ":streamGenerateContent" in (url or ""):
            return None
        return "use models/NAME:streamGenerateContent?alt=sse in the url"

    def models_request(self, url: str, headers: dict[str, str],
                       ) -> tuple[str, dict[str, str], dict[str, str]] | None:
        """``GET https://HOST/VERSION/models`` (host and version of URL; a
        ``key`` in its query goes on, ``alt=sse`` does not), in pages of
        ``pageSize`` (at most 1000): https://ai.google.dev/api/models#method:-models.list"""
        parts = urlsplit(url)
        path = parts.path.rstrip("/")
        cut = path.find("/models/")
        if cut < 0 and path.endswith("/models"):
            cut = len(path) - len("/models")
        if cut < 0:
            return None
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k == "key"])
        where = urlunsplit((parts.scheme, parts.netloc, path[:cut] + "/models", query, ""))
        return where, headers, {"pageSize": "1000"}

    def parse_models(self, doc: Any) -> tuple[list[dict[str, Any]], dict[str, str] | None] | None:
        """``{"models": [{"name": "models/ID", "displayName",
        "supportedGenerationMethods", "inputTokenLimit", ...}], "nextPageToken"}``, continued
        with ``pageToken``.  Ids are listed without ``models/``; a model that
        gives its ``supportedGenerationMethods`` only when they include
        ``streamGenerateContent`` or ``generateContent`` (the API lists
        ``generateContent`` for the models that stream, as Google's own
        example filters on it)."""
        items = modellist.list_items(doc, "models")
        if items is None:
            return None
        models = [modellist.model_entry(_model_id(m), display_name=m.get("displayName"),
                                        context_window=m.get("inputTokenLimit"))
                  for m in items if _streams(m)]
        token = doc.get("nextPageToken")
        following = {"pageSize": "1000", "pageToken": token} if isinstance(token, str) and token else None
        return [m for m in models if m is not None], following


def _streams(model: dict) -> bool:
    """Whether a listed MODEL can answer ``streamGenerateContent``."""
    methods = model.get("supportedGenerationMethods")
    if not isinstance(methods, list):
        return True
    return "streamGenerateContent" in methods or "generateContent" in methods


def _model_id(model: dict) -> str | None:
    """A listed MODEL's id: its name without ``models/``."""
    name = model.get("name")
    return name.removeprefix("models/") if isinstance(name, str) else None
