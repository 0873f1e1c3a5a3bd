#!/usr/bin/env python3
"""A real HTTP server on 127.0.0.1 that replays recorded provider streams.

Used by the pytest suite (in-process, :class:`ReplayServer`) and by the Emacs
ERT tests (as a subprocess: ``python tests/replay_server.py`` prints
``http://127.0.0.1:PORT`` on its first line and serves until stdin closes or
it is killed).  Standard library only.

Routes (any POST body is recorded; ``GET /requests`` returns the recorded
requests as a JSON array of ``{"path", "headers", "body", "client_port"}``, ``DELETE
/requests`` forgets them):

``POST /replay/<file>``
    Streams ``tests/streams/<file>`` (a recording).  Query parameters:

    - ``framing``: ``chunked`` (default), ``close`` (no length, the server
      closes the connection at the end), ``gzip`` (chunked and gzip-encoded,
      each write sync-flushed) or ``length`` (Content-Length).
    - ``split``: bytes per write (default: the whole body at once).
    - ``delay``: seconds to sleep between writes (default 0).
    - ``cut``: stop after this many bytes and drop the connection abruptly.
    - ``hold``: after this many bytes, wait until ``POST /release`` (or 30 s).

``GET /openai-models/v1/models``
    An OpenAI-style model list (:data:`OPENAI_MODELS`); GETs of registered
    routes are answered too.  GETs are recorded with ``"method": "GET"``.

``POST /error/<status>``
    Answers STATUS with an OpenAI-style JSON error body;
    ``?body=html|empty|text`` for other bodies; ``?retry_after=S`` adds a
    ``Retry-After`` header.

In-process tests can also register any response with :meth:`ReplayServer.add`,
or a function of the request body that returns one (a scripted model that
checks what it is sent before it answers).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

STREAMS = Path(__file__).resolve().parent / "streams"

ERROR_MESSAGES = {
    400: ("invalid_request_error", "Invalid value for 'messages': empty array."),
    401: ("invalid_request_error", "Incorrect API key provided: sk-abc***xyz."),
    404: ("invalid_request_error", "The model `gpt-9` does not exist or you do not have access to it."),
    429: ("rate_limit_exceeded", "Rate limit reached for gpt-4o in organization org-x on tokens per min."),
    500: ("server_error", "The server had an error while processing your request. Sorry about that!"),
}


#: ``GET /openai-models/v1/models``: a model list in the shape of OpenAI's
#: ``GET /v1/models`` (https://platform.openai.com/docs/api-reference/models/list).
OPENAI_MODELS = {"object": "list", "data": [
    {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
    {"id": "test-model", "object": "model", "created": 1700000000, "owned_by": "replay"},
    {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
]}


@dataclass
class Reply:
    """One canned response.

    Attributes:
        chunks: the body, as the pieces to write one by one.
        status: HTTP status.
        framing: ``chunked``, ``close``, ``gzip`` or ``length``.
        headers: extra response headers.
        delay: seconds to sleep between pieces.
        cut: if set, drop the connection after the pieces (no terminator).
        gate: if set, called before each piece after the first with its
            index; tests use it to send in lockstep with what they read.
    """

    chunks: list[bytes]
    status: int = 200
    framing: str = "chunked"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    cut: bool = False
    gate: Callable[[int], None] | None = None
    content_type: str = "text/event-stream"


def split_every(data: bytes, size: int) -> list[bytes]:
    """Split DATA into pieces of SIZE bytes (the last may be shorter)."""
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def error_reply(status: int, body: str = "json") -> Reply:
    """A :class:`Reply` for an HTTP error STATUS with an OpenAI-style body."""
    if body == "html":
        payload = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        ctype = "text/html"
    elif body == "empty":
        payload, ctype = b"", "text/plain"
    elif body == "text":
        payload, ctype = b"upstream connect error", "text/plain"
    else:
        kind, message = ERROR_MESSAGES.get(status, ("api_error", f"Error {status}"))
        payload = json.dumps({"error": {"message": message, "type": kind,
                                        "param": None, "code": kind}}).encode()
        ctype = "application/json"
    return Reply([payload], status=status, framing="length", content_type=ctype)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self):
        if self.path == "/requests":
            data = json.dumps(self.server.owner.requests).encode()
            return self._send_simple(200, data, "application/json")
        url = urlsplit(self.path)
        reply = self.server.owner.get_reply_for(url.path)
        if reply is None:
            return self._send_simple(404, b'{"error": "not found"}', "application/json")
        self.server.owner.requests.append(
            {"method": "GET", "path": self.path, "headers": dict(self.headers.items()),
             "body": None, "client_port": self.client_address[1]})
        self._send(reply)

    def do_DELETE(self):
        self.server.owner.requests.clear()
        self._send_simple(204, b"", "text/plain")

    def do_POST(self):
        raw = self._body()
        url = urlsplit(self.path)
        if url.path == "/release":
            self.server.owner.release.set()
            return self._send_simple(204, b"", "text/plain")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.server.owner.requests.append(
            {"path": self.path, "headers": dict(self.headers.items()), "body": body,
             "client_port": self.client_address[1]})
        reply = self.server.owner.reply_for(url.path, parse_qs(url.query))
        if callable(reply):
            reply = reply(body)
        if reply is None:
            return self._send_simple(404, b'{"error": {"message": "no such route"}}',
                                     "application/json")
        self._send(reply)

    def _send_simple(self, status: int, data: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        framing = reply.framing
        compress = None
        if framing == "length":
            self.send_header("Content-Length", str(sum(map(len, reply.chunks))))
        elif framing == "close":
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Transfer-Encoding", "chunked")
            if framing == "gzip":
                self.send_header("Content-Encoding", "gzip")
                compress = zlib.compressobj(wbits=31)
        self.end_headers()
        self.wfile.flush()
        chunked = framing in ("chunked", "gzip")
        try:
            for i, piece in enumerate(reply.chunks):
                if i:
                    if reply.gate:
                        reply.gate(i)
                    if reply.delay:
                        time.sleep(reply.delay)
                if compress is not None:
                    piece = compress.compress(piece) + compress.flush(zlib.Z_SYNC_FLUSH)
                if chunked:
                    if piece:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                else:
                    self.wfile.write(piece)
                self.wfile.flush()
            if reply.cut:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if compress is not None:
                tail = compress.flush()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(tail), tail))
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Room for a burst of connections (a serve process starting every
    # stream at once): the default backlog of 5 resets the rest on a busy machine.
    request_queue_size = 128
    owner: "ReplayServer"

    def handle_error(self, request, client_address):
        # A client that hangs up (an aborted chatpipe) is part of the tests.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class ReplayServer:
    """A replay server on 127.0.0.1 in a background thread.

    Use as a context manager; ``url`` is ``http://127.0.0.1:PORT``.
    """

    def __init__(self, port: int = 0) -> None:
        self.requests: list[dict] = []
        self.routes: dict[str, list[Reply]] = {}
        self.release = threading.Event()
        self._httpd = _Server(("127.0.0.1", port), _Handler)
        self._httpd.owner = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> "ReplayServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def add(self, path: str, reply: "Reply | Callable | list") -> str:
        """Serve REPLY at PATH from now on; return its full URL.

        A list of replies is served in turn, the last one from then on.  A
        reply may be a function of the request's parsed body that returns
        the :class:`Reply`.
        """
        self.routes[path] = reply if isinstance(reply, list) else [reply]
        return self.url + path

    def get_reply_for(self, path: str) -> Reply | None:
        """The reply for a GET of PATH: a registered route, or the model list
        of ``/openai-models/v1/models`` (see :data:`OPENAI_MODELS`)."""
        if path in self.routes:
            return self.reply_for(path, {})
        if path == "/openai-models/v1/models":
            return Reply([json.dumps(OPENAI_MODELS).encode()], framing="length",
                         content_type="application/json")
        return None

    def reply_for(self, path: str, query: dict[str, list[str]]) -> Reply | None:
        """The reply for a request to PATH with QUERY (see the module docstring)."""
        if path in self.routes:
            replies = self.routes[path]
            return replies.pop(0) if len(replies) > 1 else replies[0]
        arg = {k: v[-1] for k, v in query.items()}
        if path.startswith("/error/"):
            reply = error_reply(int(path.rsplit("/", 1)[1]), arg.get("body", "json"))
            if "retry_after" in arg:
                reply.headers["Retry-After"] = arg["retry_after"]
            return reply
        if path.startswith("/replay/"):
            file = STREAMS / unquote(path[len("/replay/"):])
            if not file.is_file() or STREAMS not in file.resolve().parents:
                return None
            data = file.read_bytes()
            if "cut" in arg:
                data = data[:int(arg["cut"])]
            hold = int(arg["hold"]) if "hold" in arg else None
            size = int(arg.get("split", 0)) or max(len(data), 1)
            if hold is not None:
                chunks = [data[:hold]] + split_every(data[hold:], size)
            else:
                chunks = split_every(data, size)
            release = self.release
            gate = (lambda i: release.wait(30)) if hold is not None else None
            if hold is not None:
                release.clear()
            ctype = {".ndjson": "application/x-ndjson", ".json": "application/json"}.get(
                file.suffix, "text/event-stream")
            return Reply(chunks, framing=arg.get("framing", "chunked"),
                         delay=float(arg.get("delay", 0)), cut="cut" in arg,
                         gate=gate if hold is not None else None, content_type=ctype)
        return None


def main() -> None:
    """Serve on 127.0.0.1 (port from argv[1], default any); print the URL."""
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    with ReplayServer(port) as server:
        print(server.url, flush=True)
        try:
            sys.stdin.read()  # until the parent closes our stdin or kills us
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
