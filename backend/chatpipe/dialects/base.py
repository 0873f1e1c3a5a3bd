"""What every API dialect shares: the base classes and the common helpers.

A dialect module defines two classes:

- a :class:`Parser` subclass, which turns one response's events (server-sent
  events as parsed by sseclient-py, or NDJSON lines; see
  :mod:`chatpipe.framing`) into protocol events built with the
  constructors of :mod:`chatpipe.protocol`;
- a :class:`Dialect` subclass, which knows the API's request shape: how to
  append chat messages, record an answer, offer tools and send their
  results back, and set the model.

Provider error payloads are read in one place,
:func:`chatpipe.dialects.providererrors.provider_error`, for HTTP error
bodies and in-stream errors alike.

Everything chatpipe knows of an API is in its dialect: the request shape,
the stream, the model a request asks for (:meth:`Dialect.model_of`, in the
``start`` event), the template's streaming warning
(:meth:`Dialect.streaming_hint`), the conversation field
(:attr:`Dialect.history_key`, for ``--save``), and the model list
(:meth:`Dialect.models_request`, :meth:`Dialect.parse_models`).  So a new
API is one new module here, named in :data:`chatpipe.dialects.DIALECTS`,
plus a template whose ``chatpipe.api`` is its name.

A dialect outside the package is registered at run time, in the process
that uses it, with :func:`chatpipe.dialects.register`; a program that
wraps the CLI registers it, then calls :func:`chatpipe.cli.main`.  There is
no plugin discovery (no entry points, no environment variable that names a
module): chatpipe imports no code that its caller did not import first.
tests/test_extra_dialect.py does this: run as a script, it registers its
toy dialect and runs the CLI.
"""

from __future__ import annotations

import json
from typing import Any, Hashable, Iterable
from urllib.parse import urlsplit, urlunsplit

import orjson

from chatpipe import protocol
from chatpipe.dialects import mediaparts, toolturns
from chatpipe.dialects.modellist import input_media, list_items, model_entry
from chatpipe.errors import StreamError

#: The text events of a non-streaming answer, in the order they are emitted.
_TEXT_EVENTS = (("reasoning", protocol.reasoning), ("delta", protocol.delta),
                ("refusal", protocol.refusal))

#: Roles of the messages that set the system prompt.
SYSTEM_ROLES = ("system", "developer")


class MalformedEvent(Exception):
    """An event whose data is not what the dialect expects (e.g. not JSON).

    The stream loop treats it as "ended early" when it is the last event
    (a cut-off event), and as a protocol error otherwise.
    """


_raw_decode = json.JSONDecoder().raw_decode


def parse_json(data: str) -> dict:
    """Parse an event's DATA as a JSON object.

    orjson parses it (four times as fast as the standard library on the
    small objects of a stream: this is the hot path of every answer); what
    orjson refuses but Python's own ``json`` reads (a lone surrogate escape,
    ``NaN``, whitespace after the value) is read
    by ``json``, so that both accept the same input.

    Raises:
        MalformedEvent: not JSON, or not an object.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            value, end = _raw_decode(data)
        except (ValueError, RecursionError):
            raise MalformedEvent(data) from None
        if end != len(data) and data[end:].strip():
            raise MalformedEvent(data) from None
    if not isinstance(value, dict):
        raise MalformedEvent(data)
    return value


def joined(content: Any, text: str) -> Any:
    """CONTENT (a string, a list of content parts, or None) with TEXT after
    it: a blank line between two strings, or one more part of the first
    part's type (``text``, ``input_text``)."""
    if isinstance(content, list):
        kind = next((p.get("type") for p in content if isinstance(p, dict) and "text" in p), "text")
        return [*content, {"type": kind, "text": text}]
    return f"{content}\n\n{text}" if isinstance(content, str) and content else text


def token_details(output_details: Any, input_details: Any) -> dict:
    """``reasoning_tokens`` and ``cached_tokens`` from OpenAI-style
    ``*_tokens_details`` objects, as keyword arguments of
    :func:`chatpipe.protocol.usage` (only those given)."""
    extra = {}
    if isinstance(output_details, dict) and output_details.get("reasoning_tokens") is not None:
        extra["reasoning_tokens"] = output_details["reasoning_tokens"]
    if isinstance(input_details, dict) and input_details.get("cached_tokens") is not None:
        extra["cached_tokens"] = input_details["cached_tokens"]
    return extra


#: The start of the call ids chatpipe makes up for calls that come without
#: one (Gemini, Ollama): such ids are never sent back to the provider.
LOCAL_CALL_ID = "chatpipe_"


def arguments_object(arguments: Any) -> dict:
    """A neutral call's ARGUMENTS (a JSON text) as the object that some APIs
    take (Anthropic ``input``, Gemini ``args``, Ollama ``arguments``): ``{}``
    when empty, not valid JSON or not an object."""
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def error_text(result: dict) -> str:
    """A neutral tool RESULT's ``content``, as ``Error: CONTENT`` when it is
    an error, for the APIs whose results have no error flag (OpenAI chat,
    Responses, Ollama), with a note for each of its ``images``."""
    content = result.get("content") or ""
    content = f"Error: {content}" if result.get("is_error") else content
    return content + "".join(mediaparts.image_note(p, "this API takes no images in tool results")
                             for p in result.get("images") or ())


class Done(dict):
    """A ``done`` event (a plain dict to all else) whose attribute
    ``thinking`` holds the neutral ``thinking`` of the answer (see
    :class:`Dialect`), for :class:`chatpipe.tools.Loop` alone."""

    thinking: list[dict] = []


def parameters(tool: dict) -> dict:
    """The JSON Schema of a neutral TOOL's arguments (an object with no
    properties when it has none)."""
    schema = tool.get("parameters")
    return schema if isinstance(schema, dict) and schema else {"type": "object", "properties": {}}


class Parser:
    """Turns one response's events into protocol events.

    Attributes:
        framing: ``"sse"`` (server-sent events) or ``"ndjson"`` (one JSON
            object per line).
        terminator: what ends a complete stream, for the "ended early" message.
        not_streaming_hint: advice for an endpoint that did not stream.
        done: True once the stream's terminator has been seen; the caller
            stops reading then.
        content: True once content (text, reasoning, refusal, a tool call)
            was seen, for the dialects that refuse an empty answer
            (:meth:`empty_answer`).
    """

    framing = "sse"
    terminator = "the end-of-stream event"
    not_streaming_hint = 'set "stream": true in the template'

    def __init__(self) -> None:
        self.done = False
        self.content = False
        self._tool_indexes: dict[Hashable, int] = {}

    def parse(self, event: Any) -> Iterable[dict]:
        """Return the protocol events for one event.

        EVENT has ``.event`` (the SSE event type, ``"message"`` by default)
        and ``.data`` (a string).

        Raises:
            chatpipe.errors.StreamError: the provider reported an error in
                the stream.
            MalformedEvent: the event's data cannot be parsed.
        """
        raise NotImplementedError

    def parse_document(self, doc: Any) -> list[dict]:
        """Return the protocol events for a whole non-streaming answer DOC
        (the parsed JSON body of a request sent without ``"stream": true``).

        Dialects give, as their streams would: the whole text as one
        ``delta``, with ``reasoning``, ``refusal`` and ``tool_call``
        events, then ``usage``, then ``done``; and set :attr:`done`.  This
        base version refuses the document.

        Raises:
            StreamError: always here (not retryable), with
                :attr:`not_streaming_hint`; in dialects, when DOC is not
                an answer of the API's shape, or has neither content nor a
                finish reason (:meth:`empty_answer`).
        """
        raise StreamError("the endpoint answered with one JSON document, not a stream "
                          f"of server-sent events: {self.not_streaming_hint}")

    @staticmethod
    def empty_answer() -> StreamError:
        """The (not retryable) error for an answer that ends without any
        content and without a finish reason: what llama-cpp-python sends to
        a request that a newer one interrupted, a bare terminator."""
        return StreamError("the server ended the answer without content or a finish reason")

    def end(self) -> Iterable[dict]:
        """Return the last events when the body ends before :attr:`done`.

        Most APIs end with a terminator, so by default this raises.

        Raises:
            StreamError: the stream ended early.
        """
        raise StreamError(f"the stream ended early: the connection closed before "
                          f"{self.terminator}", retryable=True)

    def tool_call(self, key: Hashable, arguments: str, call_id: str | None = None,
                  name: str | None = None, signature: str | None = None) -> list[dict]:
        """``[tool_call event]`` for a fragment of the arguments of the
        provider's tool call KEY, numbered 0, 1, ... in order of appearance;
        ``[]`` for an empty fragment that brings no id or name either.
        CALL_ID, NAME and SIGNATURE (Gemini's thought signature) come with a
        call's first fragment."""
        index = self._tool_indexes.get(key)
        if index is None:
            index = self._tool_indexes[key] = len(self._tool_indexes)
        if not (arguments or call_id or name):
            return []
        return [protocol.tool_call(index, arguments, call_id, name, signature)]

    def document_events(self, texts: Iterable[tuple[str, str]]) -> list[dict]:
        """The content events of a non-streaming answer: TEXTS are
        ``(kind, text)`` pairs, kind ``"reasoning"``, ``"delta"`` or
        ``"refusal"``; the texts of each kind are joined (with nothing
        between them, as a stream's pieces join) into one event, in that
        order; empty and non-string texts give nothing."""
        joined: dict[str, list[str]] = {"reasoning": [], "delta": [], "refusal": []}
        for kind, text in texts:
            if text and isinstance(text, str):
                joined[kind].append(text)
        return [make("".join(joined[kind])) for kind, make in _TEXT_EVENTS if joined[kind]]

    @property
    def has_tool_calls(self) -> bool:
        """Whether any tool call was seen."""
        return bool(self._tool_indexes)


class Dialect:
    """An API's request shape.  The default is OpenAI chat's: a
    ``messages`` list of ``{"role", "content"}`` objects and a ``model``.

    Front ends speak one neutral shape (docs/protocol.md, "Tools"), which
    each dialect converts to its API's own in :meth:`add_messages`,
    :meth:`assistant_message`, :meth:`add_tool_result` and
    :meth:`add_tools`:

    - a tool definition: ``{"name", "description", "parameters": <JSON Schema>}``;
    - an answer that calls tools: ``{"role": "assistant", "content": TEXT
      (may be empty), "tool_calls": [{"id", "name", "arguments": JSON-TEXT}]}``
      (a call may also carry ``signature``, Gemini's thought signature);
    - a tool's result: ``{"role": "tool", "tool_call_id", "name", "content":
      TEXT, "is_error": BOOL}``;
    - an answer that calls tools may carry ``thinking``: what the API must
      get back with it, opaque (Anthropic's thinking blocks
      ``{"text", "signature"}`` and redacted ones ``{"data"}``: see
      :meth:`add_thinking`); other dialects drop it.

    A request that offers no tools gets its history's tool turns as text
    where the API refuses them (:attr:`tool_turns_need_tools`).

    OpenAI chat (https://platform.openai.com/docs/api-reference/chat/create,
    https://platform.openai.com/docs/guides/function-calling): tools are
    ``{"type": "function", "function": {"name", "description",
    "parameters"}}``; the answer ``{"role": "assistant", "content": TEXT or
    null, "tool_calls": [{"id", "type": "function", "function": {"name",
    "arguments"}}]}``; a result ``{"role": "tool", "tool_call_id",
    "content"}``, which has no error flag, so an error's text starts with
    ``Error: ``.

    Attributes:
        name: the dialect's name (a template's ``chatpipe.api``).
        parser: the :class:`Parser` subclass for its streams.
        history_key: the body key that holds the conversation.
        tool_turns_need_tools: whether the API refuses a request whose
            conversation holds tool calls or results but that offers no
            tools: then :meth:`tool_turns_as_text` writes them as text.
        endpoint_paths: the endings of an endpoint URL's path that its model
            list's URL replaces (:meth:`models_request`).
    """

    name = "openai-chat"
    parser: type[Parser] = Parser
    history_key = "messages"
    tool_turns_need_tools = False

    def conversation(self, body: dict) -> list:
        """The conversation list of the request BODY (made a list if absent,
        or if it is a string: then its first user message)."""
        key = self.history_key
        conversation = body.get(key)
        if not isinstance(conversation, list):
            conversation = body[key] = [] if conversation is None else [
                {"role": "user", "content": conversation}]
        return conversation

    def add_messages(self, body: dict, messages: list[dict]) -> None:
        """Append MESSAGES, in the neutral shape (see the class docstring:
        ``{"role", "content"}`` messages, answers with ``tool_calls``, tool
        results), to the conversation of the request BODY, in the API's
        shape.  A system (or developer) message among them replaces the
        template's."""
        conversation = self.conversation(body)
        if any(m.get("role") in SYSTEM_ROLES for m in messages):
            conversation[:] = [m for m in conversation
                               if not (isinstance(m, dict) and m.get("role") in SYSTEM_ROLES)]
        for message in messages:
            role = message.get("role")
            if role == "tool":
                self.add_tool_result(conversation, message)
            elif role == "assistant" and message.get("tool_calls"):
                conversation.extend(self.add_thinking(self.assistant_message(
                    message.get("content") or "", message["tool_calls"]), message.get("thinking")))
            else:
                conversation.append(self.message(
                    {k: v for k, v in message.items() if k != "thinking"}))

    def message(self, message: dict) -> dict:
        """The conversation item for a MESSAGE without tool calls (here:
        the message itself)."""
        return message

    def assistant_message(self, text: str, tool_calls: list[dict] | None = None) -> list[dict]:
        """The conversation items that record an answer: its TEXT and the
        TOOL_CALLS it made (neutral calls, see the class docstring)."""
        if not tool_calls:
            return [{"role": "assistant", "content": text}]
        return [{"role": "assistant", "content": text or None, "tool_calls": [
            {"id": call["id"], "type": "function",
             "function": {"name": call["name"], "arguments": call["arguments"]}}
            for call in tool_calls]}]

    def add_thinking(self, items: list[dict], thinking: Any) -> list[dict]:
        """ITEMS (an answer's, from :meth:`assistant_message`) with the
        answer's neutral THINKING (may be None) where the API takes it;
        here it is dropped."""
        return items

    def offers_tools(self, body: dict) -> bool:
        """Whether the request BODY offers tools (a non-empty ``tools``)."""
        return bool(body.get("tools"))

    def tool_turns_as_text(self, body: dict) -> None:
        """When the API needs tools for tool turns
        (:attr:`tool_turns_need_tools`) and BODY offers none
        (:meth:`offers_tools`), rewrite the tool calls and results of its
        conversation as text (see :mod:`chatpipe.dialects.toolturns`),
        each item by :meth:`item_as_text`."""
        conversation = body.get(self.history_key)
        if (self.tool_turns_need_tools and isinstance(conversation, list)
                and not self.offers_tools(body)):
            toolturns.rewrite(conversation, self.item_as_text)

    def item_as_text(self, item: Any, names: dict[str, str]) -> tuple[Any, str | None]:
        """A conversation ITEM without tool turns, and its group (see
        :func:`chatpipe.dialects.toolturns.rewrite`).  Here OpenAI chat's
        and Ollama's shape: an assistant message's ``tool_calls`` become
        lines of its text; a ``tool`` message becomes a user message.
        OpenAI's API takes tool turns without ``tools`` (its rule is that a
        ``tool`` message answers a call of the assistant message before
        it), so :attr:`tool_turns_need_tools` is False here."""
        return toolturns.chat_item(item, names)

    def add_context(self, body: dict, text: str) -> None:
        """Put TEXT (a request's rendered context, see
        :mod:`chatpipe.contextrender`) at the end of the system prompt of
        the request BODY, after the template's or the chat's own; the same
        context gives the same bytes, so a provider's prompt cache can hit.
        Here a first ``system`` (or ``developer``) message's content, a new
        ``system`` message first if there is none."""
        conversation = self.conversation(body)
        for message in conversation:
            if isinstance(message, dict) and message.get("role") in SYSTEM_ROLES:
                message["content"] = joined(message.get("content"), text)
                return
        conversation.insert(0, {"role": "system", "content": text})

    #: What the API takes of media (:mod:`chatpipe.dialects.mediaparts`),
    #: and the key of a conversation item's content parts.
    media_limits = mediaparts.OPENAI_CHAT
    parts_key = "content"

    def media_part(self, media: Any) -> dict:
        """The API's content part for MEDIA (a :class:`chatpipe.media.Media`).
        OpenAI chat (https://platform.openai.com/docs/guides/images-vision,
        https://platform.openai.com/docs/guides/pdf-files): ``image_url``
        (a data URL, or the URL given); a document ``{"type": "file",
        "file": {"filename", "file_data": DATA-URL}}``."""
        if media.kind == "image":
            return {"type": "image_url", "image_url": {"url": media.url or media.data_url()}}
        return {"type": "file", "file": {"filename": media.filename, "file_data": media.data_url()}}

    def put_media(self, item: dict, found: list) -> None:
        """Put FOUND, ``(index, Media)`` pairs of the conversation ITEM's
        parts (:attr:`parts_key`), in the API's shape (:meth:`media_part`)."""
        for index, media in found:
            item[self.parts_key][index] = self.media_part(media)

    def add_tool_result(self, conversation: list, result: dict) -> None:
        """Append a tool's RESULT (a neutral ``role: tool`` message) to CONVERSATION."""
        conversation.append({"role": "tool", "tool_call_id": result["tool_call_id"],
                             "content": error_text(result)})

    def add_tools(self, body: dict, tools: list[dict]) -> None:
        """Offer TOOLS (neutral definitions) to the model: appended to the
        request BODY's own tools, in the API's shape."""
        body.setdefault("tools", []).extend(
            {"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                                              "parameters": parameters(t)}}
            for t in tools)

    def set_params(self, body: dict, params: dict) -> None:
        """Set request PARAMS (``temperature``; ``max_tokens``, in tokens) in
        BODY, in the API's own fields.  OpenAI chat: ``temperature`` and
        ``max_tokens`` (``max_completion_tokens`` when the template uses it),
        https://platform.openai.com/docs/api-reference/chat/create"""
        if "temperature" in params:
            body["temperature"] = params["temperature"]
        if "max_tokens" in params:
            key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
            body[key] = params["max_tokens"]

    def ends_with_user_turn(self, body: dict) -> bool:
        """Whether the conversation of the template's BODY ends with a user
        turn (a non-blank string is one)."""
        turns = body.get(self.history_key)
        if isinstance(turns, str):
            return bool(turns.strip())
        return (isinstance(turns, list) and bool(turns) and isinstance(turns[-1], dict)
                and turns[-1].get("role") == "user")

    def streaming_hint(self, url: str | None, body: dict) -> str | None:
        """None when a template's request (its URL as written and BODY)
        asks for a stream; else what to change so that it does, for the
        template's warning (:meth:`chatpipe.templates.Template.warnings`).
        Here: ``"stream": true`` in the body."""
        return None if body.get("stream") is True else 'add "stream": true'

    endpoint_paths: tuple[str, ...] = ("/chat/completions", "/responses", "/completions")

    def models_request(self, url: str, headers: dict[str, str],
                       ) -> tuple[str, dict[str, str], dict[str, str]] | None:
        """How to ask for the model list of the endpoint URL (a filled-in
        template's, queried with HEADERS): ``(list URL, headers, query
        parameters of the first page)``, or None when URL's list cannot be
        told.  Here OpenAI's ``GET {base}/models``, BASE the URL without
        one of :attr:`endpoint_paths` (``.../v1/chat/completions`` ->
        ``.../v1/models``): https://platform.openai.com/docs/api-reference/models/list"""
        parts = urlsplit(url)
        path = parts.path.rstrip("/")
        base = next((path[:-len(end)] for end in self.endpoint_paths if path.endswith(end)), None)
        if base is None:
            return None
        return urlunsplit((parts.scheme, parts.netloc, base + "/models", parts.query, "")), headers, {}

    def parse_models(self, doc: Any) -> tuple[list[dict[str, Any]], dict[str, str] | None] | None:
        """The models of one model list page DOC (parsed JSON), as
        :func:`~chatpipe.dialects.modellist.model_entry` dicts, and the
        query parameters of the next page (None for the last); None if DOC
        is not a model list of the API's shape.  Here OpenAI's ``{"data": [{"id", "created", "owned_by"}]}``
        (OpenRouter adds ``architecture``, see :func:`~chatpipe.dialects.modellist.input_media`,
        and ``context_length``)."""
        items = list_items(doc, "data")
        if items is None:
            return None
        models = [model_entry(m.get("id"), m.get("created"), m.get("owned_by"), media=input_media(m),
                              context_window=m.get("context_length")) for m in items]
        return [m for m in models if m is not None], None

    def model_of(self, request: Any) -> str | None:
        """The model REQUEST asks for (the body's ``model``), or None."""
        model = request.body.get("model")
        return model if isinstance(model, str) else None

    def set_model(self, request: Any, model: str) -> None:
        """Make REQUEST (a :class:`chatpipe.templates.Request`) ask for MODEL."""
        request.body["model"] = model
