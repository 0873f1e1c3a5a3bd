"""A connection refused by this machine is one attempt and an error whose
``hint`` says what to do (refused by another host, it is still retried:
tests/test_faults.py).

Closed ports are real: a port bound on 127.0.0.1 (or ::1) and closed again,
so that the kernel refuses the connection at once.  Without a fix, chatpipe
retried such a connection three times with backoff (about 7 s) before it
said "cannot connect".
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from chatpipe.templates import Request
from conftest import ROOT, ndjson, req, run_stream_in_process

LOCAL_HINT = "start it with `scripts/local-server serve --port {port}` in the chatpipe checkout ({root})"


def closed_port(family=socket.AF_INET, host="127.0.0.1") -> int:
    """A port of HOST that nothing listens on (bound, then closed)."""
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def ipv6_loopback() -> bool:
    try:
        closed_port(socket.AF_INET6, "::1")
    except OSError:
        return False
    return True


def own_address() -> str | None:
    """An address of this machine that is not a loopback one (the one it
    would reach the network by), or None.  A UDP connect sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def request(url: str, **kw) -> Request:
    kw.setdefault("max_retries", 3)
    return Request(url=url, headers={}, body={"model": "m", "stream": True}, api="openai-chat",
                   connect_timeout=5, read_timeout=10, **kw)


HOSTS = ["127.0.0.1", "127.0.0.2", "localhost"] + (["[::1]"] if ipv6_loopback() else [])


@pytest.mark.parametrize("host", HOSTS)
def test_a_port_of_this_machine_that_refuses_is_tried_once(host):
    port = closed_port(socket.AF_INET6, "::1") if host == "[::1]" else closed_port()
    sink, err, elapsed = run_stream_in_process(request(f"http://{host}:{port}/v1/chat/completions"))
    assert sink.of("retry") == []                         # one attempt: no retry announced
    assert elapsed < 4.0                                  # not the ~7 s of three backoffs
    assert err.message == f"cannot connect to {host}:{port}: Connection refused"
    assert not err.retryable and err.details == {
        "kind": "connect", "host": f"{host}:{port}",
        "hint": "no server is listening on that port of this machine: start it, or correct "
                "the template's url (or --url)"}


def test_send_says_how_to_start_the_local_server_at_once(chatpipe):
    port = closed_port()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    started = time.monotonic()
    text = chatpipe("send", "local", "--url", url, "-m", "hi")
    elapsed = time.monotonic() - started
    assert text.returncode == 1 and text.stdout == ""
    assert text.stderr == (f"chatpipe: error: cannot connect to 127.0.0.1:{port}: Connection "
                           "refused; the local model server is not running: "
                           + LOCAL_HINT.format(port=port, root=ROOT)
                           + ", in a terminal of its own (it keeps running until Ctrl-C)\n")
    assert "retry" not in text.stderr and elapsed < 5    # Python's start, and one attempt
    events = ndjson(chatpipe("send", "local", "--url", url, "--output", "ndjson", "-m", "hi").stdout)
    assert [e["type"] for e in events] == ["error"]
    assert events[0] | {"hint": "?"} == {"type": "error", "hint": "?", "retryable": False,
                                         "message": f"cannot connect to 127.0.0.1:{port}: "
                                                    "Connection refused",
                                         "kind": "connect", "host": f"127.0.0.1:{port}"}
    assert LOCAL_HINT.format(port=port, root=ROOT) in events[0]["hint"]


def test_a_copy_of_the_local_template_gets_the_hint_and_others_do_not(chatpipe, tmp_path):
    port = closed_port()
    copy = tmp_path / "mine.json"
    copy.write_text(json.dumps({"chatpipe": {"url": f"http://127.0.0.1:{port}/v1/chat/completions",
                                             "description": "my llama (scripts/local-server)"},
                                "model": "m", "stream": True}))
    proc = chatpipe("send", str(copy), "-m", "hi")
    assert LOCAL_HINT.format(port=port, root=ROOT) in proc.stderr
    proc = chatpipe("send", "openai", "--url", f"http://localhost:{port}/v1/chat/completions",
                    "-m", "hi")
    assert proc.stderr == (f"chatpipe: error: cannot connect to localhost:{port}: Connection "
                           "refused; no server is listening on that port of this machine: start "
                           "it, or correct the template's url (or --url)\n")


def test_serve_says_it_at_once_too(serve):
    port = closed_port()
    sent = serve.send(req("r1", f"http://127.0.0.1:{port}/v1/chat/completions", template="local"))
    got = serve.until(lambda e: e.get("id") == "r1" and e["type"] in ("done", "error"))
    (when, event), = [(t, e) for t, e in got if e.get("id") == "r1"]   # no retry events
    assert when - sent < 4.0
    assert event["type"] == "error" and event["retryable"] is False
    assert (event["kind"], event["host"]) == ("connect", f"127.0.0.1:{port}")
    assert LOCAL_HINT.format(port=port, root=ROOT) in event["hint"]


def test_models_of_the_local_template_say_how_to_start_it(chatpipe, tmp_path):
    port = closed_port()
    proc = chatpipe("models", "local", "--json", "--url",
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    extra_env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert proc.returncode == 1
    event = json.loads(proc.stdout)
    assert (event["kind"], event["host"], event["retryable"]) == ("connect", f"127.0.0.1:{port}",
                                                                  False)
    assert event["message"] == f"cannot connect to 127.0.0.1:{port}: Connection refused"
    assert LOCAL_HINT.format(port=port, root=ROOT) in event["hint"]
    assert proc.stderr == f"chatpipe: error: {event['message']}; {event['hint']}\n"
