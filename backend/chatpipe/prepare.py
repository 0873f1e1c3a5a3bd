"""From a template name and chat messages to a :class:`Request` ready to send.

Shared by ``chatpipe send`` (one request per process) and ``chatpipe serve``
(many requests, one process).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from chatpipe import context, contextread, contextrender, dialects, media, protocol, templates
from chatpipe.dialects import mediaparts
from chatpipe.dialects.base import Dialect
from chatpipe.errors import UsageError


def check_messages(messages: Any, where: str) -> list[dict[str, Any]]:
    """Return MESSAGES if it is a list of chat messages, else raise.

    Each message is an object with a string ``role`` and a ``content`` that
    is a string, a list of content parts, or null; in the neutral shape of
    tool turns (see :class:`chatpipe.dialects.base.Dialect`), an
    assistant's ``tool_calls`` are ``{"id", "name", "arguments"}`` objects
    of strings, and a ``tool`` message has a string ``tool_call_id``,
    ``name`` and ``content``.

    Raises:
        UsageError: not a list of messages; the message says which item and
            why, prefixed with WHERE (e.g. ``--messages stdin``).
    """
    if not isinstance(messages, list):
        raise UsageError(f"{where}: expected a JSON array of messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise UsageError(f'{where}: item {i} is not an object with a "role" string')
        if not isinstance(message.get("content"), (str, list, type(None))):
            raise UsageError(f'{where}: item {i}: "content" must be a string or a list')
        calls = message.get("tool_calls")
        if calls is not None and not (isinstance(calls, list) and all(
                isinstance(c, dict) and all(isinstance(c.get(k), str) for k in ("id", "name", "arguments"))
                for c in calls)):
            raise UsageError(f'{where}: item {i}: "tool_calls" must be a list of '
                             '{"id", "name", "arguments"} objects of strings')
        if message["role"] == "tool" and not all(
                isinstance(message.get(k), str) for k in ("tool_call_id", "name", "content")):
            raise UsageError(f'{where}: item {i}: a "tool" message needs "tool_call_id", '
                             '"name" and "content" strings')
    return messages


def prepare(spec: str, messages: list[dict[str, Any]], *, variables: Mapping[str, str] = (),
            model: str | None = None, url: str | None = None,
            env: Mapping[str, str] | None = None, params: Mapping[str, Any] = (),
            context_items: list[dict[str, Any]] = (), placement: str | None = None,
            warn: Callable[[dict], None] = lambda event: None,
            read_resource: Callable[[str, str], str] | None = None,
            ) -> tuple[templates.Template, templates.Request, Dialect]:
    """Load template SPEC, fill it in, append MESSAGES and put in CONTEXT_ITEMS.

    Args:
        spec: a template name or file path (see :func:`templates.resolve`).
        messages: ``{"role", "content"}`` messages to append (checked).
        variables: values of ``${name}`` placeholders; ``model`` defaults to MODEL.
        model: overrides the template's model.
        url: overrides the endpoint URL.
        env: environment for ``${env:NAME}`` (default ``os.environ``).
        params: request parameters, checked already (the fields
            ``params.NAME`` of :class:`chatpipe.requestfields.Job`), set in
            the API's own fields.
        context_items: context items (JSON, see :mod:`chatpipe.context`), read
            now from the files they name (relative paths: in the current
            folder) within the template's ``context_item_bytes`` and
            ``context_total_bytes``, rendered once
            (:func:`chatpipe.contextrender.render`) and put after the
            system prompt (:meth:`Dialect.add_context`) or, PLACEMENT (else
            the template's ``context_placement``) ``"user"``, before the
            last new user message.
        warn: gets the ``warning`` events of items left out (a missing
            file, a killed buffer's text), then the ``context`` event (its
            pieces and estimated tokens), before anything is sent; and
            the media warnings (a type mismatch; model types not known).
        read_resource: reads the resource URI of an MCP server, ``(server,
            uri) -> text``, for the context's ``mcp`` items (None: they are
            left out with a warning).

    The media parts of the conversation (new messages, the template's and
    a saved chat's; ``send -a``'s joined to their message by
    :func:`attached`) are read and checked
    (:func:`chatpipe.dialects.mediaparts.convert`, within the template's
    ``media`` types; images downscaled as its ``media_downscale`` says,
    PDFs to an API that takes none as text if its ``media_pdf`` says)
    and put in the API's shape.

    Returns:
        ``(template, request, dialect)``.
    Raises:
        TemplateError: see :func:`templates.load` and :func:`templates.fill`.
        UsageError: nothing to send (no new message and the template's
            conversation does not end with a user turn); a context item
            refused (a binary file, over a limit, a line range the file
            does not have), with details ``{"kind": "context", "errors"}``;
            a media part refused (:class:`chatpipe.media.MediaError`: a
            missing file, a type or limit of the API or model).
    """
    template = templates.load(spec)
    variables = dict(variables)
    if model:
        variables.setdefault("model", model)
    request = templates.fill(template, variables, env, url=url)
    dialect = dialects.get(request.api)
    if model:
        dialect.set_model(request, model)
    if params:
        dialect.set_params(request.body, dict(params))
    if not messages and not dialect.ends_with_user_turn(request.body):
        raise UsageError("no message to send: give -m TEXT, --messages FILE, or text on stdin")
    rendered = ""
    if context_items:
        window = _cached_model(spec, request, dialect, url, variables, env).get("context_window")
        rendered = _context(context_items, request, warn, read_resource, window)
    where = placement or request.context_placement
    if rendered and where == "user" and any(m.get("role") == "user" for m in messages):
        messages, rendered = contextrender.place(messages, rendered, "user"), ""
    before = len(dialect.conversation(request.body))
    dialect.add_messages(request.body, attached(messages))
    added = len(dialect.conversation(request.body)) - before
    if rendered:
        dialect.add_context(request.body, rendered)
    # The items before first_new are the template file's own (never fewer).
    first_new = len(dialect.conversation(request.body)) - max(added, 0)
    mediaparts.convert(dialect, request.body, cwd=os.getcwd(),
                       accepted=lambda: _model_media(spec, request, dialect, url, variables, env),
                       model=dialect.model_of(request), warn=warn,
                       downscale=request.media_downscale, pdf=request.media_pdf,
                       first_new=first_new)
    return template, request, dialect


def _model_media(spec: str, request: templates.Request, dialect: Dialect, url: str | None,
                 variables: Mapping[str, str], env: Mapping[str, str] | None,
                 ) -> tuple[list[str] | None, str]:
    """The MIME patterns of the media that REQUEST's model takes and where
    they are from (for :func:`chatpipe.dialects.mediaparts.check`): the
    template's ``chatpipe.media``; else the model's ``media`` in the
    endpoint's model list as ``chatpipe models`` cached it (no request is
    made here: OpenRouter's lists say; see
    :func:`chatpipe.dialects.modellist.input_media`); else ``None``, not
    known."""
    if request.media:
        return list(request.media), mediaparts.TEMPLATE_TYPES
    media_types = _cached_model(spec, request, dialect, url, variables, env).get("media")
    if isinstance(media_types, list) and all(isinstance(t, str) for t in media_types):
        return media_types, mediaparts.LIST_TYPES
    return None, mediaparts.TEMPLATE_TYPES


def _cached_model(spec: str, request: templates.Request, dialect: Dialect, url: str | None,
                  variables: Mapping[str, str], env: Mapping[str, str] | None) -> dict[str, Any]:
    """The entry of REQUEST's model in its endpoint's model list as
    ``chatpipe models`` cached it (``media``, ``context_window``...), or
    ``{}``: no request is made here."""
    from chatpipe import models
    from chatpipe.errors import ChatpipeError

    try:
        cached = models.read_cache(models.listing(spec, url=url, variables=variables, env=env))
    except (ChatpipeError, OSError):
        cached = None
    model = dialect.model_of(request)
    return next((m for m in cached or () if isinstance(m, dict) and m.get("id") == model), {})


def attached(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """MESSAGES with each user message whose content is only media parts
    (what ``send -a`` gives) joined to the user message just before it
    (``-m``'s): one message of a text part and the media parts."""
    out: list[dict[str, Any]] = []
    for message in messages:
        content = message.get("content")
        before = out[-1] if out else None
        if (message.get("role") == "user" and isinstance(content, list) and content
                and all(media.is_media(p) for p in content)
                and before is not None and before.get("role") == "user"
                and not before.get("tool_calls")):
            text = before.get("content")
            parts = text if isinstance(text, list) else [{"type": "text", "text": text}] if text else []
            out[-1] = {**before, "content": [*parts, *content]}
        else:
            out.append(message)
    return out


def _context(items: list[dict[str, Any]], request: templates.Request,
             warn: Callable[[dict], None], read_resource: Callable[[str, str], str] | None,
             window: Any = None) -> str:
    """The rendered text of the context ITEMS (JSON) for REQUEST, its
    warnings and ``context`` event given to WARN (with the model's
    ``context_window``, WINDOW tokens, when its model list said);
    READ_RESOURCE reads MCP items (see :func:`prepare`).

    Raises:
        UsageError: see :func:`prepare`.
    """
    limits = context.Limits(item_bytes=request.context_item_bytes,
                            total_bytes=request.context_total_bytes)
    resolved = contextread.resolve(context.parse_items(items), cwd=os.getcwd(), limits=limits,
                                   mcp=read_resource)
    for problem in resolved.warnings:
        fields = problem.event_fields()
        warn(protocol.warning(fields.pop("message"), **fields))
    resolved.raise_errors()
    pieces = [{"item": p.item, "name": p.display, "tokens": p.tokens,
               **({"lines": list(p.lines)} if p.lines else {})} for p in resolved.pieces]
    window = window if isinstance(window, int) and not isinstance(window, bool) else None
    warn(protocol.context(pieces, resolved.tokens, window))
    return contextrender.render(resolved)
