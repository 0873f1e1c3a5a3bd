"""Ollama's native chat stream: ``POST /api/chat``, NDJSON, not SSE.

Format: https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion
One JSON object per line::

    {"model": "llama3.2", "message": {"role": "assistant", "content": "Hi"}, "done": false}
    {"model": "llama3.2", "message": {"role": "assistant", "thinking": "..."}, "done": false}
    {"message": {"tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]}, "done": false}
    {"done": true, "done_reason": "stop", "prompt_eval_count": 26, "eval_count": 290, ...}
    {"error": "model 'x' not found"}

``message.content`` is text, ``message.thinking`` reasoning; tool calls come
whole, with ``arguments`` as an object.  The ``done: true`` line ends the
stream and carries the token counts; a ``done: true`` line with no
``done_reason`` after no content is an error.  Errors can come as an
``error`` line on an HTTP 200 response.  Messages use the OpenAI
``{"role", "content"}`` shape.

With ``"stream": false`` the answer is one such object with ``done: true``
and the whole message (``application/json``): it is read as a one-line
stream, or by :meth:`Parser.parse_document`.
"""

from __future__ import annotations

import json
from typing import Any, Iterable
from urllib.parse import urlsplit, urlunsplit

from chatpipe import media, protocol
from chatpipe.dialects import base, mediaparts, modellist
from chatpipe.dialects.providererrors import stream_error
from chatpipe.dialects.base import parse_json
from chatpipe.errors import StreamError

#: Ollama ``done_reason`` -> OpenAI ``finish_reason``.
FINISH = {"stop": "stop", "length": "length"}


class Parser(base.Parser):
    """Parser of ``/api/chat`` NDJSON lines; see the module docstring."""

    framing = "ndjson"
    terminator = 'a line with "done": true'

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def parse(self, event: Any) -> Iterable[dict]:
        """Return the protocol events for one NDJSON line.

        Raises:
            StreamError: an ``error`` line; a ``done`` line without a
                ``done_reason`` after no content.
            MalformedEvent: a line that is not a JSON object.
        """
        return self._parse(parse_json(event.data))

    def parse_document(self, doc: Any) -> list[dict]:
        """Return the protocol events for a non-streaming answer DOC: one
        ``/api/chat`` object with ``done: true``, parsed as a line.

        Raises:
            StreamError: DOC is not an object, is an error, is not done, or
                has no content and no ``done_reason``.
        """
        if not isinstance(doc, dict):
            raise StreamError("the server's JSON answer is not an /api/chat object: "
                              f"{json.dumps(doc, ensure_ascii=False)[:200]}")
        out = self._parse(doc)
        if not self.done:
            raise StreamError('the server\'s JSON answer is not done ("done": true missing)')
        return out

    def _parse(self, line: dict) -> list[dict]:
        if "error" in line:
            raise stream_error(line)
        out = []
        message = line.get("message") or {}
        if message.get("thinking"):
            out.append(protocol.reasoning(message["thinking"]))
        if message.get("content"):
            out.append(protocol.delta(message["content"]))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            arguments = function.get("arguments")
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments if arguments is not None else {},
                                       ensure_ascii=False)
            out.extend(self.tool_call(self.calls, arguments, call.get("id"), function.get("name")))
            self.calls += 1
        if out:
            self.content = True
        if line.get("done"):
            raw = line.get("done_reason")
            if raw is None and not self.content:
                raise self.empty_answer()
            self.done = True
            normalised = FINISH.get(raw, "stop")
            if normalised == "stop" and self.has_tool_calls:
                normalised = "tool_calls"
            if "prompt_eval_count" in line or "eval_count" in line:
                out.append(protocol.usage(line.get("prompt_eval_count"), line.get("eval_count")))
            out.append(protocol.done(normalised, raw))
        return out


class Dialect(base.Dialect):
    """Ollama ``/api/chat``: the OpenAI ``messages`` shape.

    Tools (https://github.com/ollama/ollama/blob/main/docs/api.md#chat-request-with-tools):
    definitions as OpenAI chat's (``{"type": "function", "function": {...}}``);
    an answer's calls ``{"function": {"name", "arguments": {...}}}`` with
    the arguments as an object and no id; a result ``{"role": "tool",
    "content", "tool_name"}`` (no error flag: an error's text starts with
    ``Error: ``).

    Tool turns without tools: the reference states no rule that
    ``tool_calls`` and ``tool`` messages need ``tools`` (the model's own
    template renders them), so :attr:`tool_turns_need_tools` is False
    (where it is set: the base :meth:`item_as_text`).
    """

    name = "ollama"
    parser = Parser
    media_limits = mediaparts.OLLAMA

    def message(self, message: dict) -> dict:
        """MESSAGE with a list content's text parts joined into its
        ``content`` string (Ollama takes no parts); its media parts stay
        for :meth:`put_media`."""
        content = message.get("content")
        if not isinstance(content, list) or any(media.is_media(p) for p in content):
            return message
        return {**message, "content": _text(content)}

    def put_media(self, item: dict, found: list) -> None:
        """ITEM's images as ``images``, a list of bare base64 strings, and
        its text parts as its ``content`` string:
        https://docs.ollama.com/api/chat (``messages[].images``).  Ollama
        takes no documents: a PDF is refused before (its types)."""
        item["images"] = [*item.get("images", []), *(m.base64() for _, m in found)]
        item["content"] = _text(item.get("content"))

    def assistant_message(self, text: str, tool_calls: list[dict] | None = None) -> list[dict]:
        """An answer: its TEXT and TOOL_CALLS (arguments as objects)."""
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_calls:
            message["tool_calls"] = [
                {"function": {"name": call["name"],
                              "arguments": base.arguments_object(call["arguments"])}}
                for call in tool_calls]
        return [message]

    def add_tool_result(self, conversation: list, result: dict) -> None:
        """Append RESULT as ``{"role": "tool", "content", "tool_name"}``."""
        conversation.append({"role": "tool", "content": base.error_text(result),
                             "tool_name": result.get("name") or ""})

    def set_params(self, body: dict, params: dict) -> None:
        """Set PARAMS in ``options`` (``temperature``, ``num_predict``):
        https://github.com/ollama/ollama/blob/main/docs/modelfile.md#valid-parameters-and-values"""
        options = body.setdefault("options", {})
        if "temperature" in params:
            options["temperature"] = params["temperature"]
        if "max_tokens" in params:
            options["num_predict"] = params["max_tokens"]

    def streaming_hint(self, url: str | None, body: dict) -> str | None:
        """Ollama streams unless the body says ``"stream": false``."""
        return None if body.get("stream", True) is not False else 'remove "stream": false'

    def models_request(self, url: str, headers: dict[str, str],
                       ) -> tuple[str, dict[str, str], dict[str, str]] | None:
        """``GET {host}/api/tags`` (the URL's path cut at ``/api/``):
        https://docs.ollama.com/api/tags"""
        parts = urlsplit(url)
        path = parts.path.rstrip("/")
        cut = path.find("/api/")
        base_path = path[:cut] if cut >= 0 else path
        return urlunsplit((parts.scheme, parts.netloc, base_path + "/api/tags", parts.query, "")), headers, {}

    def parse_models(self, doc: Any) -> tuple[list[dict[str, Any]], dict[str, str] | None] | None:
        """``{"models": [{"name", "model", "modified_at", "size", "digest",
        "details"}]}``, one page."""
        items = modellist.list_items(doc, "models")
        if items is None:
            return None
        models = [modellist.model_entry(m.get("name") or m.get("model")) for m in items]
        return [m for m in models if m is not None], None


def _text(content: Any) -> str:
    """The text of CONTENT, a string or a list of parts (its ``text``
    parts joined by blank lines)."""
    if not isinstance(content, list):
        return content if isinstance(content, str) else ""
    return "\n\n".join(p["text"] for p in content if isinstance(p, dict)
                        and p.get("type") == "text" and isinstance(p.get("text"), str))
