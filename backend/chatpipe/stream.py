"""Run one request: POST, read the events, emit protocol events; retry.

Layers: :mod:`chatpipe.transport` (HTTP, live body bytes),
:mod:`chatpipe.framing` (bytes to server-sent events or NDJSON lines), a
dialect's parser from :mod:`chatpipe.dialects` (events to protocol events).
Front ends do not call this directly: :mod:`chatpipe.runner` does.
"""

from __future__ import annotations

import random
import time

import requests

from chatpipe import PROTOCOL_VERSION, dialects, framing, protocol, transport
from chatpipe.dialects.base import MalformedEvent, Parser
from chatpipe.errors import Cancelled, StreamError
from chatpipe.protocol import Sink
from chatpipe.transport import Control
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


def _start_event(request: Request, response: requests.Response) -> dict:
    return protocol.start(PROTOCOL_VERSION, request.body.get("model"),
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
    and jitter or the delay the provider asked for, while the waits fit in
    ``request.retry_budget`` seconds and the answer in ``request.deadline``;
    each retry is announced with a ``retry`` event.  The HTTP response is
    closed on return, on error and on interruption.  SESSION (default: a new
    one) lets requests share connections; CONTROL lets another thread cancel.

    Raises:
        StreamError: the last failure (after the events that did arrive).
        Cancelled: CONTROL was cancelled.
    """
    own_session = session is None
    session = session or requests.Session()
    gate = _Gate(sink)
    started = time.monotonic()
    deadline = started + request.deadline
    waited = 0.0
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
                if (waited + delay > request.retry_budget
                        or time.monotonic() + delay >= deadline):
                    raise
                gate.emit(protocol.retry(attempt, delay, err.message, err.status))
                gate.flush()
                if control is None:
                    time.sleep(delay)
                elif control.cancelled.wait(delay):
                    raise Cancelled() from None
                waited += delay
    finally:
        gate.flush()
        if own_session:
            session.close()


def _run_once(request: Request, sink: Sink, session: requests.Session,
              deadline: float, control: Control | None, keep_alive: bool) -> None:
    """One attempt of :func:`run`: POST, stream, close.  With KEEP_ALIVE the
    rest of the body is read after the terminator, so that the session can
    reuse the connection."""
    parser = dialects.get(request.api).parser()
    response = transport.post(session, request)
    try:
        if control is not None:
            control.attach(response)
        _check_content_type(response, parser)
        sink.emit(_start_event(request, response))
        body = transport.iter_body(response, request.read_timeout, deadline,
                                   sink.flush)
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
                    transport.drain(response)
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


def _check_content_type(response: requests.Response, parser: Parser) -> None:
    """Raise a clear StreamError when an SSE endpoint answers plain JSON
    (a request without ``stream: true``, Gemini without ``alt=sse``)."""
    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if parser.framing == "sse" and ctype == "application/json":
        raise StreamError("the endpoint answered with one JSON document, not a stream "
                          f"of server-sent events: {parser.not_streaming_hint}")
