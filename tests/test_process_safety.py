"""Requests that end when they should and errors that say where: against real
HTTP servers on 127.0.0.1.

- ``chatpipe models`` against endpoints that drip one byte every 0.5 s (the
  body, the headers, or page after page) ends within the template's
  ``deadline`` with an error naming it, and so does an answer whose server
  drips its headers.
- A 404 says which URL answered it, without credentials, and the URL it
  was likely meant to be when a base URL ending in ``/`` or ``/v1`` doubled
  a part of the path (the ``litellm`` template with ``LITELLM_BASE_URL``).
- A gateway's error with ``"code": "500"`` (a string) is retried as the
  same error with ``500`` (a number) is.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from chatpipe.templates import Request
from conftest import FAKE_KEY, run_stream_in_process
from replay_server import Reply

#: Seconds a test allows past a deadline: the CLI's start and its exit.
SLACK = 3.0


def write_template(env, name: str, url: str, **block) -> str:
    """Write an openai-chat template NAME for URL into the user's template
    folder of ENV; BLOCK adds to its ``chatpipe`` block.  Return NAME."""
    folder = f"{env['XDG_CONFIG_HOME']}/chatpipe/templates"
    os.makedirs(folder, exist_ok=True)
    doc = {"chatpipe": {"api": "openai-chat", "url": url, "max_retries": 0,
                        "headers": {"Authorization": "Bearer ${env:OPENAI_API_KEY}"}, **block},
           "model": "m", "stream": True, "messages": []}
    with open(f"{folder}/{name}.json", "w", encoding="utf-8") as out:
        json.dump(doc, out)
    return name


class DripServer:
    """A TCP server on 127.0.0.1 that answers each connection one byte
    every INTERVAL seconds: a model list's response, headers first
    (DRIP_HEADERS) or after headers sent at once."""

    def __init__(self, interval: float = 0.5, drip_headers: bool = False) -> None:
        self.interval = interval
        self.drip_headers = drip_headers
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        body = json.dumps({"object": "list", "data": [{"id": "m%d" % i} for i in range(500)]})
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        with conn:
            try:
                conn.recv(65536)
                if not self.drip_headers:
                    conn.sendall(head)
                    head = b""
                for byte in head + body.encode():
                    if self.stop.wait(self.interval):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def drip():
    servers = []

    def make(**kw) -> DripServer:
        servers.append(DripServer(**kw))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


@pytest.mark.parametrize("drip_headers", [False, True], ids=["body", "headers"])
def test_models_drip_ends_by_the_deadline(chatpipe, env, drip, drip_headers):
    server = drip(drip_headers=drip_headers)
    name = write_template(env, "drip", f"{server.url}/v1/chat/completions",
                          read_timeout=2, deadline=3)
    env["XDG_CACHE_HOME"] = env["XDG_CACHE_HOME"] + "/models-drip"
    started = time.monotonic()
    proc = chatpipe("models", name, "--json", timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout
    port = server.url.rsplit(":", 1)[1]
    assert proc.stderr == (f"chatpipe: error: the model list from 127.0.0.1:{port} ran past "
                           "its deadline of 3 s (chatpipe.deadline)\n")
    event = json.loads(proc.stdout)
    assert event["type"] == "error" and event["kind"] == "deadline"
    assert 3 <= elapsed < 3 + SLACK, elapsed


def test_models_deadline_bounds_every_page(chatpipe, env, server):
    """Pages that each come within the read timeout, but together take
    longer than the deadline."""
    slow = Reply([b'{"data": [{"id": "a"}], "has_more": true, ', b'"last_id": "x"}'],
                 framing="chunked", content_type="application/json", delay=1.0)
    server.add("/v1/models", slow)
    folder = f"{env['XDG_CONFIG_HOME']}/chatpipe/templates"
    os.makedirs(folder, exist_ok=True)
    with open(f"{folder}/pages.json", "w", encoding="utf-8") as out:
        json.dump({"chatpipe": {"api": "anthropic-messages",
                                "url": f"{server.url}/v1/messages", "read_timeout": 2,
                                "deadline": 3},
                   "model": "m", "stream": True, "max_tokens": 5, "messages": []}, out)
    started = time.monotonic()
    proc = chatpipe("models", "pages", timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    assert "ran past its deadline of 3 s (chatpipe.deadline)" in proc.stderr
    assert 3 <= elapsed < 3 + SLACK, elapsed
    assert len([r for r in server.requests if r.get("method") == "GET"]) >= 3


def test_answer_whose_headers_drip_ends_by_the_deadline(drip):
    server = drip(drip_headers=True, interval=0.3)
    request = Request(url=f"{server.url}/v1/chat/completions", headers={},
                      body={"model": "m", "stream": True}, api="openai-chat",
                      connect_timeout=5, read_timeout=2, deadline=2, max_retries=0)
    sink, err, elapsed = run_stream_in_process(request)
    assert err is not None
    assert err.message == ("the stream ended early: it ran past its deadline of 2 s "
                           "(chatpipe.deadline)")
    assert not err.retryable
    assert 2 <= elapsed < 2 + 1.5, elapsed


# ---- a 404 says where --------------------------------------------------------

@pytest.mark.parametrize("base, sent, meant", [
    ("{url}/", "//v1/chat/completions", "/v1/chat/completions"),
    ("{url}/v1", "/v1/v1/chat/completions", "/v1/chat/completions"),
])
def test_404_names_the_url_and_the_doubled_path(chatpipe, env, server, base, sent, meant):
    host = server.url.replace("http://", "")
    # Credentials in the URL never show: neither a user name and password
    # nor a key in the query.
    env["LITELLM_BASE_URL"] = base.format(url=f"http://user:hunter2-pass@{host}")
    env["LITELLM_API_KEY"] = FAKE_KEY
    proc = chatpipe("send", "litellm", "--var", "model=m", input="hi")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(
        f"chatpipe: error: HTTP 404: no such route (http://{host}{sent} answered 404: its "
        f"path has ")
    assert proc.stderr.rstrip().endswith(
        f"the URL was likely meant to be http://{host}{meant})")
    assert "hunter2" not in proc.stderr and "user" not in proc.stderr.split("(")[1]
    assert FAKE_KEY not in proc.stdout + proc.stderr


def test_404_without_a_message_names_the_url(server, chatpipe, env):
    server.add("/v1/chat/completions", Reply([b""], status=404, framing="length",
                                             content_type="text/plain"))
    url = f"{server.url}/v1/chat/completions?key=sk-secret-in-query-0123"
    name = write_template(env, "nf", url)
    proc = chatpipe("send", name, input="hi")
    assert proc.returncode == 1
    assert proc.stderr == (f"chatpipe: error: HTTP 404: Not Found (the response had no body) "
                           f"({server.url}/v1/chat/completions answered 404)\n")


# ---- a numeric string is a status ----------------------------------------------

@pytest.mark.parametrize("code", [500, "500", "503"], ids=["number", "string", "string-503"])
@pytest.mark.parametrize("where", ["in-stream", "http-400-like"])
def test_gateway_error_code_as_string_is_retried(server, code, where):
    error = {"error": {"message": "upstream failed", "type": None, "param": None, "code": code}}
    ok = (b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}, '
          b'"finish_reason": "stop"}]}\n\ndata: [DONE]\n\n')
    if where == "in-stream":
        first = Reply([b"data: " + json.dumps(error).encode() + b"\n\n"])
    else:
        first = Reply([json.dumps(error).encode()], status=422, framing="length",
                      content_type="application/json")
    url = server.add("/v1/chat/completions", [first, Reply([ok])])
    request = Request(url=url, headers={}, body={"model": "m", "stream": True},
                      api="openai-chat", connect_timeout=5, read_timeout=5, max_retries=2)
    sink, err, _ = run_stream_in_process(request)
    assert err is None, err
    assert [e["attempt"] for e in sink.of("retry")] == [1]
    assert sink.text() == "Hi"


@pytest.mark.parametrize("code", ["400", "5000", "abc", True, "50"])
def test_other_codes_are_not_retried(server, code):
    error = {"error": {"message": "bad", "code": code}}
    url = server.add("/v1/chat/completions",
                     Reply([b"data: " + json.dumps(error).encode() + b"\n\n"]))
    request = Request(url=url, headers={}, body={"model": "m", "stream": True},
                      api="openai-chat", connect_timeout=5, read_timeout=5, max_retries=2)
    sink, err, _ = run_stream_in_process(request)
    assert err is not None and not err.retryable
    assert sink.of("retry") == []
