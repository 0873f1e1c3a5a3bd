"""The stdout protocol: its events, and the outputs that write them.

Protocol version 2, documented in docs/protocol.md.  This module owns the
event schema: one constructor per event type, used by every dialect and by
the runner, so that an event has one shape whichever front end (``send`` or
``serve``) started its stream; ``serve`` only adds the request ``id``.

Every event leaves the process through an :class:`Output`, which is the one
place that redacts secrets (with :mod:`chatpipe.redaction`) and guarantees
one terminal event per stream:

- :class:`EventLines`: one compact JSON object per line (``--output ndjson``
  and ``serve``), queued in a shared :class:`LineWriter`;
- :class:`chatpipe.textview.TextView`: the answer as plain text, errors
  and tool activity on stderr.
"""

from __future__ import annotations

import codecs
import json
import threading
from json.encoder import encode_basestring
from typing import Any, BinaryIO, Protocol

from chatpipe.errors import OutputClosed
from chatpipe.redaction import TextRedactor, redact, redact_value

#: Event types that end a stream: exactly one of them ends each stream.
TERMINAL = frozenset({"done", "error"})

#: Event types that carry the answer: after one of them, no retry.
CONTENT = frozenset({"delta", "reasoning", "refusal", "tool_call"})

#: Longest ``message`` or ``reason`` written, in characters (after redaction).
MAX_MESSAGE = 2000

#: Error handler that encodes what UTF-8 cannot hold (a lone surrogate from
#: a provider's ``"\ud800"``) as U+FFFD, so every byte written is valid UTF-8.
ENCODE_ERRORS = "chatpipe-replace"
codecs.register_error(ENCODE_ERRORS, lambda err: ("\ufffd".encode() * (err.end - err.start), err.end))

#: C0 and C1 control characters but tab and newline -> U+FFFD (CR is
#: dropped), so that model text cannot drive the user's terminal.
_CONTROLS = {c: "\ufffd" for c in (*range(0x20), 0x7f, *range(0x80, 0xa0))
             if c not in (0x09, 0x0a)}
_CONTROLS[0x0d] = None


def plain(text: str) -> str:
    """TEXT safe for a terminal: control characters other than tab and
    newline neutralised (see ``_CONTROLS``)."""
    return text.translate(_CONTROLS) if not text.isprintable() else text


def write_out(out: BinaryIO, text: str) -> None:
    """Write TEXT to the binary stream OUT as UTF-8 and flush.

    Raises:
        OutputClosed: OUT cannot be written (closed pipe, full disk, closed).
    """
    try:
        out.write(text.encode("utf-8", ENCODE_ERRORS))
        out.flush()
    except (OSError, ValueError) as err:
        raise OutputClosed(getattr(err, "strerror", None) or str(err),
                           isinstance(err, BrokenPipeError)) from None


# ---- the events ----------------------------------------------------------

def start(protocol: int, model: str | None = None, response_id: str | None = None) -> dict:
    """``start``: the response headers arrived.  PROTOCOL is the protocol
    version; MODEL the requested model; RESPONSE_ID the provider's request
    id (``x-request-id`` or ``request-id`` header), when given."""
    event: dict[str, Any] = {"type": "start", "protocol": protocol}
    if model:
        event["model"] = model
    if response_id:
        event["response_id"] = response_id
    return event


def delta(content: str) -> dict:
    """``delta``: a non-empty piece of the assistant's text."""
    return {"type": "delta", "content": content}


def reasoning(content: str) -> dict:
    """``reasoning``: a non-empty piece of the model's reasoning (not the answer)."""
    return {"type": "reasoning", "content": content}


def refusal(content: str) -> dict:
    """``refusal``: a piece of a refusal's text."""
    return {"type": "refusal", "content": content}


def tool_call(index: int, arguments: str, call_id: str | None = None,
              name: str | None = None, signature: str | None = None) -> dict:
    """``tool_call``: a fragment of the arguments (a JSON text) of call INDEX
    (0, 1, ... in order of appearance in the whole request); CALL_ID (the
    provider's id, or one chatpipe made up), NAME and SIGNATURE (an opaque
    token to send back with the call: Gemini's thought signature) come
    with a call's first fragment."""
    event: dict[str, Any] = {"type": "tool_call", "index": index}
    if call_id:
        event["call_id"] = call_id
    if name:
        event["name"] = name
    event["arguments"] = arguments
    if signature:
        event["signature"] = signature
    return event


def usage(input_tokens: int | None, output_tokens: int | None,
          total_tokens: int | None = None, *, reasoning_tokens: int | None = None,
          cached_tokens: int | None = None) -> dict:
    """``usage``: token counts.  INPUT_TOKENS includes cached input (also in
    CACHED_TOKENS), OUTPUT_TOKENS includes reasoning (also in
    REASONING_TOKENS); TOTAL_TOKENS defaults to their sum when both are known."""
    if total_tokens is None and None not in (input_tokens, output_tokens):
        total_tokens = input_tokens + output_tokens
    event: dict[str, Any] = {"type": "usage", "input_tokens": input_tokens,
                             "output_tokens": output_tokens, "total_tokens": total_tokens}
    if reasoning_tokens is not None:
        event["reasoning_tokens"] = reasoning_tokens
    if cached_tokens is not None:
        event["cached_tokens"] = cached_tokens
    return event


def retry(attempt: int, delay: float, reason: str, status: int | None = None) -> dict:
    """``retry``: the request failed with REASON (HTTP STATUS) and is sent
    again, attempt ATTEMPT (1, 2, ...), after DELAY seconds."""
    event: dict[str, Any] = {"type": "retry", "attempt": attempt, "delay": round(delay, 3),
                             "reason": reason}
    if status:
        event["status"] = status
    return event


def done(finish_reason: str | None, raw_finish_reason: str | None = None, *,
         steps: int | None = None, stopped: str | None = None,
         dry_run: bool = False) -> dict:
    """``done``: the stream completed.  FINISH_REASON is in the OpenAI
    vocabulary (``stop``, ``length``, ``tool_calls``, ``content_filter``) or
    None; RAW_FINISH_REASON the provider's own value, kept when it differs.
    With tools, the request's last answer gives them; STEPS is the number
    of answers when more than one; STOPPED says why tool calls were left
    unrun (``max_tool_steps``).  DRY_RUN: nothing was sent (the
    ``request`` event before says what would have been)."""
    event: dict[str, Any] = {"type": "done", "finish_reason": finish_reason}
    if raw_finish_reason is not None and raw_finish_reason != finish_reason:
        event["raw_finish_reason"] = raw_finish_reason
    if steps is not None and steps > 1:
        event["steps"] = steps
    if stopped:
        event["stopped"] = stopped
    if dry_run:
        event["dry_run"] = True
    return event


def context(pieces: list[dict], tokens: int, context_window: int | None = None) -> dict:
    """``context``: what a request's context holds, before it is sent.
    PIECES are ``{"item", "name", "tokens"}`` (and ``lines``, ``[START,
    END]``) per file or text, in the order rendered; TOKENS their estimated
    tokens in all (UTF-8 bytes / 4, see
    :func:`chatpipe.context.estimate_tokens`); CONTEXT_WINDOW the model's
    context window in tokens, when its endpoint's model list says."""
    event: dict[str, Any] = {"type": "context", "pieces": pieces, "tokens": tokens}
    if context_window is not None:
        event["context_window"] = context_window
    return event


def request(url: str, body: Any) -> dict:
    """``request``: a dry run's request, not sent: its URL and BODY (JSON),
    secrets redacted and long base64 data elided."""
    return {"type": "request", "url": url, "body": body}


def step(number: int, model: str | None = None, response_id: str | None = None) -> dict:
    """``step``: the model's answer number NUMBER (2, 3, ...) of the same
    request begins, after the results of the previous answer's tool calls
    were sent; it stands where a ``start`` would (the response headers
    arrived), so that a request has one ``start``.  MODEL and RESPONSE_ID
    as in :func:`start`."""
    event: dict[str, Any] = {"type": "step", "step": number}
    if model:
        event["model"] = model
    if response_id:
        event["response_id"] = response_id
    return event


def tool_request(call_id: str, name: str, arguments: str, *, confirm: bool = False,
                 source: str | None = None, tool: str | None = None) -> dict:
    """``tool_request`` (``serve``): the client is asked to run its tool
    NAME with ARGUMENTS (a JSON text) for call CALL_ID and to answer with a
    ``tool_result`` line; with CONFIRM, to approve or deny running the
    tool of SOURCE (e.g. ``mcp:time``) with a ``tool_confirm`` line; TOOL
    is that tool's name at SOURCE (NAME is the one the model used)."""
    event: dict[str, Any] = {"type": "tool_request", "call_id": call_id, "name": name,
                             "arguments": arguments}
    if confirm:
        event["confirm"] = True
    if source:
        event["source"] = source
    if tool:
        event["tool"] = tool
    return event


def tool_result(call_id: str, name: str, content: str, is_error: bool = False,
                denied: bool = False) -> dict:
    """``tool_result``: what the tool call CALL_ID (of the tool NAME) gave,
    CONTENT (a text), sent back to the model; IS_ERROR when the tool
    failed (or was denied, or not run: DENIED when the user said no)."""
    event: dict[str, Any] = {"type": "tool_result", "call_id": call_id, "name": name,
                             "content": content, "is_error": is_error}
    if denied:
        event["denied"] = True
    return event


def warning(message: str, **details: Any) -> dict:
    """``warning``: something went wrong that does not end the stream (an
    MCP server that failed: the chat goes on without its tools); DETAILS
    as in :func:`error` (``kind``, e.g. ``mcp`` with ``server``)."""
    return {"type": "warning", "message": message, **details}


def error(message: str, status: int | None = None, retryable: bool = False,
          aborted: bool = False, **details: Any) -> dict:
    """``error``: the stream failed with MESSAGE (the provider's own where
    there is one); STATUS only for HTTP errors; ABORTED when stopped by a
    signal or a cancel.  DETAILS are machine-readable fields (``kind`` and
    its own fields, see :attr:`chatpipe.errors.ChatpipeError.details`)."""
    event: dict[str, Any] = {"type": "error", "message": message}
    if status is not None:
        event["status"] = status
    event["retryable"] = retryable
    if aborted:
        event["aborted"] = True
    event.update(details)
    return event


def ready(protocol: int, version: str) -> dict:
    """``ready`` (``serve`` only, its first line): the server reads requests
    now; PROTOCOL is the protocol version it speaks, VERSION chatpipe's."""
    return {"type": "ready", "protocol": protocol, "version": version}


def rejected(message: str, request_id: str | int | None = None) -> dict:
    """``rejected`` (``serve`` only): a request line that starts no stream
    (not JSON, no usable ``id``, an ``id`` already streaming).  It carries
    no ``id``, so a reader never takes it for the end of a running stream;
    REQUEST_ID is the line's id when one could be read."""
    event: dict[str, Any] = {"type": "rejected", "message": message}
    if request_id is not None:
        event["request_id"] = request_id
    return event


# ---- outputs ---------------------------------------------------------------

class Sink(Protocol):
    """Where protocol events go.

    ``emit`` takes one event; ``flush`` is called before each wait for the
    server's bytes and at the end, so that nothing decoded waits in a queue
    while chatpipe waits.
    """

    def emit(self, event: dict) -> None: ...

    def flush(self) -> None: ...


class Output:
    """Base class of the places events leave the process.

    :meth:`emit` joins consecutive text events (plain ``delta``, or plain
    ``reasoning``, events) into one, until anything else comes or
    :meth:`flush` is called: the runner flushes before each wait for the
    server's bytes, so a run holds the text of one network read and joining
    delays nothing, while a reader (Emacs) parses and inserts once per read
    instead of once per event.  The joined content is exactly the pieces'
    concatenation.  Every event that goes on has :attr:`secrets` redacted
    from every string field (text by a :class:`TextRedactor`, which finds a
    secret split across events and across reads), ``message`` and ``reason`` cut to
    :data:`MAX_MESSAGE` characters (after redaction, so no piece of a secret
    survives a cut), nothing after the first terminal event, and goes to
    :meth:`write`.  Subclasses implement :meth:`write` and :meth:`send`.

    An output is written by one thread, its stream's own, and is not
    locked: another thread that must stop the stream (``serve``'s cancel)
    trips the stream's :class:`~chatpipe.connections.Control` instead, and
    the stream's thread writes the terminal event (see
    :func:`chatpipe.runner.run`), so that nothing can follow it.

    Attributes:
        secrets: strings never to write (API keys); the runner adds them.
        finished: True once a ``done`` or ``error`` was written.
    """

    def __init__(self) -> None:
        self.secrets: list[str] = []
        self.finished = False
        self._run_kind: str | None = None
        self._run: list[str] = []
        self._redactor = TextRedactor(self.secrets)

    def emit(self, event: dict) -> None:
        """Write EVENT, redacted, unless the stream has already ended;
        text is joined first (see the class docstring)."""
        if self.finished:
            return
        kind = event["type"]
        if (kind == "delta" or kind == "reasoning") and len(event) == 2:
            if kind != self._run_kind:
                self._end_run(final=True)
                self._run_kind = kind
            self._run.append(event["content"])
            return
        self._end_run(final=True)
        if self.secrets or kind in ("error", "retry", "warning"):
            event = self._clean(event)
        if kind in TERMINAL:
            self.finished = True
        self.write(event)

    def _end_run(self, final: bool = False) -> None:
        """Write the joined text run, if any, redacted; FINAL: the text
        ends here (anything else comes), so nothing is held back."""
        content = ""
        if self._run:
            run = self._run
            content = run[0] if len(run) == 1 else "".join(run)
            run.clear()
        if self.secrets:
            content = self._redactor.text(content, final)
        if content:
            self.write({"type": self._run_kind, "content": content})
        if final:
            self._run_kind = None

    def _clean(self, event: dict) -> dict:
        """EVENT with secrets redacted and long messages cut."""
        clean = {}
        for key, value in event.items():
            if isinstance(value, str):
                value = redact(value, self.secrets)
                if key in ("message", "reason") and len(value) > MAX_MESSAGE:
                    value = value[:MAX_MESSAGE] + "..."
            elif isinstance(value, (dict, list)):
                value = redact_value(value, self.secrets)
            clean[key] = value
        return clean

    def flush(self) -> None:
        """Write the text run, then out what is queued (:meth:`send`)."""
        self._end_run()
        self.send()

    def write(self, event: dict) -> None:
        """Write one redacted event (subclasses)."""
        raise NotImplementedError

    def send(self) -> None:
        """Write out what :meth:`write` queued (subclasses)."""


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode_line(event: dict, head: str = "{") -> str:
    """EVENT as one compact JSON text, without the newline.

    HEAD is the text before the event's own keys: ``"{"``, or for a line
    tagged with a request id e.g. ``'{"id":"r1",'``.  A plain ``delta`` is
    built directly (the hot path); the result is what ``json.dumps`` gives.
    """
    if event["type"] == "delta" and len(event) == 2:
        return head + '"type":"delta","content":' + encode_basestring(event["content"]) + "}"
    return head + _dumps(event)[1:]


class LineWriter:
    """Queues protocol lines and writes them, with their newlines, in one
    write followed by a flush.  Thread-safe: the one writer of stdout that
    every stream of a process shares.

    Args:
        out: a binary stream (``sys.stdout.buffer``).
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def put(self, line: str) -> None:
        """Queue LINE (a JSON text without newline)."""
        with self._lock:
            self._lines.append(line)

    def write(self, line: str) -> None:
        """Queue LINE and write out the queue."""
        with self._lock:
            self._lines.append(line)
            self._flush()

    def flush(self) -> None:
        """Write out the queued lines and flush the stream."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        if self._lines:
            self._lines.append("")
            text = "\n".join(self._lines)
            self._lines.clear()
            write_out(self._out, text)


class EventLines(Output):
    """One stream's events as JSON lines in a :class:`LineWriter`.

    The lines are queued and written out at :meth:`flush` (before chatpipe
    waits for more bytes) and at the terminal event; text decoded from one
    network read is one line (see :class:`Output`).

    Args:
        writer: the process's line writer.
        request_id: the ``serve`` request id that starts each line, or None
            (``send``): the only difference between the two front ends.
    """

    def __init__(self, writer: LineWriter, request_id: str | int | None = None) -> None:
        super().__init__()
        self._writer = writer
        self._head = "{" if request_id is None else (
            '{"id":' + json.dumps(request_id, ensure_ascii=False) + ",")

    def write(self, event: dict) -> None:
        """Queue EVENT's line; a terminal event is written out at once."""
        if event["type"] in TERMINAL:
            self._writer.write(encode_line(event, self._head))
        else:
            self._writer.put(encode_line(event, self._head))

    def send(self) -> None:
        """Write out the queued lines."""
        self._writer.flush()
