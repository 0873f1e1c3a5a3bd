"""Every recorded provider stream, through every API dialect, over real HTTP.

Each recording in tests/streams/ (sources and licences in its README.md) is
served by a real HTTP server on 127.0.0.1 and decoded by chatpipe's real
transport and dialect; the protocol events must give exactly what
tests/streams/expected.json lists: text, reasoning length, tool calls,
finish reason and usage.  A property-based test (hypothesis) then splits
each recording at random byte positions, with random line endings, and
asserts the protocol output is identical to the unsplit run.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from chatpipe import stream
from chatpipe.errors import StreamError
from chatpipe.templates import Request
from conftest import ListSink, EXPECTED, STREAMS
from replay_server import Reply, ReplayServer

DIALECT = {"anthropic": "anthropic-messages", "gemini": "gemini", "ollama": "ollama",
           "openai-responses": "openai-responses"}

#: Recordings that end with an error, not a done event: their expected error.
FAILING = {
    "openai-responses/rate-limited-error.sse": "Request too large for gpt-4o",
}

RECORDINGS = sorted(EXPECTED)


def dialect_of(name: str) -> str:
    return DIALECT.get(name.split("/")[0], "openai-chat")


def content_type(name: str) -> str:
    return {".ndjson": "application/x-ndjson", ".json": "application/json"}.get(
        name[name.rfind("."):], "text/event-stream")


def run(server: ReplayServer, name: str, chunks: list[bytes]) -> tuple[list[dict], str | None]:
    """Serve CHUNKS as recording NAME; return (events, error message or None)."""
    url = server.add("/stream", Reply(chunks, content_type=content_type(name)))
    request = Request(url=url, headers={}, body={"model": "m", "stream": True},
                      api=dialect_of(name), connect_timeout=5, read_timeout=10, max_retries=0)
    sink = ListSink()
    try:
        stream.run(request, sink)
    except StreamError as err:
        return sink.events, err.message
    return sink.events, None


def summary(events: list[dict]) -> dict:
    """What expected.json describes, computed from protocol events."""
    calls: dict[int, dict] = {}
    for e in events:
        if e["type"] == "tool_call":
            call = calls.setdefault(e["index"], {"name": None, "arguments": ""})
            call["name"] = call["name"] or e.get("name")
            call["arguments"] += e["arguments"]
    done = [e for e in events if e["type"] == "done"]
    return {
        "text": "".join(e["content"] for e in events if e["type"] == "delta"),
        "reasoning_chars": len("".join(e["content"] for e in events
                                       if e["type"] == "reasoning")),
        "refusal": "".join(e["content"] for e in events if e["type"] == "refusal"),
        "tool_calls": [calls[i] for i in sorted(calls)],
        "done": done[0] if done else None,
        "usage": [e for e in events if e["type"] == "usage"],
    }


def same_arguments(got: str, expected: str) -> bool:
    """Equal, or equal as JSON (Ollama and Gemini send objects, re-serialised)."""
    if got == expected:
        return True
    try:
        return json.loads(got) == json.loads(expected)
    except ValueError:
        return False


def expected_usage(name: str, raw: dict | None) -> dict | None:
    """The normalised (input, output, total) tokens for a raw usage object."""
    if raw is None:
        return None
    provider = name.split("/")[0]
    if provider == "anthropic":
        return {"output_tokens": raw["output_tokens"]}
    if provider == "gemini":
        output = raw.get("candidatesTokenCount", 0) + raw.get("thoughtsTokenCount", 0)
        return {"input_tokens": raw["promptTokenCount"], "output_tokens": output,
                "total_tokens": raw["totalTokenCount"]}
    if provider == "ollama":
        return {"input_tokens": raw["prompt_eval_count"], "output_tokens": raw["eval_count"],
                "total_tokens": raw["prompt_eval_count"] + raw["eval_count"]}
    if provider == "openai-responses":
        return {k: raw[k] for k in ("input_tokens", "output_tokens", "total_tokens")}
    return {"input_tokens": raw["prompt_tokens"], "output_tokens": raw["completion_tokens"],
            "total_tokens": raw["total_tokens"]}


@pytest.fixture(scope="module")
def shared_server():
    with ReplayServer() as srv:
        yield srv


@pytest.mark.parametrize("name", RECORDINGS)
def test_recording_gives_expected_values(shared_server, name):
    expected = EXPECTED[name]
    events, error = run(shared_server, name, [(STREAMS / name).read_bytes()])
    got = summary(events)
    if name in FAILING:
        assert error is not None and FAILING[name] in error
        assert got["done"] is None
        return
    assert error is None, error
    assert got["text"] == expected["text"]
    assert got["reasoning_chars"] == expected["reasoning_chars"]
    assert got["refusal"] == expected.get("refusal", "")
    assert len(got["tool_calls"]) == len(expected["tool_calls"])
    for call, want in zip(got["tool_calls"], expected["tool_calls"]):
        assert call["name"] == want["name"]
        assert same_arguments(call["arguments"], want["arguments"]), (call, want)
    done = got["done"]
    assert done is not None and events[-1] is done
    assert done.get("raw_finish_reason", done["finish_reason"]) == expected["finish_reason"]
    assert done["finish_reason"] in ("stop", "length", "tool_calls", "content_filter")
    want_usage = expected_usage(name, expected["usage"])
    if want_usage is None:
        assert got["usage"] == []
    else:
        [usage] = got["usage"]
        assert {k: usage[k] for k in want_usage} == want_usage
        assert events[-2] is usage


@pytest.mark.parametrize("name,finish", [
    ("anthropic/basic.sse", "stop"),
    ("anthropic/tool-use.sse", "tool_calls"),
    ("anthropic/refusal.sse", "content_filter"),
    ("anthropic/incomplete-partial-json-max-tokens.sse", "length"),
    ("gemini/basic-text-no-blank-lines.sse", "stop"),
    ("gemini/thinking-function-call-crlf.sse", "tool_calls"),
    ("ollama/tool-calls.ndjson", "tool_calls"),
    ("openai-responses/function-calls.sse", "tool_calls"),
    ("openai-responses/basic-text.sse", "stop"),
    ("openai-chat/finish-length.sse", "length"),
])
def test_finish_reason_is_normalised(shared_server, name, finish):
    events, error = run(shared_server, name, [(STREAMS / name).read_bytes()])
    assert error is None
    assert events[-1]["finish_reason"] == finish


def test_anthropic_usage_adds_input_from_message_start(shared_server):
    events, _ = run(shared_server, "anthropic/tool-use.sse",
                    [(STREAMS / "anthropic/tool-use.sse").read_bytes()])
    [usage] = [e for e in events if e["type"] == "usage"]
    start = json.loads(re.search(rb"event: message_start\ndata: (.*)\n",
                                 (STREAMS / "anthropic/tool-use.sse").read_bytes()).group(1))
    raw = start["message"]["usage"]
    inputs = raw["input_tokens"] + raw.get("cache_read_input_tokens", 0) + raw.get(
        "cache_creation_input_tokens", 0)
    assert usage["input_tokens"] == inputs
    assert usage["total_tokens"] == inputs + usage["output_tokens"]


def test_gemini_array_without_alt_sse_decodes_when_framed_as_events(shared_server):
    """The array recording's elements, sent as server-sent events, give the
    expected values: only the framing (no ``alt=sse``) is refused."""
    name = "gemini/thinking-stream-array.json"
    elements = json.loads((STREAMS / name).read_bytes())
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in elements)
    events, error = run(shared_server, "gemini/x.sse", [body])
    assert error is None
    got, expected = summary(events), EXPECTED[name]
    assert got["text"] == expected["text"]
    assert got["reasoning_chars"] == expected["reasoning_chars"]
    assert got["done"]["raw_finish_reason"] == expected["finish_reason"]


# ---- any split, any line endings: the same protocol output ---------------------------

@st.composite
def reframed(draw, data: bytes):
    """DATA with each LF randomly kept, made CRLF or (in SSE) CR; cut at random places."""
    is_ndjson = data.lstrip()[:1] in (b"{", b"[")
    if b"\r\n" in data:
        data = data.replace(b"\r\n", b"\n")
    endings = [b"\n", b"\r\n"] if is_ndjson else [b"\n", b"\r\n", b"\r"]
    lines = data.split(b"\n")
    choice = draw(st.lists(st.sampled_from(endings), min_size=len(lines) - 1,
                           max_size=len(lines) - 1))
    out = bytearray(lines[0])
    for ending, line in zip(choice, lines[1:]):
        if out.endswith(b"\r") and ending == b"\n":
            ending = b"\r\n"  # CR then LF would read as one CRLF
        out += ending + line
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(out) - 1)), max_size=40))))
    pieces, last = [], 0
    for cut in cuts:
        pieces.append(bytes(out[last:cut]))
        last = cut
    pieces.append(bytes(out[last:]))
    return [p for p in pieces if p]


def _strip_volatile(events):
    return [{k: v for k, v in e.items() if k != "id"} for e in events]


@pytest.mark.parametrize("name", RECORDINGS)
def test_any_split_gives_identical_output(shared_server, name):
    data = (STREAMS / name).read_bytes()
    reference, error = run(shared_server, name, [data])
    assert (error is None) == (name not in FAILING)

    @settings(max_examples=25, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(reframed(data))
    def check(chunks):
        events, err = run(shared_server, name, chunks)
        assert err == error
        assert _strip_volatile(events) == _strip_volatile(reference)

    check()
