"""Limits that bound a request: the retry budget, the largest event, and the
local llama.cpp server that serves concurrent requests without cutting one
off.  Real HTTP servers on 127.0.0.1.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chatpipe import framing, stream
from chatpipe.errors import StreamError
from chatpipe.templates import DEFAULT_MAX_EVENT_BYTES, Request
from conftest import run_stream_in_process as run, ROOT, ListSink
from replay_server import Reply, split_every


def request(url, api="openai-chat", **kw) -> Request:
    kw.setdefault("max_retries", 3)
    kw.setdefault("read_timeout", 10)
    return Request(url=url, headers={}, body={"model": "m"}, api=api, connect_timeout=5, **kw)


# ---- 5. the retry budget bounds the whole request ------------------------------------------

class _Silent(BaseHTTPRequestHandler):
    """Reads the request, then never answers (until the test ends)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append(time.monotonic())
        self.server.release.wait(30)


@pytest.fixture
def silent_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Silent)
    httpd.daemon_threads = True
    httpd.seen, httpd.release = [], threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()


def test_retry_budget_counts_the_failed_attempts(silent_server, monkeypatch):
    monkeypatch.setattr(stream, "BACKOFF_BASE", 0.1)
    url = f"http://127.0.0.1:{silent_server.server_address[1]}/v1/chat/completions"
    sink, err, elapsed = run(request(url, read_timeout=1, retry_budget=1.5, max_retries=3))
    assert err is not None and "sent no response headers within 1 s" in err.message
    # Attempt 1 times out at 1 s; a retry after ~0.1 s fits the budget of
    # 1.5 s; attempt 2 times out at ~2.1 s, and a retry then would not.
    assert len(silent_server.seen) == 2
    assert [e["attempt"] for e in sink.of("retry")] == [1]
    assert elapsed <= 1.5 + 1 + 0.3, elapsed


def test_retry_budget_smaller_than_an_attempt(silent_server):
    url = f"http://127.0.0.1:{silent_server.server_address[1]}/v1/chat/completions"
    sink, err, elapsed = run(request(url, read_timeout=1, retry_budget=1.0, max_retries=3))
    assert err is not None and len(silent_server.seen) == 1 and sink.events == []
    assert elapsed < 1.5


# ---- 6. max event size -------------------------------------------------------------------

class _Endless(BaseHTTPRequestHandler):
    """Answers 200 with a chunked body of SIZE bytes without a single
    newline (the same 64 KiB block again and again, nothing held)."""

    protocol_version = "HTTP/1.1"
    size = 50 * 1024 * 1024
    head = b"data: "
    ctype = "text/event-stream"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.count += 1
        self.send_response(200)
        self.send_header("Content-Type", self.ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        block = b"x" * 65536
        frame = b"%x\r\n%s\r\n" % (len(block), block)
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(self.head), self.head))
            for _ in range(self.size // len(block)):
                self.wfile.write(frame)
                self.server.sent += len(block)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True


@pytest.fixture
def endless_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    httpd.daemon_threads = True
    httpd.count = httpd.sent = 0
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("api,head,ctype,what", [
    ("openai-chat", b"data: ", "text/event-stream", "an event"),
    ("ollama", b'{"message": {"content": "', "application/x-ndjson", "a line"),
])
def test_endless_event_is_cut_off_fast_in_bounded_memory(endless_server, monkeypatch,
                                                         api, head, ctype, what):
    monkeypatch.setattr(_Endless, "head", head)
    monkeypatch.setattr(_Endless, "ctype", ctype)
    url = f"http://127.0.0.1:{endless_server.server_address[1]}/s"
    tracemalloc.start()
    try:
        sink, err, elapsed = run(request(url, api=api))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"{what}: cut off after {elapsed:.2f} s, peak {peak / 2**20:.1f} MiB traced")
    assert err is not None
    assert err.message.startswith(f"the server sent {what} larger than "
                                  f"{DEFAULT_MAX_EVENT_BYTES} bytes (chatpipe.max_event_bytes)")
    assert not err.retryable and endless_server.count == 1
    assert elapsed < 3
    assert peak < 64 * 2**20
    assert sink.of("delta") == []


def test_event_size_limit_against_http(server):
    events = b"".join(b"data: " + json.dumps(
        {"choices": [{"index": 0, "delta": {"content": c * 900}}]}).encode() + b"\r\n\r\n"
        for c in "abc")
    body = events + b"data: [DONE]\r\n\r\n"
    # Each event is ~960 bytes: a 1,000 byte limit passes, however the body
    # is split (here between CR and LF, and between the two line endings).
    for split in (1, 7, 961, 962, 963, len(body)):
        url = server.add("/ok", Reply(split_every(body, split)))
        sink, err, _ = run(request(url, max_event_bytes=1000))
        assert err is None, (split, err)
        assert sink.text() == "a" * 900 + "b" * 900 + "c" * 900
    for split in (1, 7, len(body)):
        url = server.add("/big", Reply(split_every(body, split)))
        _, err, _ = run(request(url, max_event_bytes=900))
        assert err is not None and "larger than 900 bytes" in err.message, split


def _limited(chunks, limit):
    return b"".join(framing.event_chunks(chunks, limit))


@pytest.mark.parametrize("chunks", [
    [b"a" * 10 + b"\n", b"\n" + b"b" * 10 + b"\n\n"],          # LF | LF
    [b"a" * 10 + b"\n\n" + b"b" * 10, b"\n\n"],
    [b"a" * 6, b"a" * 4 + b"\n\n", b"b" * 10 + b"\n\n"],        # 10 bytes in two chunks
    [(b"a" * 10 + b"\n\n") * 50],                               # one chunk, many events
])
def test_event_chunks_passes_events_up_to_the_limit(chunks):
    pieces = list(framing.event_chunks(chunks, 12))
    assert b"".join(pieces) == b"".join(chunks)
    assert all(piece.endswith(b"\n\n") for piece in pieces)  # whole events only


@pytest.mark.parametrize("chunks", [
    [b"a" * 10, b"a" * 10],
    [b"a" * 10 + b"\n", b"a" * 10 + b"\n\n"],                  # one LF is not a boundary
    [b"a" * 10 + b"\n\n" + b"b" * 8, b"b" * 8 + b"\n\n"],
    [(b"a" * 10 + b"\n\n") * 5 + b"c" * 30 + b"\n\n" + (b"a" * 10 + b"\n\n") * 5],
])
def test_event_chunks_refuses_a_larger_event(chunks):
    with pytest.raises(StreamError, match="an event larger than 12 bytes"):
        _limited(chunks, 12)


def test_ndjson_line_limit():
    lines = [b'{"a": "%s"}' % (b"x" * 20) for _ in range(5)]
    body = b"\n".join(lines) + b"\n"
    for split in (1, 5, 27, len(body)):
        got = list(framing.ndjson_lines(split_every(body, split), 30))
        assert [g.data.encode() for g in got] == lines
    for split in (1, 5, len(body)):
        with pytest.raises(StreamError, match="a line larger than 20 bytes"):
            list(framing.ndjson_lines(split_every(body, split), 20))


# ---- 4. the local llama.cpp server -------------------------------------------------------

def _local_server_module():
    loader = importlib.machinery.SourceFileLoader(
        "local_server", str(ROOT / "scripts" / "local-server"))
    spec = importlib.util.spec_from_loader("local_server", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_local_server_serves_concurrent_requests_without_interrupting():
    command = _local_server_module().server_command("py", "model.gguf", "127.0.0.1", 8091)
    i = command.index("--interrupt_requests")
    assert command[i + 1] == "False"


def test_make_demo_uses_the_port():
    proc = subprocess.run(["make", "-n", "demo", "PORT=8091"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.replace("\\\n", " ").splitlines()  # join continued lines
    [line] = [line for line in lines if "scripts/local-server run" in line]
    assert "--port 8091" in line
    assert "--url http://127.0.0.1:8091/v1/chat/completions" in line


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory):
    """URL of a running local llama.cpp server, stopped after the module."""
    if os.environ.get("CHATPIPE_SKIP_LLAMA") == "1":
        pytest.skip("CHATPIPE_SKIP_LLAMA=1")
    log = tmp_path_factory.mktemp("llama") / "server.log"
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "local-server"), "serve",
                             "--port", "0", "--log", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        proc.kill()
        pytest.fail(f"local server did not start (run `make local-server`): {line}")
    yield line.split()[1]
    proc.terminate()
    proc.wait(timeout=20)


def _local_request(url, **body) -> Request:
    return Request(url=f"{url}/v1/chat/completions", headers={},
                   body={"model": "gemma3-270m", "max_tokens": 24,
                         "messages": [{"role": "user", "content": "Tell me a joke"}], **body},
                   api="openai-chat", read_timeout=120, max_retries=0)


@pytest.mark.llama
def test_real_server_answers_concurrent_requests(llama_url):
    sinks = [ListSink() for _ in range(3)]
    errors: list[BaseException] = []

    def one(sink):
        try:
            stream.run(_local_request(llama_url, stream=True), sink)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=one, args=(s,)) for s in sinks]
    for t in threads:
        t.start()
        time.sleep(0.2)  # each starts while the previous one is answering
    for t in threads:
        t.join(300)
    assert errors == []
    for sink in sinks:
        assert sink.text().strip()
        assert sink.events[-1]["finish_reason"] in ("stop", "length")


@pytest.mark.llama
def test_real_server_answers_without_stream(llama_url):
    sink = ListSink()
    stream.run(_local_request(llama_url), sink)
    assert [e["type"] for e in sink.events] == ["start", "delta", "usage", "done"]
    assert sink.events[-1]["finish_reason"] in ("stop", "length")
    assert sink.text().strip()
