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

A request's fields are those of ``send`` (one table,
:mod:`chatpipe.requestfields`, checked the same way), with the protocol's
own keys (:data:`PROTOCOL_KEYS`).  Each request runs through
:func:`chatpipe.runner.run`, as ``send`` does, in a thread of its own;
its events are those ``send --output ndjson`` writes, with the request
``id`` added.  ``env`` adds environment variables for that
request's ``${env:NAME}`` placeholders (how an editor passes API keys
without a command line).  ``chat`` (a string) names the conversation
the request belongs to: a tool the user approved with "always" runs
without asking in that chat's later requests, and only there (a request
without ``chat``: in that request alone).  A cancel ends the stream at once with an
``error`` event carrying ``"aborted": true``: the cancel only trips the
stream's :class:`~chatpipe.connections.Control`, and the stream's own
thread writes that error (see :class:`_Stream`).  A request with a usable
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

import json
import queue
import signal
import sys
import threading
import time
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import requests

from chatpipe import (PROTOCOL_VERSION, __version__, connections, jsonin, mcp_host, protocol,
                      requestfields, runner, tools)
from chatpipe.errors import Aborted, Cancelled, OutputClosed
from chatpipe.protocol import EventLines, LineWriter

#: The keys of a request line that are not fields of its job (see
#: :data:`chatpipe.requestfields.JSON_KEYS`): the protocol's own.
PROTOCOL_KEYS = frozenset({"id", "cancel", "preconnect", "tool_result", "tool_confirm"})

#: The keys a request line may have.
REQUEST_KEYS = PROTOCOL_KEYS | requestfields.JSON_KEYS

#: The keys of the lines that answer a running stream's ``tool_request``.
ANSWER_KEYS = ("tool_result", "tool_confirm")

#: Seconds between two looks at a cancel while a tool answer is awaited.
POLL = 0.1

#: Default seconds the running streams may take to finish after stdin ends.
EOF_GRACE = 30.0

#: Seconds a shutdown waits for cancelled streams' threads, in all.
SHUTDOWN_WAIT = 0.5


def job_from_request(request: dict) -> runner.Job:
    """Turn a request line's object into a :class:`~chatpipe.runner.Job`
    (:func:`chatpipe.requestfields.job`, as ``send`` does), its
    :data:`PROTOCOL_KEYS` left out.

    Raises:
        UsageError: an unknown key, or a value of the wrong type.
    """
    return requestfields.job({k: v for k, v in request.items() if k not in PROTOCOL_KEYS})


class _Stream(tools.Asker):
    """One request's stream: its output, its cancel control, its thread;
    and, as its :class:`~chatpipe.tools.Asker`, the client's side of its
    tool calls: a ``tool_request`` event, answered by a ``tool_result`` or
    ``tool_confirm`` line (:meth:`answer`).

    One thread writes the stream's events, so that its terminal event is
    one and last: its own thread, from the moment it takes the output
    (:meth:`claim`, the first thing it does).  A cancel never writes into a claimed
    output: it trips the :attr:`control`, and the thread, woken from its
    read or wait, ends the stream with the aborted ``error``
    (:func:`chatpipe.runner.error_for`).  Only a cancel that comes before
    the thread claimed the output writes that error itself, and the
    thread, finding the output taken, writes nothing.

    Args:
        always: the tools approved with "always" (``(source, name)``
            keys): those of the request's chat, shared by the chat's
            requests; None for a request of no chat (they hold for it
            alone).
    """

    def __init__(self, writer: LineWriter, rid: Any,
                 always: set[tuple[str, str]] | None = None) -> None:
        super().__init__()
        self.id = rid
        self.output = EventLines(writer, rid)
        self.control = connections.Control()
        self.thread: threading.Thread | None = None
        if always is not None:
            self.always = always
        self._answers: queue.Queue = queue.Queue()
        self._awaited: tuple[str, str] | None = None
        self._owner: str | None = None     # who writes the events: "thread" or "cancel"
        self._lock = threading.Lock()

    def claim(self) -> bool:
        """Take the output for the stream's thread; False if a cancel came
        first (and wrote the stream's terminal event): then the thread must
        write nothing."""
        with self._lock:
            if self._owner is None:
                self._owner = "thread"
            return self._owner == "thread"

    def cancel(self) -> None:
        """Cancel the stream: its thread stops as soon as its socket is
        shut, or its wait (a retry's, a tool answer's) ends, and ends the
        stream with the aborted ``error``; before the thread claimed the
        output, that error is written here, once."""
        with self._lock:
            first = self._owner is None
            if first:
                self._owner = "cancel"
        self.control.cancel()
        self._answers.put(None)
        if first:
            runner.report(Cancelled(), self.output)

    def answer(self, key: str, answer: Any) -> str | None:
        """Take a client's ANSWER line (KEY ``tool_result`` or
        ``tool_confirm``) for this stream; return why it is rejected, or
        None when taken."""
        call_id = answer.get("call_id") if isinstance(answer, dict) else None
        if self.control.cancelled.is_set():
            return f"request id {self.id!r} is not streaming"
        with self._lock:
            if self._awaited != (key, call_id):
                return f"request {self.id!r} awaits no {key} for call {call_id!r}"
            self._awaited = None
        self._answers.put(answer)
        return None

    def _ask(self, key: str, event: dict, control: connections.Control | None) -> dict:
        """Emit EVENT (a ``tool_request``) and wait for its KEY answer.

        Raises:
            Cancelled: the stream was cancelled meanwhile.
        """
        with self._lock:
            self._awaited = (key, event["call_id"])
        try:
            self.output.emit(event)
            self.output.flush()
            while True:
                try:
                    answer = self._answers.get(timeout=POLL)
                except queue.Empty:
                    answer = False
                if answer is None or self.control.cancelled.is_set():
                    raise Cancelled()
                if answer is not False:
                    return answer
        finally:
            with self._lock:
                self._awaited = None

    def client_tool(self, call: tools.ToolCall, control: Any) -> tools.ToolResult:
        """Ask the client to run CALL: ``tool_request``, answered by
        ``{"id", "tool_result": {"call_id", "content", "is_error"}}`` or
        ``{"call_id", "denied": true, "reason"}``."""
        answer = self._ask("tool_result", protocol.tool_request(call.id, call.name, call.arguments),
                           control)
        if answer.get("denied"):
            return tools.denial(_text(answer.get("reason")))
        return tools.ToolResult(_text(answer.get("content")), answer.get("is_error") is True)

    def confirm(self, call: tools.ToolCall, tool: tools.Tool, control: Any) -> tuple[str, str]:
        """Ask the client whether CALL may run: ``tool_request`` with
        ``confirm``, answered by ``{"id", "tool_confirm": {"call_id",
        "decision": "once"|"always"|"deny", "reason"}}``."""
        answer = self._ask("tool_confirm", protocol.tool_request(
            call.id, call.name, call.arguments, confirm=True, source=tool.source,
            tool=tool.name), control)
        decision = answer.get("decision")
        return (decision if decision in ("once", "always") else "deny"), _text(answer.get("reason"))


def _text(value: Any) -> str:
    """A client's VALUE as text: strings as they are, anything else as JSON
    (nothing for null)."""
    if value is None or isinstance(value, str):
        return value or ""
    return json.dumps(value, ensure_ascii=False)


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
        self.approvals: dict[str, set[tuple[str, str]]] = {}
        self.mcp = mcp_host.McpHost()

    def session_for(self, url: str) -> requests.Session:
        """The shared session for URL's endpoint (scheme, host and port)."""
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = self._sessions[key] = connections.new_session()
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
        except (OutputClosed, Aborted):
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
        key = next((k for k in ANSWER_KEYS if k in request), None)
        if key is not None:
            with self._lock:
                running = self.streams.get(rid)
            why = (running.answer(key, request[key]) if running is not None
                   else f"request id {rid!r} is not streaming")
            if why:
                self.reject(why, rid)
            return
        if request.get("preconnect"):
            threading.Thread(target=runner.preconnect, daemon=True, name=f"preconnect-{rid}",
                             args=(lambda: job_from_request(request), self.session_for)).start()
            return
        with self._lock:
            if rid in self.streams:
                self.reject(f"request id {rid!r} is already streaming", rid)
                return
            chat = request.get("chat")
            always = self.approvals.setdefault(chat, set()) if isinstance(chat, str) else None
            job = self.streams[rid] = _Stream(self.writer, rid, always)
        job.thread = threading.Thread(target=self._work, args=(job, request), daemon=True,
                                      name=f"chatpipe-{rid}")
        job.thread.start()

    def _work(self, job: _Stream, request: dict) -> None:
        try:
            if job.claim():
                runner.run(lambda: job_from_request(request), job.output, sessions=self.session_for,
                           control=job.control, asker=job, mcp=self.mcp)
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
                jobs = [j for j in self.streams.values()
                        if j.thread is not None and j.thread.is_alive()]
            if not jobs:
                return True
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            jobs[0].thread.join(left)

    def close(self) -> None:
        """Close the shared sessions and stop the MCP servers."""
        for session in self._sessions.values():
            session.close()
        self.mcp.close()


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
