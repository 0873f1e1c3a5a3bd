"""Run one request: POST, read the server-sent events, emit protocol events."""

from __future__ import annotations

from typing import Protocol

import requests
from sseclient import SSEClient

from chatpipe import dialects, transport, PROTOCOL_VERSION
from chatpipe.errors import StreamError
from chatpipe.templates import Request


class Sink(Protocol):
    """Where protocol events go (see :mod:`chatpipe.protocol`)."""

    def emit(self, event: dict) -> None: ...


def _start_event(request: Request, response: requests.Response) -> dict:
    event = {"type": "start", "protocol": PROTOCOL_VERSION}
    model = request.body.get("model")
    if model:
        event["model"] = model
    request_id = response.headers.get("x-request-id") or response.headers.get("request-id")
    if request_id:
        event["id"] = request_id
    return event


def run(request: Request, sink: Sink, session: requests.Session | None = None) -> None:
    """Send REQUEST and emit its protocol events to SINK as they arrive.

    Emits ``start`` when the response headers arrive, then the dialect's
    events, ending with ``done``.  The HTTP response is closed on return,
    on error and on interruption (KeyboardInterrupt, signals).

    Raises:
        StreamError: HTTP error, connection trouble, a provider's error event,
            or a stream that ended before its terminator (after the events
            that did arrive have been emitted).
    """
    dialect = dialects.get(request.api)
    decoder = dialect.Decoder()
    own_session = session is None
    session = session or requests.Session()
    response = None
    try:
        response = transport.post(session, request)
        sink.emit(_start_event(request, response))
        malformed = None
        events = SSEClient(transport.iter_body(response, request.read_timeout)).events()
        for event in events:
            if malformed is not None:
                raise StreamError(f"the server sent an event that is not valid: {malformed[:200]}")
            try:
                for out in decoder.decode(event):
                    sink.emit(out)
            except dialects.MalformedEvent as err:
                malformed = str(err)
                continue
            if decoder.done:
                return
        if malformed is not None:
            raise StreamError("the stream ended early: its last event was cut off",
                              retryable=True)
        raise StreamError(f"the stream ended early: the connection closed before "
                          f"{decoder.terminator}", retryable=True)
    finally:
        if response is not None:
            response.close()
        if own_session:
            session.close()
