"""The protocol's events as a person reads them in a terminal.

:class:`TextView` is the :class:`~chatpipe.protocol.Output` of ``chatpipe
send`` without ``--output ndjson``: the answer on stdout, everything else
(retries, errors, notes, what each tool call did) on stderr.
"""

from __future__ import annotations

import json
from typing import BinaryIO

from chatpipe.errors import OutputClosed
from chatpipe.protocol import TERMINAL, Output, plain, write_out

#: Longest tool result shown on stderr, in characters.
MAX_SHOWN_RESULT = 300


class TextView(Output):
    """The events as a person reads them: the answer's text on OUT as it
    streams (the answers of a request's steps separated by a newline); at
    the end a newline and one ``[tool call: NAME(ARGUMENTS)]`` line per
    tool call that was not run; on ERR, as ``chatpipe: ...`` lines:
    ``retry``, ``warning`` and ``error`` (its ``hint`` after its message),
    what each tool call did (its
    result on one line, cut to :data:`MAX_SHOWN_RESULT` characters), and a note when
    the answer was cut off at the token limit, stopped by a content filter
    or at the tool step limit.  Reasoning is not shown.  Control
    characters other than tab and newline (terminal escape sequences) are
    neutralised: see :func:`chatpipe.protocol.plain`.

    Args:
        out: binary stream for the text (stdout).
        err: binary stream for messages (stderr).
        usage: also say the tokens used and the cost on ERR (``--usage``).
    """

    def __init__(self, out: BinaryIO, err: BinaryIO, usage: bool = False) -> None:
        super().__init__()
        self._out = out
        self._err = err
        self._usage = usage
        self._last = "\n"
        self._calls: dict[int, list[str]] = {}

    def _text(self, text: str) -> None:
        text = plain(text)
        if text:
            write_out(self._out, text)
            self._last = text[-1:]

    def _note(self, text: str) -> None:
        try:
            write_out(self._err, f"chatpipe: {plain(text)}\n")
        except OutputClosed:
            pass  # nowhere left to say it

    def write(self, event: dict) -> None:
        """Show EVENT; see the class docstring."""
        kind = event["type"]
        if kind in ("delta", "refusal"):
            self._text(event["content"])
        elif kind == "tool_call":
            call = self._calls.setdefault(event["index"], [event.get("name") or "?", "",
                                                           event.get("call_id") or ""])
            call[1] += event["arguments"]
        elif kind == "tool_result":
            self._tool_result(event)
        elif kind == "step" and self._last != "\n":
            self._text("\n")
        elif kind == "usage" and self._usage:
            self._note(usage_text(event))
        elif kind == "retry":
            status = f"HTTP {event['status']}: " if event.get("status") else ""
            self._note(f"retry {event['attempt']} in {event['delay']:.1f} s: "
                       f"{status}{event['reason']}")
        elif kind == "warning":
            self._note(f"warning: {event['message']}")
        elif kind == "context" and self._usage:
            window = (f" of the model's {event['context_window']}"
                      if event.get("context_window") else "")
            self._note(f"context: {len(event['pieces'])} piece(s), about {event['tokens']} "
                       f"tokens (estimated){window}")
        elif kind == "request":
            self._text(json.dumps(event["body"], indent=2, ensure_ascii=False) + "\n")
        elif kind in TERMINAL:
            self._end(event)

    def _tool_result(self, event: dict) -> None:
        """Say on ERR what a tool call did; it is then not listed at the end."""
        arguments = ""
        for index, (name, args, call_id) in list(self._calls.items()):
            if call_id == event["call_id"]:
                arguments = args
                del self._calls[index]
        content = " ".join(event["content"].split())
        if len(content) > MAX_SHOWN_RESULT:
            content = content[:MAX_SHOWN_RESULT] + "..."
        what = ("denied" if event.get("denied") else "error" if event.get("is_error")
                else "result")
        self._note(f"tool {event['name']}({arguments}) {what}: {content}")

    def _end(self, event: dict) -> None:
        """The terminal EVENT: the calls not run, the notes, the error."""
        kind = event["type"]
        if self._last != "\n":
            self._text("\n")
        for name, arguments, _ in self._calls.values():
            self._text(f"[tool call: {name}({arguments})]\n")
        self._calls.clear()
        if kind == "done" and event.get("finish_reason") == "length":
            self._note("the answer was cut off: it reached the token limit "
                       "(finish_reason length)")
        elif kind == "done" and event.get("finish_reason") == "content_filter":
            self._note("the answer was stopped by the provider's content filter")
        if kind == "done" and event.get("stopped") == "max_tool_steps":
            self._note("stopped at the tool step limit (chatpipe.max_tool_steps): "
                       "the model's last tool calls were not run")
        if kind == "error":
            status = f"HTTP {event['status']}: " if event.get("status") else ""
            hint = f"; {event['hint']}" if event.get("hint") else ""
            self._note(f"error: {status}{event['message']}{hint}")

    def send(self) -> None:
        """Nothing is queued: text is written as it comes."""


def usage_text(event: dict) -> str:
    """A ``usage`` EVENT for people: e.g. ``14 input + 30 output tokens
    (12 cached), $0.000021``; the cost only when it is known."""
    def n(key):
        value = event.get(key)
        return "?" if value is None else f"{value:,}"

    text = f"{n('input_tokens')} input + {n('output_tokens')} output tokens"
    extra = [f"{event[k]:,} {label}" for k, label in (("cached_tokens", "cached"),
                                                        ("reasoning_tokens", "reasoning"))
             if event.get(k)]
    if extra:
        text += f" ({', '.join(extra)})"
    if event.get("cost") is not None:
        text += f", ${event['cost']:.6f}".rstrip("0").rstrip(".")
    return text
