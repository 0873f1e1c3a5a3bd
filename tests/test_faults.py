"""Faults and bad input, against real local servers: a clear error, nothing lost.

Retries (Retry-After, retry-after-ms, Gemini retryDelay, budget), the
overall deadline against keep-alives and slow-loris servers, a 10 MB event,
a BOM, invalid UTF-8, providers' error bodies, and secrets.
"""

from __future__ import annotations

import email.utils
import json
import time

import pytest

from chatpipe import httperrors, stream
from chatpipe.templates import Request
from conftest import run_stream_in_process as run, EXPECTED, FAKE_KEY, STREAMS, ndjson
from replay_server import Reply, error_reply, split_every

TEXT = "openai-chat/text-with-usage.sse"


def request(url, api="openai-chat", **kw) -> Request:
    kw.setdefault("max_retries", 3)
    kw.setdefault("read_timeout", 10)
    return Request(url=url, headers={}, body={"model": "m", "stream": True}, api=api,
                   connect_timeout=5, **kw)


def recording(name=TEXT) -> Reply:
    return Reply([(STREAMS / name).read_bytes()])


def json_error(status, payload, headers=None) -> Reply:
    return Reply([json.dumps(payload).encode()], status=status, framing="length",
                 content_type="application/json", headers=headers or {})


# ---- retries ---------------------------------------------------------------------

def test_429_with_retry_after_then_success(server):
    first = error_reply(429)
    first.headers["Retry-After"] = "1"
    url = server.add("/v1/chat/completions", [first, recording()])
    sink, err, elapsed = run(request(url))
    assert err is None
    retry = sink.events[0]
    assert retry["type"] == "retry" and retry["attempt"] == 1 and retry["delay"] == 1.0
    assert retry["status"] == 429 and retry["reason"].startswith("Rate limit reached")
    assert sink.events[1]["type"] == "start"
    assert sink.text() == EXPECTED[TEXT]["text"]
    assert elapsed >= 1.0
    assert len(server.requests) == 2


def test_503_storm_exhausts_the_retry_budget(server):
    storm = error_reply(503)
    storm.headers["Retry-After"] = "1"
    url = server.add("/v1/chat/completions", storm)
    sink, err, elapsed = run(request(url, max_retries=10, retry_budget=2.5))
    assert [e["attempt"] for e in sink.of("retry")] == [1, 2]
    assert err is not None and err.status == 503 and err.retryable
    assert len(server.requests) == 3
    assert 2.0 <= elapsed < 5


def test_retry_count_is_bounded(server):
    url = server.add("/v1/chat/completions", error_reply(500))
    server.routes["/v1/chat/completions"][0].headers["retry-after-ms"] = "10"
    sink, err, _ = run(request(url, max_retries=2))
    assert [e["delay"] for e in sink.of("retry")] == [0.01, 0.01]
    assert err.status == 500 and len(server.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_no_retry_on_client_errors(server, status):
    url = server.add("/v1/chat/completions", error_reply(status))
    sink, err, _ = run(request(url))
    assert err.status == status and not err.retryable
    assert sink.events == [] and len(server.requests) == 1


def test_connection_refused_is_retried_with_backoff(monkeypatch):
    """Refused by another host (this machine's own address that is not a
    loopback one); refused by a loopback address, there is no retry
    (tests/test_connect_errors.py)."""
    from test_connect_errors import closed_port, own_address

    address = own_address()
    if address is None:
        pytest.skip("this machine has no address but its loopback ones")
    monkeypatch.setattr(stream, "BACKOFF_BASE", 0.05)
    sink, err, _ = run(request(f"http://{address}:{closed_port(host=address)}/", max_retries=2))
    retries = sink.of("retry")
    assert [e["attempt"] for e in retries] == [1, 2]
    assert 0.025 <= retries[0]["delay"] <= 0.05 and 0.05 <= retries[1]["delay"] <= 0.1
    assert "Connection refused" in err.message


def test_no_retry_after_text_arrived(server):
    data = (STREAMS / TEXT).read_bytes()
    cut = Reply(split_every(data[:data.index(b"data: [DONE]")], 50), cut=True)
    url = server.add("/v1/chat/completions", [cut, recording()])
    sink, err, _ = run(request(url))
    assert err is not None and "ended early" in err.message
    assert sink.of("retry") == [] and sink.text() == EXPECTED[TEXT]["text"]
    assert len(server.requests) == 1


def test_anthropic_overloaded_on_a_200_stream_is_retried(server):
    overloaded = Reply([b'event: message_start\ndata: {"type":"message_start","message":'
                        b'{"id":"msg_1","usage":{"input_tokens":5}}}\n\n'
                        b'event: error\ndata: {"type":"error","error":'
                        b'{"type":"overloaded_error","message":"Overloaded"}}\n\n'])
    url = server.add("/v1/messages", [overloaded, recording("anthropic/basic.sse")])
    sink, err, _ = run(request(url, api="anthropic-messages", retry_budget=30))
    assert err is None
    assert [(e["attempt"], e["reason"]) for e in sink.of("retry")] == [(1, "Overloaded")]
    assert len(sink.of("start")) == 1
    assert sink.text() == "Hello there!"


def test_anthropic_529_overloaded_http_error(server):
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    url = server.add("/v1/messages", [json_error(529, body, {"retry-after-ms": "20"}),
                                      recording("anthropic/basic.sse")])
    sink, err, _ = run(request(url, api="anthropic-messages"))
    assert err is None and sink.of("retry")[0]["delay"] == 0.02 and sink.text() == "Hello there!"


def test_gemini_retry_delay_in_the_error_body(server):
    body = {"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
                      "status": "RESOURCE_EXHAUSTED", "details": [
                          {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                           "retryDelay": "0.2s"}]}}
    url = server.add("/v1beta/models/g:streamGenerateContent",
                     [json_error(429, body), recording("gemini/thinking-function-call-crlf.sse")])
    sink, err, _ = run(request(url, api="gemini"))
    assert err is None
    assert sink.of("retry")[0]["delay"] == 0.2
    assert sink.of("retry")[0]["reason"] == "Resource has been exhausted (e.g. check quota)."


def test_retry_after_parsing():
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= httperrors.retry_after({"retry-after": date}) <= 30
    assert httperrors.retry_after({"retry-after": "2"}) == 2.0
    assert httperrors.retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert httperrors.retry_after({"retry-after": "soon"}) is None
    assert httperrors.retry_after({}, {"error": {"details": [{"retryDelay": "3s"}]}}) == 3.0


# ---- providers' error bodies -------------------------------------------------------

@pytest.mark.parametrize("api,status,payload,message", [
    ("anthropic-messages", 401, {"type": "error", "error": {
        "type": "authentication_error", "message": "invalid x-api-key"}}, "invalid x-api-key"),
    ("gemini", 400, [{"error": {"code": 400, "message": "API key not valid. Please pass a valid "
                                "API key.", "status": "INVALID_ARGUMENT"}}],
     "API key not valid. Please pass a valid API key."),
    ("ollama", 404, {"error": "model \"llama9\" not found, try pulling it first"},
     "model \"llama9\" not found, try pulling it first"),
    ("openai-responses", 400, {"error": {"message": "Unsupported parameter: 'temperature'.",
                                         "type": "invalid_request_error"}},
     "Unsupported parameter: 'temperature'."),
])
def test_http_error_bodies_by_dialect(server, api, status, payload, message):
    url = server.add("/x", json_error(status, payload))
    _, err, _ = run(request(url, api=api))
    assert (err.message, err.status, err.retryable) == (message, status, False)


def test_ollama_error_line_on_a_200(server):
    body = (b'{"model":"m","message":{"role":"assistant","content":"Hi"},"done":false}\n'
            b'{"error":"an unexpected error occurred"}\n')
    url = server.add("/api/chat", Reply([body], content_type="application/x-ndjson"))
    sink, err, _ = run(request(url, api="ollama"))
    assert sink.text() == "Hi" and err.message == "an unexpected error occurred"


def test_gemini_blocked_prompt(server):
    body = b'data: {"promptFeedback": {"blockReason": "SAFETY"}}\r\n\r\n'
    url = server.add("/g", Reply([body]))
    _, err, _ = run(request(url, api="gemini"))
    assert err.message == "the prompt was blocked (SAFETY)"


def test_gemini_without_alt_sse_is_read_as_one_document(server):
    name = "gemini/thinking-stream-array.json"
    url = server.add("/g", Reply(split_every((STREAMS / name).read_bytes(), 100),
                                 content_type="application/json"))
    sink, err, _ = run(request(url, api="gemini"))
    assert err is None
    assert sink.text() == EXPECTED[name]["text"]
    assert [e["type"] for e in sink.events] == ["start", "reasoning", "delta", "usage", "done"]
    assert sink.events[-1] == {"type": "done", "finish_reason": "stop",
                               "raw_finish_reason": "STOP"}
    assert len(server.requests) == 1


@pytest.mark.parametrize("name", ["anthropic/basic.sse", "openai-responses/basic-text.sse",
                                  "ollama/basic-text.ndjson", "gemini/basic-text-no-blank-lines.sse"])
def test_every_dialect_reports_a_stream_that_ends_early(server, name):
    data = (STREAMS / name).read_bytes()
    # Drop the terminating event (or, for Gemini, the chunk with finishReason).
    marker = {"anthropic": b"event: message_stop", "openai-responses": b"event: response.completed",
              "ollama": b'{"model":"granite3-dense:8b","created_at":"2025-03-20T18:32:38.766786Z"',
              "gemini": b'data: {"candidates": [{"content": {"parts": [{"text": " a parrot to say'}
    provider = name.split("/")[0]
    api = {"anthropic": "anthropic-messages"}.get(provider, provider)
    url = server.add("/s", Reply([data[:data.index(marker[provider])]], framing="close"))
    sink, err, _ = run(request(url, api=api))
    assert err is not None and err.message.startswith("the stream ended early")
    assert EXPECTED[name]["text"].startswith(sink.text()) and sink.text()
    assert sink.of("done") == []


# ---- timeouts --------------------------------------------------------------------------

def test_keepalive_comments_cannot_extend_the_deadline(server):
    url = server.add("/k", Reply([b": keep-alive\n\n"] * 100, delay=0.1))
    sink, err, elapsed = run(request(url, deadline=1.0, read_timeout=5))
    assert err is not None and "deadline" in err.message
    assert 0.9 <= elapsed < 3
    assert sink.of("retry") == []


def test_slow_loris_is_cut_off_by_the_deadline(server):
    data = (STREAMS / TEXT).read_bytes()
    url = server.add("/slow", Reply(split_every(data, 1)[:10], delay=1.0))
    sink, err, elapsed = run(request(url, deadline=2.5, read_timeout=5))
    assert err is not None and "deadline" in err.message
    assert 2.4 <= elapsed < 4.5


# ---- bytes the SSE parser would trip on -------------------------------------------------

def test_huge_single_event(server):
    content = "x" * (10 * 1024 * 1024)
    event = json.dumps({"choices": [{"index": 0, "delta": {"content": content}}]}).encode()
    body = b"data: " + event + b"\n\ndata: [DONE]\n\n"
    url = server.add("/huge", Reply(split_every(body, 256 * 1024)))
    sink, err, elapsed = run(request(url, max_event_bytes=16 << 20))
    assert err is None
    [delta] = sink.of("delta")
    assert delta["content"] == content
    print(f"10 MB event decoded in {elapsed:.2f} s")


@pytest.mark.parametrize("split", [None, 1])
def test_bom_does_not_lose_the_first_event(server, split):
    body = ("\ufeffdata: " + json.dumps({"choices": [{"index": 0, "delta": {"content": "First"}}]})
            + "\n\ndata: " + json.dumps({"choices": [{"index": 0, "delta": {"content": " second"},
                                                       "finish_reason": "stop"}]})
            + "\n\ndata: [DONE]\n\n").encode()
    url = server.add("/bom", Reply(split_every(body, split) if split else [body]))
    sink, err, _ = run(request(url))
    assert err is None and sink.text() == "First second"


def test_invalid_utf8_becomes_replacement_characters(server):
    body = (b'data: {"choices":[{"index":0,"delta":{"content":"caf\xc3"}}]}\n\n'
            b'data: {"choices":[{"index":0,"delta":{"content":" ok \xff\xfe end"}}]}\n\n'
            b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
            b"data: [DONE]\n\n")
    url = server.add("/bad", Reply(split_every(body, 3)))
    sink, err, _ = run(request(url))
    assert err is None
    assert sink.text() == "caf\ufffd ok \ufffd\ufffd end"


def test_mixed_line_endings(server):
    body = (b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\r\n\r\n'
            b'data: {"choices":[{"index":0,"delta":{"content":"b"}}]}\n\r\n'
            b'data: {"choices":[{"index":0,"delta":{"content":"c"}}]}\r\r'
            b'data: {"choices":[{"index":0,"delta":{"content":"d"}}]}\n\n'
            b"data: [DONE]\r\n")
    url = server.add("/mixed", Reply(split_every(body, 2)))
    sink, err, _ = run(request(url))
    assert err is None and sink.text() == "abcd"


# ---- secrets --------------------------------------------------------------------------

def test_key_absent_from_everything_printed(server, chatpipe, env):
    """A server that echoes the Authorization header in an error event, in an
    HTTP error and in its text: the key never reaches stdout or stderr."""
    echo = json.dumps({"error": {"message": f"denied for Bearer {FAKE_KEY}"}}).encode()
    server.add("/mid", Reply([b"data: " + echo + b"\n\n"]))
    server.add("/http", Reply([echo], status=401, framing="length",
                              content_type="application/json"))
    for path in ("/mid", "/http"):
        for output in ("text", "ndjson"):
            proc = chatpipe("send", "openai", "--url", server.url + path, "-m", "x",
                            "--output", output, extra_env={"CHATPIPE_DEBUG": "1"})
            printed = proc.stdout + proc.stderr
            assert proc.returncode == 1
            assert FAKE_KEY not in printed and "denied for Bearer ***" in printed
    assert all(r["headers"]["Authorization"] == f"Bearer {FAKE_KEY}" for r in server.requests)


def test_usage_error_exit_code_2_in_ndjson(chatpipe, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"chatpipe": {"url": "http://x/", "api": "nope"}}))
    proc = chatpipe("send", str(path), "-m", "x", "--output", "ndjson")
    assert proc.returncode == 2
    [event] = ndjson(proc.stdout)
    assert 'unknown API dialect "nope"' in event["message"]
