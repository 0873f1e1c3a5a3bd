"""``chatpipe serve``: a warm, long-lived backend for many streams at once.

Reads requests as JSON lines on stdin and writes the protocol events of
docs/protocol.md on stdout, each tagged with its request's ``id``::

    stdin:  {"id": "r1", "template": "openai", "messages": [...], "vars": {...},
             "env": {"OPENAI_API_KEY": "..."}, "model": "...", "url": "..."}
    stdin:  {"id": "r1", "cancel": true}
    stdout: {"id":"r1","type":"start","protocol":1,"model":"gpt-4o-mini"}
    stdout: {"id":"r1","type":"delta","content":"Hi"}
    stdout: {"id":"r1","type":"done","finish_reason":"stop"}

An event's own id (``start``'s provider request id, ``tool_call``'s call
id) is renamed ``response_id`` or ``call_id``, since ``id`` is the request's.
Each request streams in a thread of its own; a failing stream never disturbs
the others.  ``env`` adds environment variables for that request's
``${env:NAME}`` placeholders (how an editor passes API keys without a
command line).  A cancel ends the stream at once with an ``error`` event
carrying ``"aborted": true``.  A malformed line gets an ``error`` event
(with the ``id`` when one could be read) and the server goes on.  At the end
of stdin the server waits for the running streams, then exits 0; SIGTERM or
SIGINT cancels them all and exits 143 or 130.  One ``requests.Session`` per
endpoint keeps connections (and TLS sessions) warm between requests.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import requests

from chatpipe import stream
from chatpipe.errors import Aborted, Cancelled, ChatpipeError, StreamError, UsageError
from chatpipe.prepare import check_messages, prepare
from chatpipe.protocol import encode_line, error_event

_ALLOWED = {"id", "template", "messages", "vars", "env", "model", "url", "cancel"}

#: In serve output ``id`` is the request's; an event's own id is renamed.
_OWN_ID = {"start": "response_id", "tool_call": "call_id"}


def own_ids_renamed(event: dict) -> dict:
    """EVENT with its own ``id`` (``start``'s provider request id,
    ``tool_call``'s call id) renamed ``response_id`` or ``call_id``, since
    in serve output ``id`` is the request's."""
    if "id" not in event:
        return event
    renamed = {k: v for k, v in event.items() if k != "id"}
    renamed[_OWN_ID.get(event["type"], "event_id")] = event["id"]
    return renamed


class _Job:
    """One request's stream: its thread, its cancel control, its last event."""

    def __init__(self, server: "Server", rid: Any) -> None:
        self.server = server
        self.id = rid
        self.control = stream.Control()
        self.lock = threading.Lock()
        self.finished = False
        self.secrets: list[str] = []
        self.thread: threading.Thread | None = None
        self._lines: list[str] = []
        self._head = '{"id":' + json.dumps(rid, ensure_ascii=False) + ","

    def emit(self, event: dict) -> None:
        """Queue EVENT tagged with the job's id, unless the job has finished;
        ``done`` and ``error`` are written at once, the rest by :meth:`flush`."""
        with self.lock:
            if self.finished:
                return
            self._lines.append(encode_line(own_ids_renamed(event), self._head))
            if event["type"] in ("done", "error"):
                self.finished = True
                self._flush()

    def flush(self) -> None:
        """Write the queued lines (called before each wait for the server)."""
        with self.lock:
            self._flush()

    def _flush(self) -> None:
        if self._lines:
            self.server.write_many(self._lines)
            self._lines.clear()

    def fail(self, message: str, **fields) -> None:
        """End the job with an ``error`` event (secrets redacted)."""
        for secret in self.secrets:
            if secret:
                message = message.replace(secret, "***")
        self.emit(error_event(message, **fields))

    def cancel(self) -> None:
        """Cancel the stream: the ``error`` event goes out now, the thread
        stops as soon as its socket is shut."""
        self.fail("cancelled", aborted=True)
        self.control.cancel()


class Server:
    """The request loop of ``chatpipe serve``.

    Args:
        out: binary stream for protocol lines (stdout), written whole lines
            at a time under a lock and flushed after each.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._write_lock = threading.Lock()
        self._dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        self.jobs: dict[Any, _Job] = {}
        self._jobs_lock = threading.Lock()
        self._sessions: dict[str, requests.Session] = {}
        self._sessions_lock = threading.Lock()

    def write(self, event: dict) -> None:
        """Write one protocol line (an event dict) and flush."""
        self.write_many([self._dumps(event)])

    def write_many(self, lines: list[str]) -> None:
        """Write protocol LINES (JSON texts) in one write, and flush."""
        lines.append("")
        data = "\n".join(lines).encode("utf-8")
        lines.pop()
        with self._write_lock:
            self._out.write(data)
            self._out.flush()

    def session_for(self, url: str) -> requests.Session:
        """The shared session for URL's endpoint (scheme, host and port)."""
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        with self._sessions_lock:
            session = self._sessions.get(key)
            if session is None:
                session = self._sessions[key] = requests.Session()
            return session

    def handle_line(self, line: bytes) -> None:
        """Act on one request line: start a stream, cancel one, or report
        why the line is not a request."""
        if not line.strip():
            return
        try:
            request = json.loads(line)
        except ValueError as err:
            self.write(error_event(f"not a JSON request line: {err}"))
            return
        rid = request.get("id") if isinstance(request, dict) else None
        if not isinstance(request, dict) or not isinstance(rid, (str, int)):
            self.write(error_event('a request must be a JSON object with an "id" '
                                   "(string or number)"))
            return
        if request.get("cancel"):
            with self._jobs_lock:
                job = self.jobs.get(rid)
            if job is not None:
                job.cancel()
            return
        with self._jobs_lock:
            if rid in self.jobs:
                self.write({"id": rid, **error_event(f"request id {rid!r} is already streaming")})
                return
            job = self.jobs[rid] = _Job(self, rid)
        job.thread = threading.Thread(target=self._work, args=(job, request), daemon=True,
                                      name=f"chatpipe-{rid}")
        job.thread.start()

    def _work(self, job: _Job, request: dict) -> None:
        try:
            unknown = set(request) - _ALLOWED
            if unknown:
                raise UsageError("unknown request keys: " + ", ".join(sorted(unknown)))
            if not isinstance(request.get("template"), str):
                raise UsageError('"template" must be a template name or file path')
            messages = check_messages(request.get("messages", []), "messages")
            env = request.get("env") or {}
            variables = request.get("vars") or {}
            for name, value in (("env", env), ("vars", variables)):
                if not (isinstance(value, dict) and all(isinstance(v, str)
                                                        for v in value.values())):
                    raise UsageError(f'"{name}" must be an object of strings')
            _, req, _ = prepare(request["template"], messages, variables=variables,
                                model=request.get("model"), url=request.get("url"),
                                env={**os.environ, **env})
            job.secrets = req.secrets
            stream.run(req, job, session=self.session_for(req.url), control=job.control)
        except Cancelled:
            job.fail("cancelled", aborted=True)
        except StreamError as err:
            job.fail(err.message, status=err.status, retryable=err.retryable)
        except ChatpipeError as err:
            job.fail(str(err))
        except Exception as err:  # a bug: report it on this stream only
            job.fail(f"internal error: {type(err).__name__}: {err}")
        finally:
            with self._jobs_lock:
                if self.jobs.get(job.id) is job:
                    del self.jobs[job.id]

    def cancel_all(self) -> None:
        """Cancel every running stream."""
        with self._jobs_lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            job.cancel()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the running streams to end (TIMEOUT seconds at most each)."""
        with self._jobs_lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            if job.thread is not None:
                job.thread.join(timeout)

    def close(self) -> None:
        """Close the shared sessions."""
        for session in self._sessions.values():
            session.close()


def main(stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> int:
    """Run ``chatpipe serve`` until the end of STDIN or a signal.

    Returns:
        The exit code: 0 at the end of stdin, 128 + N on signal N.
    """
    stdin = stdin or sys.stdin.buffer
    server = Server(stdout or sys.stdout.buffer)
    try:
        for line in stdin:
            server.handle_line(line)
        server.wait()
        return 0
    except Aborted as err:
        server.cancel_all()
        server.wait(1.0)
        return err.exit_code
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.close()
