"""Tool turns as text, for a request that offers no tools.

A chat may call tools in one request and offer none in the next (the
tools were dropped: no ``--tools``, an MCP server that failed to start).
Its history still holds tool calls and results in the API's own shape,
which an API may refuse without tool definitions (Anthropic:
``Requests which include tool_use or tool_result blocks must define
tools``), or a model may imitate.  :meth:`Dialect.tool_turns_as_text
<chatpipe.dialects.base.Dialect.tool_turns_as_text>` rewrites them as
plain text with :func:`rewrite`: each dialect says how one of its
conversation items reads as text (``Dialect.item_as_text``), with
:func:`call_text` and :func:`result_text`.  Only the request sent is
rewritten: a saved chat keeps its tool turns.
"""

from __future__ import annotations

import json
from typing import Any, Callable


def call_text(name: Any, arguments: Any) -> str:
    """A tool call as text: ``[called tool NAME with ARGUMENTS]`` (ARGUMENTS
    a JSON text, or a value that is written as one; ``{}`` when empty)."""
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return f"[called tool {name} with {arguments or '{}'}]"


def result_text(name: Any, content: Any, is_error: bool = False) -> str:
    """A tool's result as text: ``[tool NAME returned: CONTENT]``, ``failed``
    for an error (CONTENT a text, or a value that is written as JSON)."""
    if not isinstance(content, str):
        content = json.dumps(content, ensure_ascii=False)
    return f"[tool {name} {'failed' if is_error else 'returned'}: {content}]"


def joined(*texts: Any) -> str:
    """The non-empty strings of TEXTS, one per line."""
    return "\n".join(t for t in texts if isinstance(t, str) and t)


def text_of(content: Any) -> str:
    """The text of a message's CONTENT: a string, or the ``text`` of the
    parts of a list of them (the parts without text are left out)."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else ()
    return joined(*(p.get("text") for p in parts if isinstance(p, dict)))


def chat_item(item: Any, names: dict[str, str]) -> tuple[Any, str | None]:
    """OpenAI chat's (and Ollama's) ``Dialect.item_as_text``: an assistant
    message's ``tool_calls`` (``{"id", "function": {"name", "arguments"}}``)
    become lines of its text (group ``calls``), a ``tool`` message a user
    message (group ``results``); other items are kept (group None)."""
    if not isinstance(item, dict):
        return item, None
    calls = item.get("tool_calls")
    if item.get("role") == "assistant" and isinstance(calls, list) and calls:
        texts = []
        for call in calls:
            call = call if isinstance(call, dict) else {}
            function = call.get("function") if isinstance(call.get("function"), dict) else {}
            if isinstance(call.get("id"), str):
                names[call["id"]] = function.get("name")
            texts.append(call_text(function.get("name"), function.get("arguments")))
        rest = {k: v for k, v in item.items() if k != "tool_calls"}
        return {**rest, "content": joined(text_of(item.get("content")), *texts)}, "calls"
    if item.get("role") == "tool":
        name = item.get("tool_name") or item.get("name") or names.get(item.get("tool_call_id"))
        return {"role": "user", "content": result_text(name, text_of(item.get("content")))}, "results"
    return item, None


def rewrite(conversation: list, item_as_text: Callable[[Any, dict], tuple[Any, str | None]]) -> None:
    """Rewrite the tool turns of CONVERSATION (a list, in an API's shape) in place.

    ITEM_AS_TEXT(item, names) gives an item's text form and its group:
    ``"calls"`` for a message made of an answer's tool calls, ``"results"``
    for one made of tool results, else None (NAMES maps the call ids seen
    so far to their tool names, for the results that name only the
    call).  Consecutive messages of one group whose ``content`` is a
    string are joined into one, so that an API that wants user and
    assistant turns to alternate gets one turn for an answer's calls and
    one for their results.
    """
    out: list = []
    names: dict[str, str] = {}
    last: str | None = None
    for item in conversation:
        item, group = item_as_text(item, names)
        if (group is not None and group == last and isinstance(item.get("content"), str)
                and isinstance(out[-1].get("content"), str)):
            out[-1]["content"] = joined(out[-1]["content"], item["content"])
            continue
        out.append(item)
        last = group
    conversation[:] = out
