"""``chatpipe serve``: a warm, long-lived backend for many streams at once.

Reads requests as JSON lines on stdin and writes the protocol events of
docs/protocol.md on stdout, each tagged with its request's ``id``::

    stdin:  {"id": "r1", "template": "openai", "messages": [...], "vars": {...},
             "env": {"OPENAI_API_KEY": "..."}, "model": "...", "url": "...",
             "params": {"temperature": 0.7, "max_tokens": 500}}
    stdin:  {"id": "r1", "cancel": true}
    stdout: {"id":"r1","type":"start","protocol":2,"model":"gpt-4o-mini"}
    stdout: {"id":"r1","type":"delta","content":"Hi"}
    stdout: {"id":"r1","type":"done","finish_reason":"stop"}

Each request runs through :func:`chatpipe.runner.run`, as ``send`` does, in
a thread of its own; its events are those ``send --output ndjson`` writes,
with the request ``id`` added.  ``env`` adds environment variables for that
request's ``${env:NAME}`` placeholders (how an editor passes API keys
without a command line).  A cancel ends the stream at once with an
``error`` event carrying ``"aborted": true``.  A request with a usable
``id`` whose other fields are wrong is a stream of its own that ends with
an ``error``.  A line that cannot start a stream (not JSON, too deep, no
usable ``id``, an ``id`` already streaming) gets a ``rejected`` event,
which has no ``id``, so it never looks like the end of a running stream;
the server goes on, whatever the line.  A request with ``"preconnect":
true`` sends nothing: it opens a connection to its endpoint (TCP and TLS)
so that the next request there starts at once, and gets no answer.  The
first line the server writes is ``ready``, with the protocol version and
chatpipe's version, so that an editor can check it speaks the same
protocol.  At the end of stdin the running
streams have ``eof_grace`` seconds to finish, then are cancelled, and the
server exits 0; SIGTERM or SIGINT cancels them all at once and exits 143 or
130.  A stdout that cannot be written ends the server with status 1.  One
session per endpoint keeps connections (and TLS sessions) warm.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import requests

from chatpipe import PROTOCOL_VERSION, __version__, jsonin, protocol, runner, transport
from chatpipe.errors import Aborted, OutputClosed, UsageError
from chatpipe.prepare import check_messages
from chatpipe.protocol import EventLines, LineWriter

#: The keys a request line may have.
REQUEST_KEYS = {"id", "template", "messages", "vars", "env", "model", "url", "params",
                "price", "cancel", "preconnect"}

#: Default seconds the running streams may take to finish after stdin ends.
EOF_GRACE = 30.0

#: Seconds a shutdown waits for cancelled streams' threads, in all.
SHUTDOWN_WAIT = 0.5


def job_from_request(request: dict) -> runner.Job:
    """Turn a request line's object into a :class:`~chatpipe.runner.Job`.

    Raises:
        UsageError: an unknown key, or a value of the wrong type.
    """
    unknown = set(request) - REQUEST_KEYS
    if unknown:
        raise UsageError("unknown request keys: " + ", ".join(sorted(unknown)))
    if not isinstance(request.get("template"), str):
        raise UsageError('"template" must be a template name or file path')
    messages = check_messages(request.get("messages", []), "messages")
    env = request.get("env") or {}
    variables = request.get("vars") or {}
    for name, value in (("env", env), ("vars", variables)):
        if not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
            raise UsageError(f'"{name}" must be an object of strings')
    for name in ("model", "url"):
        if request.get(name) is not None and not isinstance(request[name], str):
            raise UsageError(f'"{name}" must be a string')
    return runner.Job(template=request["template"], messages=messages, variables=variables,
                      model=request.get("model"), url=request.get("url"),
                      env={**os.environ, **env}, params=request.get("params") or {},
                      price=request.get("price") is True)


class _Stream:
    """One request's stream: its output, its cancel control, its thread."""

    def __init__(self, writer: LineWriter, rid: Any) -> None:
        self.id = rid
        self.output = EventLines(writer, rid)
        self.control = transport.Control()
        self.thread: threading.Thread | None = None

    def cancel(self) -> None:
        """End the stream now with an aborted ``error``; its thread stops as
        soon as its socket is shut."""
        self.output.emit(protocol.error("cancelled", aborted=True))
        self.control.cancel()


class Server:
    """The request loop of ``chatpipe serve``.

    Args:
        out: binary stream for protocol lines (stdout), shared by all
            streams through one :class:`~chatpipe.protocol.LineWriter`.
    """

    def __init__(self, out: BinaryIO) -> None:
        self.writer = LineWriter(out)
        self.streams: dict[Any, _Stream] = {}
        self.output_closed = False
        self._lock = threading.Lock()
        self._sessions: dict[str, requests.Session] = {}

    def session_for(self, url: str) -> requests.Session:
        """The shared session for URL's endpoint (scheme, host and port)."""
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = self._sessions[key] = transport.new_session()
            return session

    def reject(self, message: str, rid: Any = None) -> None:
        """Answer a line that starts no stream with a ``rejected`` event."""
        self.writer.write(protocol.encode_line(protocol.rejected(message, rid)))

    def handle_line(self, line: bytes) -> None:
        """Act on one request line: start a stream, cancel one, or reject
        the line (see the module docstring); never raises but
        :class:`~chatpipe.errors.OutputClosed`."""
        try:
            self._handle(line)
        except OutputClosed:
            raise
        except Exception as err:  # a bug: this line is lost, the server goes on
            self.reject(f"internal error: {type(err).__name__}: {err}")

    def _handle(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            request = jsonin.loads(line)
        except ValueError as err:
            self.reject(f"not a JSON request line: {err}")
            return
        rid = request.get("id") if isinstance(request, dict) else None
        if (not isinstance(request, dict) or isinstance(rid, bool)
                or not isinstance(rid, (str, int))):
            self.reject('a request must be a JSON object with an "id" (string or number)')
            return
        if request.get("cancel"):
            with self._lock:
                running = self.streams.get(rid)
            if running is not None:
                running.cancel()
            return
        if request.get("preconnect"):
            threading.Thread(target=runner.preconnect, daemon=True, name=f"preconnect-{rid}",
                             args=(lambda: job_from_request(request), self.session_for)).start()
            return
        with self._lock:
            if rid in self.streams:
                self.reject(f"request id {rid!r} is already streaming", rid)
                return
            job = self.streams[rid] = _Stream(self.writer, rid)
        job.thread = threading.Thread(target=self._work, args=(job, request), daemon=True,
                                      name=f"chatpipe-{rid}")
        job.thread.start()

    def _work(self, job: _Stream, request: dict) -> None:
        try:
            runner.run(lambda: job_from_request(request), job.output,
                       sessions=self.session_for, control=job.control)
        except OutputClosed:
            # Nobody reads us any more: stop the server (its main thread).
            self.output_closed = True
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
        finally:
            with self._lock:
                if self.streams.get(job.id) is job:
                    del self.streams[job.id]

    def cancel_all(self) -> None:
        """Cancel every running stream."""
        with self._lock:
            jobs = list(self.streams.values())
        for job in jobs:
            job.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the running streams to end, TIMEOUT seconds at most in
        all (None: no limit).  Return True if none is left running."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                jobs = [j for j in self.streams.values() if j.thread is not None]
            if not jobs:
                return True
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            jobs[0].thread.join(left)

    def close(self) -> None:
        """Close the shared sessions."""
        for session in self._sessions.values():
            session.close()


def main(stdin: BinaryIO | None = None, stdout: BinaryIO | None = None,
         eof_grace: float = EOF_GRACE) -> int:
    """Run ``chatpipe serve`` until the end of STDIN or a signal.

    Args:
        eof_grace: seconds the running streams may take to finish after
            the end of STDIN; those still running then are cancelled.
    Returns:
        The exit code: 0 at the end of stdin, 128 + N on signal N, 1 when
        stdout cannot be written.
    """
    stdin = stdin or sys.stdin.buffer
    server = Server(stdout or sys.stdout.buffer)
    try:
        server.writer.write(protocol.encode_line(protocol.ready(PROTOCOL_VERSION, __version__)))
        for line in stdin:
            server.handle_line(line)
        if not server.wait(eof_grace):
            server.cancel_all()
            server.wait(SHUTDOWN_WAIT)
        return 0
    except (Aborted, OutputClosed) as err:
        server.output_closed = server.output_closed or isinstance(err, OutputClosed)
        try:
            server.cancel_all()
        except OutputClosed:
            server.output_closed = True
        server.wait(SHUTDOWN_WAIT)
        return 1 if server.output_closed else err.exit_code
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.close()
