"""Secrets stay secret: never in anything written (never to another
origin either: the redirect rules, for the POST and the GET alike, are in
tests/test_http_client.py).

Hostile local servers echo the key everywhere they can (response headers,
text, tool calls, retried and final error bodies, long bodies that get cut);
every byte chatpipe writes (stdout, stderr, saved files, serve output, in
every output mode) is scanned for any 8-character piece of the key and of a
URL password.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import FAKE_KEY, ROOT, STREAMS
from replay_server import Reply, ReplayServer

TEXT = "openai-chat/text-with-usage.sse"
PASSWORD = "pw-CHATPIPE-URL-SECRET-98765"


def pieces(secret: str, size: int = 8) -> set[str]:
    """Every SIZE-character piece of SECRET."""
    return {secret[i:i + size] for i in range(len(secret) - size + 1)}


def assert_clean(text: str, *secrets: str) -> None:
    found = [p for s in secrets for p in pieces(s) if p in text]
    assert not found, f"secret pieces written: {found[:5]}"


def template(tmp_path, url: str, api: str = "openai-chat", headers: dict | None = None,
             **block) -> str:
    headers = {"Authorization": "Bearer ${env:OPENAI_API_KEY}"} if headers is None else headers
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"chatpipe": {"api": api, "url": url, "headers": headers, **block},
                                "model": "m", "stream": True, "messages": []}))
    return str(path)


# ---- nothing written holds a piece of a secret ----------------------------------------------

def hostile(server: ReplayServer) -> None:
    """Routes that echo FAKE_KEY in every place a server can put it."""
    events = [
        {"choices": [{"index": 0, "delta": {"content": f"your key is {FAKE_KEY}."}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": FAKE_KEY,
                      "function": {"name": "f", "arguments": json.dumps({"k": FAKE_KEY})}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    server.add("/echo", Reply([body + b"data: [DONE]\n\n"], headers={"x-request-id": FAKE_KEY}))
    # A retried 429 that echoes the key, then a long 500 body whose key
    # straddles every cut a naive writer might make (500, 2000 characters).
    rate = json.dumps({"error": {"message": f"bad key {FAKE_KEY}", "type": "rate_limit_error"}})
    long_body = "".join(f"{'x' * n}{FAKE_KEY}" for n in (470, 1490, 20))
    server.add("/fail", [Reply([rate.encode()], status=429, headers={"Retry-After": "0"},
                               content_type="application/json"),
                         Reply([long_body.encode()], status=500, content_type="text/plain")])


@pytest.mark.parametrize("route", ["/echo", "/fail"])
def test_send_writes_no_piece_of_a_key(chatpipe, server, tmp_path, route):
    hostile(server)
    path = template(tmp_path, f"{server.url}{route}", max_retries=1)
    for args in (["--output", "text"], ["--output", "ndjson"], ["--save"]):
        proc = chatpipe("send", path, "-m", "hi", *args)
        assert proc.returncode == (0 if route == "/echo" else 1), proc.stderr
        assert "***" in proc.stdout + proc.stderr
        assert_clean(proc.stdout + proc.stderr, FAKE_KEY)
    saved = open(path).read()
    assert_clean(saved, FAKE_KEY)
    assert "${env:OPENAI_API_KEY}" in saved


def test_serve_writes_no_piece_of_a_key(server, env, tmp_path):
    hostile(server)
    path = template(tmp_path, f"{server.url}/echo", max_retries=1)
    lines = [json.dumps({"id": route, "template": path, "url": f"{server.url}{route}",
                         "messages": [{"role": "user", "content": "hi"}],
                         "env": {"OPENAI_API_KEY": FAKE_KEY}}) for route in ("/echo", "/fail")]
    lines.append(json.dumps({"id": "pw", "template": path,
                             "url": f"http://user:{PASSWORD}@127.0.0.1:9/v1",
                             "messages": [{"role": "user", "content": "hi"}]}))
    proc = subprocess.run([sys.executable, "-m", "chatpipe", "serve"], cwd=ROOT, env=env,
                          input="\n".join(lines) + "\n", capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {e["type"] for e in events} >= {"start", "delta", "tool_call", "retry", "done",
                                           "error"}
    assert_clean(proc.stdout + proc.stderr, FAKE_KEY, PASSWORD)


def test_a_key_split_across_the_deltas_of_one_read_is_redacted(chatpipe, server, tmp_path):
    """The deltas of one network read are one run of text, redacted as a
    whole: a key cut into pieces, each too short to match alone, is found."""
    half = len(FAKE_KEY) // 2
    parts = [f"key: {FAKE_KEY[:half]}", FAKE_KEY[half:], " (end)"]
    events = [{"choices": [{"index": 0, "delta": {"content": part}}]} for part in parts]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    server.add("/split", Reply([body + b"data: [DONE]\n\n"]))
    path = template(tmp_path, f"{server.url}/split")
    for output in ("text", "ndjson"):
        proc = chatpipe("send", path, "-m", "hi", "--output", output)
        assert proc.returncode == 0, proc.stderr
        assert "key: *** (end)" in (proc.stdout if output == "text" else
                                    "".join(json.loads(line).get("content", "")
                                            for line in proc.stdout.splitlines()))
        assert_clean(proc.stdout + proc.stderr, FAKE_KEY)


def test_a_url_password_is_never_printed(chatpipe, tmp_path):
    path = template(tmp_path, "http://127.0.0.1:9/v1", max_retries=0)
    for output in ("text", "ndjson"):
        proc = chatpipe("send", path, "--url", f"http://user:{PASSWORD}@127.0.0.1:9/v1",
                        "--output", output, "-m", "hi")
        assert proc.returncode == 1 and "cannot connect to 127.0.0.1:9" in proc.stdout + proc.stderr
        assert_clean(proc.stdout + proc.stderr, PASSWORD)


def test_the_key_is_not_on_any_command_line_or_in_a_saved_chat(chatpipe, server, tmp_path):
    path = template(tmp_path, f"{server.url}/replay/{TEXT}")
    proc = chatpipe("send", path, "--save", "-m", "hi")
    assert proc.returncode == 0, proc.stderr
    assert_clean(open(path).read(), FAKE_KEY)
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {FAKE_KEY}"
    assert (STREAMS / TEXT).exists()
