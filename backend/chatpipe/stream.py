"""Run one request: POST, read the events, emit protocol events; retry.

Layers: :mod:`chatpipe.transport` (HTTP), :mod:`chatpipe.reading` (live body bytes),
:mod:`chatpipe.framing` (bytes to server-sent events or NDJSON lines), a
dialect's parser from :mod:`chatpipe.dialects` (events to protocol events).
Front ends do not call this directly: :mod:`chatpipe.runner` does.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any, Iterable

import requests

from chatpipe import (PROTOCOL_VERSION, connections, dialects, framing, protocol, reading,
                      transport)
from chatpipe.dialects.base import Dialect, MalformedEvent, Parser
from chatpipe.dialects.providererrors import stream_error
from chatpipe.errors import Cancelled, StreamError
from chatpipe.protocol import Sink
from chatpipe.connections import Control
from chatpipe.templates import Request

#: First backoff delay in seconds (doubled at each retry, with jitter).
BACKOFF_BASE = 1.0
BACKOFF_MAX = 30.0


class _Gate:
    """Passes events to a sink; remembers whether content went out."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.started = False
        self.content = False
        self.flush = sink.flush

    def emit(self, event: dict) -> None:
        kind = event["type"]
        if kind == "start":
            if self.started:
                return  # one start per answer, whatever the retries
            self.started = True
        elif kind in protocol.CONTENT:
            self.content = True
        self.sink.emit(event)


def _start_event(request: Request, dialect: Dialect, response: requests.Response) -> dict:
    """The ``start`` event: the model is the dialect's reading of REQUEST
    (:meth:`~chatpipe.dialects.base.Dialect.model_of`: the body's
    ``model``, Gemini's from the URL)."""
    return protocol.start(PROTOCOL_VERSION, dialect.model_of(request),
                          response.headers.get("x-request-id")
                          or response.headers.get("request-id"))


def backoff(attempt: int) -> float:
    """Seconds to wait before retry ATTEMPT (1, 2, ...): exponential, with
    "equal jitter" (half fixed, half random), at most BACKOFF_MAX."""
    ceiling = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def run(request: Request, sink: Sink, session: requests.Session | None = None,
        control: Control | None = None) -> None:
    """Send REQUEST and emit its protocol events to SINK as they arrive.

    Emits ``start`` once the response headers arrive, the dialect's events,
    and ``done`` last.  A retryable failure (connection error, HTTP 429 and
    5xx, a provider's overload error) before any content was emitted is
    retried up to ``request.max_retries`` times, with exponential backoff
    and jitter or the delay the provider asked for, while the time since the
    first attempt started plus the next delay fits in
    ``request.retry_budget`` seconds (failed attempts count, not only the
    waits: the last attempt starts within the budget, so a server that never
    answers costs at most ``retry_budget`` plus one ``read_timeout``) and
    the answer in ``request.deadline``; each retry is announced with a
    ``retry`` event.  The HTTP response is closed on return, on error and
    on interruption.  SESSION (default: a new one, from
    :func:`chatpipe.connections.new_session`) lets requests share
    connections; CONTROL lets another thread cancel.

    Raises:
        StreamError: the last failure (after the events that did arrive).
        Cancelled: CONTROL was cancelled.
    """
    own_session = session is None
    session = session or connections.new_session()
    gate = _Gate(sink)
    started = time.monotonic()
    deadline = transport.Deadline.after(request.deadline, start=started)
    attempt = 0
    try:
        while True:
            try:
                return _run_once(request, gate, session, deadline, control,
                                 keep_alive=not own_session)
            except StreamError as err:
                if control is not None and control.cancelled.is_set():
                    raise Cancelled() from None
                attempt += 1
                if not err.retryable or gate.content or attempt > request.max_retries:
                    raise
                delay = err.retry_after if err.retry_after is not None else backoff(attempt)
                now = time.monotonic()
                if now - started + delay > request.retry_budget or now + delay >= deadline.at:
                    raise
                gate.emit(protocol.retry(attempt, delay, err.message, err.status))
                gate.flush()
                if control is None:
                    time.sleep(delay)
                elif control.cancelled.wait(delay):
                    raise Cancelled() from None
    finally:
        gate.flush()
        if own_session:
            session.close()


def _run_once(request: Request, sink: Sink, session: requests.Session,
              deadline: transport.Deadline, control: Control | None,
              keep_alive: bool) -> None:
    """One attempt of :func:`run`: POST, stream, close.  With KEEP_ALIVE the
    rest of the body is read after the terminator, so that the session can
    reuse the connection.  An SSE endpoint that answers one JSON document
    (a request without ``"stream": true``) is read whole and given to the
    parser's :meth:`~chatpipe.dialects.base.Parser.parse_document`."""
    dialect = dialects.get(request.api)
    parser = dialect.parser()
    response = transport.post(session, request, deadline)
    try:
        if control is not None:
            control.attach(response)
        document = _check_content_type(response, parser)
        sink.emit(_start_event(request, dialect, response))
        body = reading.iter_body(response, request.read_timeout, deadline,
                                 sink.flush)
        if document:
            for out in parser.parse_document(_read_document(response, body, request)):
                sink.emit(out)
            return
        if parser.framing == "ndjson":
            stream = framing.ndjson_lines(body, request.max_event_bytes)
        else:
            stream = framing.sse_events(body, request.max_event_bytes)
        malformed = None
        for event in stream:
            if malformed is not None:
                raise StreamError("the server sent an event that is not valid: "
                                  f"{malformed[:200]}")
            try:
                for out in parser.parse(event):
                    sink.emit(out)
            except MalformedEvent as err:
                malformed = str(err)
                continue
            if parser.done:
                if keep_alive:
                    reading.drain(response)
                return
        if malformed is not None:
            raise StreamError("the stream ended early: its last event was cut off",
                              retryable=True)
        for out in parser.end():
            sink.emit(out)
    finally:
        if control is not None:
            control.attach(None)
        response.close()


#: Content types of a web page: a captive portal or a proxy's login page.
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})


def _check_content_type(response: requests.Response, parser: Parser) -> bool:
    """Whether RESPONSE (a 200) is one JSON document rather than a stream:
    ``application/json`` from an SSE endpoint (a request without
    ``"stream": true``, Gemini without ``alt=sse``).  An NDJSON endpoint's
    single object is an NDJSON line, read as a stream.

    Raises:
        StreamError: (not retryable) the server answered with an HTML page.
    """
    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in HTML_TYPES:
        raise StreamError("the server answered with an HTML page, not a stream: "
                          "a proxy or captive portal may be in the way")
    return parser.framing == "sse" and ctype == "application/json"


def _read_document(response: requests.Response, body: Iterable[bytes],
                   request: Request) -> Any:
    """Read BODY (the chunks of RESPONSE's body) whole and parse it as JSON.

    At most ``request.max_event_bytes`` bytes are read (a longer
    ``Content-Length`` is refused before reading).  A BOM is skipped and
    invalid UTF-8 becomes U+FFFD, as in streams.

    Returns:
        The parsed document (any JSON value).
    Raises:
        StreamError: the document is larger than ``request.max_event_bytes``
            (not retryable); it is not JSON (retryable when it is cut off,
            i.e. the text ends inside the value); the provider reported an
            error in it (``{"error": ...}``, through
            :func:`chatpipe.dialects.providererrors.stream_error`: retryable when its
            type says so); or reading failed (see
            :func:`chatpipe.reading.iter_body`).
    """
    limit = request.max_event_bytes
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise framing.too_large("a JSON document", limit)
    parts: list[bytes] = []
    size = 0
    for chunk in body:
        size += len(chunk)
        if size > limit:
            raise framing.too_large("a JSON document", limit)
        parts.append(chunk)
    text = b"".join(parts).decode("utf-8-sig", "replace")
    try:
        doc = json.loads(text)
    except RecursionError:
        raise StreamError("the server answered with a JSON document nested too deeply") from None
    except json.JSONDecodeError as err:
        if not text.strip():
            raise StreamError("the server answered with an empty body, not a stream or a "
                              "JSON document", retryable=True) from None
        if err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string"):
            raise StreamError("the server's JSON answer ended early: it is cut off",
                              retryable=True) from None
        raise StreamError(f"the server's answer is not valid JSON: {text[:200]}") from None
    first = doc[0] if isinstance(doc, list) and doc else doc
    if isinstance(first, dict) and first.get("error"):
        raise stream_error(first)
    return doc
