"""The OpenAI chat completions stream, replayed by a real HTTP server.

Recorded streams from tests/streams/ (see its README.md for sources and
licences) are served on 127.0.0.1 split at awkward places: one byte at a
time, mid-line, inside UTF-8 characters, between the CR and LF of a CRLF;
in three framings.  chatpipe's real transport (requests + sseclient-py)
must produce exactly the recording's text, usage and finish_reason.
"""

from __future__ import annotations

import json

import pytest

from chatpipe import stream
from chatpipe.errors import StreamError
from chatpipe.templates import Request
from conftest import ListSink, EXPECTED, STREAMS
from replay_server import Reply, split_every

#: OpenAI-compatible recordings whose text this issue covers (no refusals,
#: tool calls or n > 1, which belong to a later issue).
TEXT_RECORDINGS = [
    "openai-chat/text-with-usage.sse",
    "openai-chat/finish-length.sse",
    "openai-chat/logprobs.sse",
    "openai-chat/utf8-multiline-json.sse",
    "deepseek/reasoner-reasoning-content.sse",
    "openrouter/gpt5-text-processing-comments.sse",
    "llama-cpp/glm45-air-think-tags.sse",
    "vllm/glm45-air-reasoning-content.sse",
]


def request_for(url: str) -> Request:
    return Request(url=url, headers={}, body={"model": "m", "stream": True, "messages": []},
                   api="openai-chat", connect_timeout=5, read_timeout=10, max_retries=0)


def run_stream(server, reply: Reply) -> tuple[ListSink, StreamError | None]:
    sink = ListSink()
    url = server.add("/v1/chat/completions", reply)
    try:
        stream.run(request_for(url), sink)
    except StreamError as err:
        return sink, err
    return sink, None


def mid_utf8_splits(data: bytes) -> list[bytes]:
    """Split DATA inside every multi-byte UTF-8 character (after its lead byte)."""
    cuts = [i + 1 for i, b in enumerate(data) if b >= 0xC0]
    pieces, last = [], 0
    for cut in cuts:
        pieces.append(data[last:cut])
        last = cut
    pieces.append(data[last:])
    return [p for p in pieces if p]


def crlf_splits(data: bytes) -> list[bytes]:
    """Turn LF into CRLF and split every CRLF between its CR and its LF."""
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return [p + b"\r" for p in data.split(b"\r")[:-1]] + [data.split(b"\r")[-1]]


SPLITS = {
    "whole": lambda d: [d],
    "one-byte": lambda d: split_every(d, 1),
    "mid-line-7": lambda d: split_every(d, 7),
    "mid-line-61": lambda d: split_every(d, 61),
    "mid-utf8": mid_utf8_splits,
    "crlf-split": crlf_splits,
}


def expected_usage(usage):
    if not usage:
        return None
    return {"type": "usage", "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"], "total_tokens": usage["total_tokens"]}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("name", TEXT_RECORDINGS)
def test_recording_replays_exactly(server, name, split):
    expected = EXPECTED[name]
    data = (STREAMS / name).read_bytes()
    sink, err = run_stream(server, Reply(SPLITS[split](data)))
    assert err is None, err
    assert sink.text() == expected["text"]
    kinds = [e["type"] for e in sink.events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert set(kinds[1:-1]) <= {"delta", "usage", "reasoning"}
    assert sink.events[-1]["finish_reason"] == expected["finish_reason"]
    usage = [{k: e[k] for k in ("type", "input_tokens", "output_tokens", "total_tokens")}
             for e in sink.of("usage")]
    assert usage == ([expected_usage(expected["usage"])] if expected["usage"] else [])
    if usage:
        assert kinds[-2] == "usage"
    # Every delta carries text: role-only chunks and empty content emit nothing.
    assert all(e["content"] for e in sink.of("delta"))


@pytest.mark.parametrize("framing", ["chunked", "close", "gzip", "length"])
def test_framings(server, framing):
    name = "openai-chat/utf8-multiline-json.sse"
    data = (STREAMS / name).read_bytes()
    sink, err = run_stream(server, Reply(split_every(data, 5), framing=framing))
    assert err is None
    assert sink.text() == EXPECTED[name]["text"]


def test_start_event_has_model_and_request_id(server):
    data = (STREAMS / "openai-chat/logprobs.sse").read_bytes()
    sink, _ = run_stream(server, Reply([data], headers={"x-request-id": "req_123"}))
    assert sink.events[0] == {"type": "start", "protocol": 2, "model": "m", "response_id": "req_123"}


def test_keepalive_comments_are_ignored(server):
    body = (b": keep-alive\n\n"
            b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}\n\n'
            b": keep-alive\n\n"
            b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
            b": OPENROUTER PROCESSING\n\n"
            b'data: {"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n'
            b"data: [DONE]\n\n")
    sink, err = run_stream(server, Reply(split_every(body, 3)))
    assert err is None
    assert [e["content"] for e in sink.of("delta")] == ["Hel", "lo"]
    assert sink.events[-1] == {"type": "done", "finish_reason": "stop"}


def test_mid_stream_error_after_text(server):
    body = (b'data: {"choices":[{"index":0,"delta":{"content":"Partial "}}]}\n\n'
            b'data: {"error":{"message":"The server had an error processing your request.",'
            b'"type":"server_error","code":null}}\n\n')
    sink, err = run_stream(server, Reply([body]))
    assert sink.text() == "Partial "
    assert err is not None
    assert err.message == "The server had an error processing your request."
    assert err.status is None and err.retryable is True
    assert not sink.of("done")


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_stream_without_done_ends_early_after_all_text(server, framing):
    name = "openai-chat/text-with-usage.sse"
    data = (STREAMS / name).read_bytes()
    data = data[:data.index(b"data: [DONE]")]
    sink, err = run_stream(server, Reply(split_every(data, 11), framing=framing))
    assert sink.text() == EXPECTED[name]["text"]
    assert err is not None and "ended early" in err.message and "[DONE]" in err.message
    assert err.retryable
    assert not sink.of("done")


def test_connection_dropped_mid_event_keeps_whole_deltas_only(server):
    name = "openai-chat/utf8-multiline-json.sse"
    data = (STREAMS / name).read_bytes()
    # Cut in the middle of an event's JSON (and inside a UTF-8 character).
    cut = data.index("°".encode()) + 1
    sink, err = run_stream(server, Reply(split_every(data[:cut], 40), cut=True))
    assert err is not None and "ended early" in err.message
    text = sink.text()
    assert EXPECTED[name]["text"].startswith(text)
    assert text.endswith('"temperature": "18')   # nothing of the cut event


def test_truncated_last_event_is_not_text(server):
    # The connection closes cleanly, but the last event is cut off.
    body = (b'data: {"choices":[{"index":0,"delta":{"content":"One"}}]}\n\n'
            b'data: {"choices":[{"index":0,"delta":{"content":"Tw')
    sink, err = run_stream(server, Reply([body], framing="close"))
    assert sink.text() == "One"
    assert err is not None and "cut off" in err.message


@pytest.mark.parametrize("status,message,retryable", [
    (401, "Incorrect API key provided: sk-abc***xyz.", False),
    (404, "The model `gpt-9` does not exist or you do not have access to it.", False),
    (429, "Rate limit reached for gpt-4o in organization org-x on tokens per min.", True),
    (500, "The server had an error while processing your request. Sorry about that!", True),
])
def test_http_errors_show_the_providers_message(server, status, message, retryable):
    sink = ListSink()
    with pytest.raises(StreamError) as info:
        stream.run(request_for(f"{server.url}/error/{status}"), sink)
    assert (info.value.message, info.value.status, info.value.retryable) == (
        message, status, retryable)
    assert sink.events == []


@pytest.mark.parametrize("body,expected", [
    ("html", "Bad Gateway: the server answered with an HTML page"),
    ("empty", "Bad Gateway (the response had no body)"),
    ("text", "Bad Gateway: upstream connect error"),
])
def test_http_errors_without_json(server, body, expected):
    with pytest.raises(StreamError) as info:
        stream.run(request_for(f"{server.url}/error/502?body={body}"), ListSink())
    assert info.value.message == expected and info.value.status == 502


def test_connection_refused():
    with pytest.raises(StreamError) as info:
        stream.run(request_for("http://127.0.0.1:9/v1/chat/completions"), ListSink())
    assert info.value.message == "cannot connect to 127.0.0.1:9: Connection refused"
    assert not info.value.retryable                # nothing listens there: see test_connect_errors


def test_idle_read_timeout(server):
    body = b'data: {"choices":[{"index":0,"delta":{"content":"slow"}}]}\n\n'
    url = server.add("/slow", Reply([body, b"data: [DONE]\n\n"], delay=3))
    req = request_for(url)
    req.read_timeout = 0.5
    sink = ListSink()
    with pytest.raises(StreamError) as info:
        stream.run(req, sink)
    assert sink.text() == "slow"
    assert "no data from the server for 0.5 s" in info.value.message


def test_request_body_and_headers(server):
    data = (STREAMS / "openai-chat/logprobs.sse").read_bytes()
    url = server.add("/v1/chat/completions", Reply([data]))
    req = request_for(url)
    req.headers = {"Authorization": "Bearer k"}
    req.body["messages"] = [{"role": "user", "content": "héllo"}]
    stream.run(req, ListSink())
    sent = server.requests[-1]
    assert sent["body"] == req.body
    assert sent["headers"]["Authorization"] == "Bearer k"
    assert sent["headers"]["Accept-Encoding"] == "identity"
    assert json.loads(json.dumps(sent["body"]))["messages"][0]["content"] == "héllo"
