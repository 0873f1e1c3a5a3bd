"""A local SSE server on 127.0.0.1 that streams OpenAI-style answers for benchmarks.

``POST /bench?n=N`` streams N content deltas (``"tok "`` each), a finish
chunk and ``data: [DONE]``, as fast as the socket takes them, in 64 KiB
writes.  ``&pace=MS`` sends one event every MS milliseconds instead, each
delta's content being the server's ``time.monotonic_ns()`` at the moment
of writing (CLOCK_MONOTONIC is shared by all processes on Linux), so a
reader can measure the delay to its stdout.  ``&framing=chunked|close|gzip``
as in tests/replay_server.py.  ``&text=prose`` makes the deltas the words of
a short Markdown answer instead (:data:`PROSE`, over and over; paced or
not): :func:`prose` is the whole text of N such deltas.  Standard library
only.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

WRITE_SIZE = 65536

#: A Markdown answer whose words (each with the blanks after it) are the
#: deltas of ``text=prose``: a heading, emphasis, inline code, a list and a
#: code block, for the editors' fontification.
PROSE = """## A short answer

Here is **the idea** in a few words: stream the `delta` events into the \
buffer as they come, and let the editor *draw* them when it has time.

- First, the request goes out with `"stream": true`.
- Then each event is parsed and inserted at the marker.
- Finally, the status line says `done`.

```python
for event in stream:
    print(event["content"], end="")
```

That is all there is to it; the rest is [redisplay](https://www.gnu.org/software/emacs/).

"""

PROSE_TOKENS = re.findall(r"\S+\s*|\s+", PROSE)


def prose(n: int) -> str:
    """The text of the first N deltas of ``text=prose``."""
    return "".join(PROSE_TOKENS[i % len(PROSE_TOKENS)] for i in range(n))


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    """One ``data:`` event of a chat.completion.chunk."""
    delta = {} if content is None else {"content": content}
    payload = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
               "model": "bench", "choices": [{"index": 0, "delta": delta,
                                              "finish_reason": finish}]}
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def body(n: int, text: str = "tok") -> bytes:
    """The whole body of an N-delta answer (TEXT "tok" or "prose")."""
    if text == "prose":
        deltas = b"".join(chunk(PROSE_TOKENS[i % len(PROSE_TOKENS)]) for i in range(n))
    else:
        deltas = chunk("tok ") * n
    return chunk("") + deltas + chunk(None, "stop") + b"data: [DONE]\n\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        q = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
        n, framing = int(q.get("n", 1000)), q.get("framing", "chunked")
        pace = float(q["pace"]) / 1000 if "pace" in q else None
        text = q.get("text", "tok")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if framing == "close":
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Transfer-Encoding", "chunked")
        gz = None
        if framing == "gzip":
            self.send_header("Content-Encoding", "gzip")
            gz = zlib.compressobj(wbits=31)
        self.end_headers()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def write(data: bytes) -> None:
            if gz is not None:
                data = gz.compress(data) + gz.flush(zlib.Z_SYNC_FLUSH)
            if framing == "close":
                self.wfile.write(data)
            elif data:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        try:
            if pace is None:
                data = body(n, text)
                for i in range(0, len(data), WRITE_SIZE):
                    write(data[i:i + WRITE_SIZE])
            else:
                write(chunk(""))
                next_at = time.monotonic()
                for i in range(n):
                    next_at += pace
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    write(chunk(PROSE_TOKENS[i % len(PROSE_TOKENS)] if text == "prose"
                                else str(time.monotonic_ns())))
                write(chunk(None, "stop") + b"data: [DONE]\n\n")
            if gz is not None:
                tail = gz.flush()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(tail), tail))
            if framing != "close":
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients of a benchmark hang up as they please


class BenchServer:
    """The server in a background thread; ``url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self) -> None:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "BenchServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
