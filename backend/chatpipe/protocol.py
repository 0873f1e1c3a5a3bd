"""Writers for the stdout protocol (``--output ndjson``) and plain text.

Protocol version 1, documented in docs/protocol.md.  Events are dicts with a
``type``: ``start``, ``delta``, ``reasoning``, ``refusal``, ``tool_call``,
``usage``, ``retry``, ``done``, ``error``.  Each is written and flushed as
soon as it is emitted.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring
from typing import BinaryIO


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode_line(event: dict, head: str = "{") -> str:
    """EVENT as one compact JSON text, without the newline.

    HEAD is the text before the event's own keys: ``"{"``, or for a tagged
    line e.g. ``'{"id":"r1",'``.  A plain ``delta`` is built directly (the
    hot path); the result is what ``json.dumps`` would give.
    """
    if event["type"] == "delta" and len(event) == 2:
        return head + '"type":"delta","content":' + encode_basestring(event["content"]) + "}"
    return head + _dumps(event)[1:]


class NDJSONWriter:
    """Writes each event as one compact JSON object and a newline, UTF-8.

    Lines are written out by :meth:`flush`, which the stream loop calls
    whenever it is about to wait for more bytes from the server, so every
    line is out before chatpipe waits, and the lines decoded from one read
    go out in one write.  ``done`` and ``error`` are written at once.

    Args:
        out: a binary stream (``sys.stdout.buffer``).
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._lines: list[str] = []

    def emit(self, event: dict) -> None:
        """Queue EVENT as one line; write at once if it ends the stream."""
        self._lines.append(encode_line(event))
        if event["type"] in ("done", "error"):
            self.flush()

    def flush(self) -> None:
        """Write the queued lines and flush the stream."""
        if self._lines:
            self._lines.append("")
            data = "\n".join(self._lines).encode("utf-8")
            self._lines.clear()
            self._out.write(data)
            self._out.flush()


class TextWriter:
    """Writes the answer's text to OUT as it streams, errors to ERR.

    Args:
        out: binary stream for the text (stdout).
        err: binary stream for error messages (stderr).
    """

    def __init__(self, out: BinaryIO, err: BinaryIO) -> None:
        self._out = out
        self._err = err
        self._last = "\n"
        self._calls: dict[int, list[str]] = {}

    def _write(self, text: str) -> None:
        self._out.write(text.encode("utf-8"))
        self._out.flush()
        self._last = text[-1:]

    def emit(self, event: dict) -> None:
        """Write ``delta`` and ``refusal`` text as it comes; at the end a
        newline and one ``[tool call: NAME(ARGUMENTS)]`` line per tool call;
        ``retry`` and ``error`` on stderr (``chatpipe: error: ...``).
        Reasoning is not shown."""
        kind = event["type"]
        if kind in ("delta", "refusal"):
            self._write(event["content"])
        elif kind == "tool_call":
            call = self._calls.setdefault(event["index"], [event.get("name") or "?", ""])
            call[1] += event["arguments"]
        elif kind == "retry":
            status = f"HTTP {event['status']}: " if event.get("status") else ""
            self._err.write(f"chatpipe: retry {event['attempt']} in {event['delay']:.1f} s: "
                            f"{status}{event['reason']}\n".encode("utf-8"))
            self._err.flush()
        elif kind in ("done", "error"):
            if self._last != "\n":
                self._write("\n")
            for name, arguments in self._calls.values():
                self._write(f"[tool call: {name}({arguments})]\n")
            self._calls.clear()
            if kind == "error":
                status = f"HTTP {event['status']}: " if event.get("status") else ""
                self._err.write(f"chatpipe: error: {status}{event['message']}\n".encode("utf-8"))
                self._err.flush()


class Recorder:
    """Passes events on to SINK and keeps the answer's text, for ``--save``.

    Attributes:
        parts: the ``delta`` contents so far; ``text()`` joins them.
        completed: True once ``done`` has been emitted.
    """

    def __init__(self, sink) -> None:
        self._sink = sink
        self.parts: list[str] = []
        self.completed = False

    def emit(self, event: dict) -> None:
        """Record EVENT, then pass it on."""
        kind = event["type"]
        if kind == "delta":
            self.parts.append(event["content"])
        elif kind == "done":
            self.completed = True
        self._sink.emit(event)

    def flush(self) -> None:
        """Flush the sink passed on to."""
        flush = getattr(self._sink, "flush", None)
        if flush is not None:
            flush()

    def text(self) -> str:
        """Return the answer's text so far."""
        return "".join(self.parts)


def error_event(message: str, status: int | None = None, retryable: bool = False,
                **extra) -> dict:
    """Build a protocol ``error`` event; STATUS only for HTTP errors."""
    event = {"type": "error", "message": message}
    if status is not None:
        event["status"] = status
    event["retryable"] = retryable
    event.update(extra)
    return event
