"""A warm backend that never falls over: any line, any state, any signal.

A live ``chatpipe serve`` process gets generated garbage (hypothesis) mixed
with real requests; servers on 127.0.0.1 that accept and never answer show
that cancel and shutdown are prompt before the response headers too.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import EXPECTED
from conftest import Serve, req, text_of

TEXT = "openai-chat/text-with-usage.sse"


class SilentServer:
    """Accepts connections on 127.0.0.1 and never answers; notes when each
    client closes its side."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.accepted = 0
        self.closed: list[float] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn):
        with conn:
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass
            self.closed.append(time.monotonic())

    def close(self):
        self.sock.close()


@pytest.fixture
def silent():
    s = SilentServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def live_serve(tmp_path_factory):
    import os

    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path_factory.mktemp("config")),
           "OPENAI_API_KEY": "sk-test"}
    s = Serve(env)
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait()


garbage = st.one_of(
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" ")),
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 5000).map(lambda n: b'{"id": "g", "messages": ' + b"[" * n),
    st.sampled_from([b"null", b"[]", b"42", b'"id"', b'{"id": true}', b'{"id": 1.5}',
                     b'{"id": null}', b'{"id": [1]}', b"\xff\xfe\x00", b'{"id": "\\ud800"}',
                     b'{"cancel": true}', b'{"id": "nope", "cancel": true}']),
    st.builds(lambda v: json.dumps({"id": "g-bad", "template": v,
                                    "messages": v, "vars": v, "env": v}).encode(),
              st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(
                               st.text(max_size=5), c, max_size=3), max_leaves=10)),
    st.just(b"x" * (1 << 20)),
)

counter = iter(range(10**9))


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(lines=st.lists(garbage, min_size=1, max_size=4))
def test_garbage_lines_never_stop_real_requests(server, live_serve, lines):
    rid = f"real-{next(counter)}"
    for line in lines[:2]:
        live_serve.send(line + b"\n")
    live_serve.send(req(rid, f"{server.url}/replay/{TEXT}?split=50"))
    for line in lines[2:]:
        live_serve.send(line + b"\n")
    events = [e for _, e in live_serve.until(
        lambda e: e.get("id") == rid and e["type"] in ("done", "error"))]
    mine = [e for e in events if e.get("id") == rid]
    assert mine[-1]["type"] == "done", mine[-1]
    assert text_of(mine) == EXPECTED[TEXT]["text"]
    assert live_serve.proc.poll() is None
    for event in events:
        if event["type"] == "rejected":
            assert "id" not in event


def test_a_deeply_nested_line_is_rejected_and_streams_go_on(server, serve):
    serve.send(req("a", f"{server.url}/replay/{TEXT}?split=30&delay=0.01"))
    serve.until(lambda e: e["type"] == "delta")
    serve.send(b"[" * 200000 + b"\n")
    serve.send(b'{"id": "b", "messages": ' + b"[" * 200000 + b"\n")
    events = [e for _, e in serve.until(lambda e: e.get("id") == "a" and e["type"] == "done")]
    assert [e["type"] for e in events if "id" not in e] == ["rejected", "rejected"]
    assert all("nested deeper" in e["message"] for e in events if e["type"] == "rejected")


def test_a_rejected_duplicate_never_looks_like_the_end_of_the_stream(server, serve):
    data_len = 2400
    serve.send(req("d", f"{server.url}/replay/{TEXT}?hold={data_len // 2}"))
    serve.until(lambda e: e["type"] == "start")
    serve.send(req("d", f"{server.url}/replay/{TEXT}"))
    serve.until(lambda e: e["type"] == "rejected")
    server.release.set()
    events = [e for _, e in serve.until(lambda e: e.get("id") == "d" and e["type"] == "done")]
    assert sum(e["type"] in ("done", "error") for e in events if e.get("id") == "d") == 1


def test_sigterm_is_prompt_while_streams_wait_for_headers(silent, serve):
    for i in range(5):
        serve.send(req(f"w{i}", silent.url, template="openai"))
    deadline = time.monotonic() + 10
    while silent.accepted < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert silent.accepted == 5
    sent = time.monotonic()
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.proc.wait(timeout=10) == 143
    took = time.monotonic() - sent
    assert took < 1.0, f"shutdown took {took:.2f} s"
    by_id = {}
    while True:
        _, event = serve.lines.get(timeout=5)
        if event is None:
            break
        by_id.setdefault(event.get("id"), []).append(event)
    assert all(by_id[f"w{i}"][-1].get("aborted") for i in range(5))


def test_a_cancel_before_headers_closes_the_connection_at_once(silent, serve):
    serve.send(req("c", silent.url, template="openai"))
    deadline = time.monotonic() + 10
    while silent.accepted < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)                                    # the request is out, headers awaited
    sent = serve.send({"id": "c", "cancel": True})
    _, last = serve.until(lambda e: e["type"] == "error")[-1]
    assert last["aborted"] is True
    while not silent.closed and time.monotonic() < sent + 5:
        time.sleep(0.01)
    assert silent.closed and silent.closed[0] - sent < 0.5


def test_end_of_input_lets_streams_finish_within_the_grace_then_cancels(server, silent, env):
    import subprocess
    import sys

    from conftest import ROOT

    lines = [json.dumps(req("quick", f"{server.url}/replay/{TEXT}?split=600&delay=0.1")),
             json.dumps(req("never", silent.url))]
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "chatpipe", "serve", "--eof-grace", "1.5"],
                          cwd=ROOT, env=env, input="\n".join(lines) + "\n", capture_output=True,
                          text=True, timeout=30)
    took = time.monotonic() - started
    assert proc.returncode == 0
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    last = {e["id"]: e for e in events if "id" in e}
    assert last["quick"]["type"] == "done", last["quick"]  # finished within the grace
    assert last["never"]["type"] == "error" and last["never"]["aborted"] is True
    assert 1.5 <= took < 4.5, took


def test_serve_says_ready_with_its_protocol_first(serve):
    from chatpipe import PROTOCOL_VERSION, __version__

    _, first = serve.lines.get(timeout=10)
    assert first == {"type": "ready", "protocol": PROTOCOL_VERSION, "version": __version__}


def accepted_connections(server) -> list[float]:
    """A list that gets the time of each connection SERVER accepts from now on."""
    accepted = []
    original = server._httpd.get_request

    def counting():
        conn = original()
        accepted.append(time.monotonic())
        return conn

    server._httpd.get_request = counting
    return accepted


def test_preconnect_opens_the_connection_the_first_request_uses(server, serve):
    accepted = accepted_connections(server)
    serve.send({"id": "p", "template": "openai", "url": f"{server.url}/replay/{TEXT}",
                "preconnect": True})
    deadline = time.monotonic() + 5
    while not accepted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(accepted) == 1 and server.requests == []      # connected, nothing sent
    serve.send(req("r", f"{server.url}/replay/{TEXT}"))
    events = [e for _, e in serve.until(lambda e: e.get("id") == "r" and e["type"] == "done")]
    assert text_of(e for e in events if e.get("id") == "r") == EXPECTED[TEXT]["text"]
    assert len(accepted) == 1                                 # the request used it
    assert all(e.get("id") != "p" for e in events)            # a preconnect gets no answer


def test_after_a_preconnect_the_first_request_imports_nothing(server, env):
    """A preconnect gets the whole request path ready, not only the
    connection: the first request loads no module (its dialect, ``netrc``
    for requests' first ``prepare_request``), so it is as fast as the next."""
    serve = Serve({**env, "PYTHONPROFILEIMPORTTIME": "1"})
    imports: list[tuple[float, str]] = []

    def read_stderr():
        for line in serve.proc.stderr:
            if line.startswith(b"import time:"):
                imports.append((time.monotonic(), line.decode().rsplit("|", 1)[-1].strip()))

    threading.Thread(target=read_stderr, daemon=True).start()
    accepted = accepted_connections(server)
    try:
        url = f"{server.url}/replay/{TEXT}"
        serve.until(lambda e: e["type"] == "ready")
        serve.send({"id": "p", "template": "openai", "url": url, "preconnect": True})
        deadline = time.monotonic() + 10
        while not accepted and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        sent = serve.send(req("r", url))
        events = serve.until(lambda e: e.get("id") == "r" and e["type"] == "done")
        assert text_of(e for _, e in events) == EXPECTED[TEXT]["text"]
        late = [name for t, name in imports if t >= sent]
        assert imports and late == [], f"imported by the first request: {late}"
    finally:
        serve.proc.stdin.close()
        serve.proc.wait(timeout=30)


def test_a_preconnected_tls_connection_survives_its_session_tickets(tmp_path, env):
    """TLS 1.3 servers send session tickets after the handshake; the idle
    preconnected socket is then readable, and must still be reused."""
    import shutil
    import ssl
    import subprocess

    from conftest import Serve
    from replay_server import ReplayServer

    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    assert context.num_tickets > 0                     # what real servers do
    with ReplayServer() as server:
        server._httpd.socket = context.wrap_socket(server._httpd.socket, server_side=True)
        url = server.url.replace("http:", "https:") + f"/replay/{TEXT}"
        accepted = []
        original = server._httpd.get_request
        server._httpd.get_request = lambda: (accepted.append(1), original())[1]
        serve = Serve({**env, "REQUESTS_CA_BUNDLE": str(cert)})
        try:
            serve.send({"id": "p", "template": "openai", "url": url, "preconnect": True})
            deadline = time.monotonic() + 5
            while not accepted and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)                             # the tickets have arrived
            serve.send(req("r", url))
            events = [e for _, e in serve.until(lambda e: e.get("id") == "r"
                                                and e["type"] in ("done", "error"))]
            assert events[-1]["type"] == "done", events[-1]
            assert len(accepted) == 1                   # the request used the preconnection
        finally:
            serve.proc.kill()
            serve.proc.wait()
