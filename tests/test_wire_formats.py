"""Wire formats that real servers send, beyond a well-formed stream.

Everything goes over real HTTP on 127.0.0.1 (the replay server, or small
``http.server`` handlers), through chatpipe's real transport:

- non-streaming answers (a request.json without ``"stream": true``): one
  JSON document per dialect, in the provider's documented shape;
- a 200 that carries a provider error as JSON, or an HTML page;
- a terminator with nothing before it (llama-cpp-python's interrupted
  request);
- the retry budget bounding the whole request, failed attempts included;
- ``max_event_bytes``: an event or line that never ends is cut off in
  linear time and bounded memory;
- the local llama.cpp server launcher and ``make demo`` (the real server
  tests are marked ``llama``).
"""

from __future__ import annotations

import json

import pytest

from chatpipe.dialects import base
from chatpipe.errors import StreamError
from chatpipe.templates import Request
from conftest import run_stream_in_process as run, ListSink
from replay_server import Reply, split_every


def request(url, api="openai-chat", **kw) -> Request:
    kw.setdefault("max_retries", 3)
    kw.setdefault("read_timeout", 10)
    return Request(url=url, headers={}, body={"model": "m"}, api=api, connect_timeout=5, **kw)


def document(payload, framing="length", split=0) -> Reply:
    """A 200 ``application/json`` reply with PAYLOAD, in FRAMING, written
    SPLIT bytes at a time (0: at once)."""
    data = json.dumps(payload).encode()
    return Reply(split_every(data, split) if split else [data], framing=framing,
                 content_type="application/json; charset=utf-8")


def kinds(sink: ListSink) -> list[str]:
    return [e["type"] for e in sink.events]


# ---- 1. non-streaming answers: one JSON document per dialect ---------------------------

# https://platform.openai.com/docs/api-reference/chat/object
OPENAI_CHAT = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "object": "chat.completion",
    "created": 1741570283, "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "The image shows a wooden boardwalk.",
        "refusal": None, "annotations": []}, "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163,
              "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}},
    "service_tier": "default", "system_fingerprint": "fp_fc9f1d7035"}

# DeepSeek's reasoner: https://api-docs.deepseek.com/guides/reasoning_model
DEEPSEEK = {
    "id": "930c60df", "object": "chat.completion", "model": "deepseek-reasoner",
    "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "9.11 is smaller.",
        "reasoning_content": "Compare 9.11 and 9.8: 0.11 < 0.8."},
        "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 13, "completion_tokens": 40, "total_tokens": 53,
              "completion_tokens_details": {"reasoning_tokens": 30}}}

OPENAI_TOOLS = {
    "id": "chatcmpl-abc123", "object": "chat.completion", "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc123", "type": "function",
             "function": {"name": "get_current_weather",
                          "arguments": "{\n\"location\": \"Boston, MA\"\n}"}},
            {"id": "call_def456", "type": "function",
             "function": {"name": "get_time", "arguments": "{}"}}]},
        "logprobs": None, "finish_reason": "tool_calls"}],
    "usage": {"prompt_tokens": 82, "completion_tokens": 17, "total_tokens": 99}}

OPENAI_REFUSAL = {
    "id": "chatcmpl-r", "object": "chat.completion", "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": None,
                                         "refusal": "I'm sorry, I can't help with that."},
                 "finish_reason": "stop"}]}

# OpenRouter: reasoning in message.reasoning.
OPENROUTER = {
    "id": "gen-1", "object": "chat.completion", "model": "openai/gpt-oss-20b",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!",
                                         "reasoning": "The user greets me."},
                 "finish_reason": "stop", "native_finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}}

# https://docs.anthropic.com/en/api/messages (response), with extended thinking.
ANTHROPIC = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF", "type": "message", "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "thinking", "thinking": "The user wants the weather; use the tool.",
         "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"},
        {"type": "text", "text": "I'll check the weather "},
        {"type": "text", "text": "in Paris."},
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
         "input": {"location": "Paris, France", "unit": "celsius"}}],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 2095, "output_tokens": 503,
              "cache_creation_input_tokens": 0, "cache_read_input_tokens": 100}}

# https://ai.google.dev/api/generate-content#v1beta.GenerateContentResponse
GEMINI = {
    "candidates": [{"content": {"parts": [
        {"text": "**Thinking** about the weather.", "thought": True},
        {"text": "It is sunny "}, {"text": "in Paris."},
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}],
        "role": "model"}, "finishReason": "STOP", "index": 0}],
    "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 12,
                      "totalTokenCount": 40, "thoughtsTokenCount": 18},
    "modelVersion": "gemini-2.5-flash", "responseId": "abc"}

# https://platform.openai.com/docs/api-reference/responses/object
RESPONSES = {
    "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41", "object": "response",
    "created_at": 1741476777, "status": "completed", "error": None,
    "incomplete_details": None, "model": "o3-2025-04-16",
    "output": [
        {"type": "reasoning", "id": "rs_1", "summary": [
            {"type": "summary_text", "text": "**Planning** the answer."}]},
        {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "Paris is sunny.", "annotations": []}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
         "arguments": "{\"city\":\"Paris\"}", "status": "completed"}],
    "usage": {"input_tokens": 328, "input_tokens_details": {"cached_tokens": 0},
              "output_tokens": 52, "output_tokens_details": {"reasoning_tokens": 30},
              "total_tokens": 380}}

# https://github.com/ollama/ollama/blob/main/docs/api.md (chat request, no streaming)
OLLAMA = {
    "model": "llama3.2", "created_at": "2023-12-12T14:13:43.416799Z",
    "message": {"role": "assistant", "content": "Hello! How are you today?",
                "thinking": "A greeting."},
    "done": True, "done_reason": "stop", "total_duration": 5191566416,
    "load_duration": 2154458, "prompt_eval_count": 26, "prompt_eval_duration": 383809000,
    "eval_count": 298, "eval_duration": 4799921000}


@pytest.mark.parametrize("framing_", ["length", "chunked", "close", "gzip"])
def test_openai_chat_document(server, framing_):
    url = server.add("/v1/chat/completions", document(OPENAI_CHAT, framing_, split=7))
    sink, err, _ = run(request(url))
    assert err is None, err
    assert sink.events[1:] == [
        {"type": "delta", "content": "The image shows a wooden boardwalk."},
        {"type": "usage", "input_tokens": 1117, "output_tokens": 46, "total_tokens": 1163,
         "reasoning_tokens": 0, "cached_tokens": 0},
        {"type": "done", "finish_reason": "stop"}]
    assert kinds(sink)[0] == "start" and len(server.requests) == 1


@pytest.mark.parametrize("doc,expected", [
    (DEEPSEEK, [{"type": "reasoning", "content": "Compare 9.11 and 9.8: 0.11 < 0.8."},
                {"type": "delta", "content": "9.11 is smaller."},
                {"type": "usage", "input_tokens": 13, "output_tokens": 40, "total_tokens": 53,
                 "reasoning_tokens": 30},
                {"type": "done", "finish_reason": "stop"}]),
    (OPENROUTER, [{"type": "reasoning", "content": "The user greets me."},
                  {"type": "delta", "content": "Hi!"},
                  {"type": "usage", "input_tokens": 5, "output_tokens": 9, "total_tokens": 14},
                  {"type": "done", "finish_reason": "stop"}]),
    (OPENAI_TOOLS, [{"type": "tool_call", "index": 0, "call_id": "call_abc123",
                     "name": "get_current_weather",
                     "arguments": "{\n\"location\": \"Boston, MA\"\n}"},
                    {"type": "tool_call", "index": 1, "call_id": "call_def456",
                     "name": "get_time", "arguments": "{}"},
                    {"type": "usage", "input_tokens": 82, "output_tokens": 17,
                     "total_tokens": 99},
                    {"type": "done", "finish_reason": "tool_calls"}]),
    (OPENAI_REFUSAL, [{"type": "refusal", "content": "I'm sorry, I can't help with that."},
                      {"type": "done", "finish_reason": "stop"}]),
], ids=["deepseek-reasoning", "openrouter-reasoning", "tool-calls", "refusal"])
def test_openai_chat_document_shapes(server, doc, expected):
    url = server.add("/v1/chat/completions", document(doc))
    sink, err, _ = run(request(url))
    assert err is None, err
    assert sink.events[1:] == expected


def test_anthropic_document(server):
    url = server.add("/v1/messages", document(ANTHROPIC, "chunked", split=50))
    sink, err, _ = run(request(url, api="anthropic-messages"))
    assert err is None, err
    assert sink.events[1:] == [
        {"type": "reasoning", "content": "The user wants the weather; use the tool."},
        {"type": "delta", "content": "I'll check the weather in Paris."},
        {"type": "tool_call", "index": 0, "call_id": "toolu_01A09q90qw90lq917835lq9",
         "name": "get_weather",
         "arguments": '{"location": "Paris, France", "unit": "celsius"}'},
        {"type": "usage", "input_tokens": 2195, "output_tokens": 503, "total_tokens": 2698,
         "cached_tokens": 100},
        {"type": "done", "finish_reason": "tool_calls", "raw_finish_reason": "tool_use"}]


def test_gemini_generate_content_document(server):
    url = server.add("/v1beta/models/g:generateContent", document(GEMINI))
    sink, err, _ = run(request(url, api="gemini"))
    assert err is None, err
    assert sink.events[1:] == [
        {"type": "reasoning", "content": "**Thinking** about the weather."},
        {"type": "delta", "content": "It is sunny in Paris."},
        {"type": "tool_call", "index": 0, "name": "get_weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "usage", "input_tokens": 10, "output_tokens": 30, "total_tokens": 40,
         "reasoning_tokens": 18},
        {"type": "done", "finish_reason": "tool_calls", "raw_finish_reason": "STOP"}]


def test_gemini_document_without_finish_reason(server):
    doc = {"candidates": [{"content": {"parts": [{"text": "Hi"}]}}]}
    url = server.add("/g", document(doc))
    sink, err, _ = run(request(url, api="gemini"))
    assert err.message == "the server's JSON answer has no candidate with a finishReason"
    assert not err.retryable and len(server.requests) == 1


def test_responses_document(server):
    url = server.add("/v1/responses", document(RESPONSES, "close", split=64))
    sink, err, _ = run(request(url, api="openai-responses"))
    assert err is None, err
    assert sink.events[1:] == [
        {"type": "reasoning", "content": "**Planning** the answer."},
        {"type": "delta", "content": "Paris is sunny."},
        {"type": "tool_call", "index": 0, "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city":"Paris"}'},
        {"type": "usage", "input_tokens": 328, "output_tokens": 52, "total_tokens": 380,
         "reasoning_tokens": 30, "cached_tokens": 0},
        {"type": "done", "finish_reason": "tool_calls", "raw_finish_reason": "completed"}]


def test_responses_document_incomplete_and_refusal(server):
    doc = {**RESPONSES, "status": "incomplete",
           "incomplete_details": {"reason": "max_output_tokens"},
           "output": [{"type": "message", "role": "assistant", "content": [
               {"type": "output_text", "text": "Part"}, {"type": "output_text", "text": "ial"},
               {"type": "refusal", "refusal": "No."}]}]}
    del doc["usage"]
    url = server.add("/v1/responses", document(doc))
    sink, err, _ = run(request(url, api="openai-responses"))
    assert err is None, err
    assert sink.events[1:] == [
        {"type": "delta", "content": "Partial"}, {"type": "refusal", "content": "No."},
        {"type": "done", "finish_reason": "length", "raw_finish_reason": "max_output_tokens"}]


def test_responses_document_failed(server):
    doc = {**RESPONSES, "status": "failed", "output": [],
           "error": {"code": "server_error", "message": "The model failed."}}
    url = server.add("/v1/responses", [document(doc), document(RESPONSES)])
    sink, err, _ = run(request(url, api="openai-responses", retry_budget=30))
    assert err is None  # server_error is retryable: the second answer is the one
    assert [(e["attempt"], e["reason"]) for e in sink.of("retry")] == [(1, "The model failed.")]
    assert sink.text() == "Paris is sunny." and len(server.requests) == 2


def test_responses_document_not_finished(server):
    url = server.add("/v1/responses", document({**RESPONSES, "status": "queued", "output": []}))
    _, err, _ = run(request(url, api="openai-responses"))
    assert err.message == "the response is not finished: its status is queued"
    assert not err.retryable


@pytest.mark.parametrize("ctype", ["application/json", "application/x-ndjson"])
def test_ollama_document(server, ctype):
    reply = document(OLLAMA)
    reply.content_type = ctype
    url = server.add("/api/chat", reply)
    sink, err, _ = run(request(url, api="ollama"))
    assert err is None, err
    assert sink.events[1:] == [
        {"type": "reasoning", "content": "A greeting."},
        {"type": "delta", "content": "Hello! How are you today?"},
        {"type": "usage", "input_tokens": 26, "output_tokens": 298, "total_tokens": 324},
        {"type": "done", "finish_reason": "stop"}]


def test_ollama_parse_document_directly():
    from chatpipe.dialects import ollama

    events = ollama.Parser().parse_document(OLLAMA)
    assert [e["type"] for e in events] == ["reasoning", "delta", "usage", "done"]
    with pytest.raises(StreamError, match="not done"):
        ollama.Parser().parse_document({**OLLAMA, "done": False})


def test_base_parser_refuses_a_document():
    with pytest.raises(StreamError) as info:
        base.Parser().parse_document({})
    assert info.value.message == ("the endpoint answered with one JSON document, not a stream "
                                  'of server-sent events: set "stream": true in the template')


@pytest.mark.parametrize("framing_", ["length", "chunked"])
def test_document_larger_than_max_event_bytes(server, framing_):
    url = server.add("/v1/chat/completions", document(OPENAI_CHAT, framing_, split=100))
    _, err, _ = run(request(url, max_event_bytes=500))
    assert err.message.startswith("the server sent a JSON document larger than 500 bytes "
                                  "(chatpipe.max_event_bytes)")
    assert not err.retryable and len(server.requests) == 1


@pytest.mark.parametrize("cut", [1, 40, 200])
def test_document_cut_off_is_retried(server, cut):
    data = json.dumps(OPENAI_CHAT).encode()
    cut_reply = Reply([data[:cut]], framing="close", content_type="application/json")
    url = server.add("/v1/chat/completions", [cut_reply, document(OPENAI_CHAT)])
    sink, err, _ = run(request(url, retry_budget=30))
    assert err is None, err
    assert "JSON answer ended early" in sink.of("retry")[0]["reason"]
    assert sink.text() == "The image shows a wooden boardwalk."


def test_document_not_json(server):
    reply = Reply([b"Internal error, sorry"], framing="length", content_type="application/json")
    url = server.add("/v1/chat/completions", reply)
    _, err, _ = run(request(url))
    assert err.message == "the server's answer is not valid JSON: Internal error, sorry"
    assert not err.retryable and len(server.requests) == 1


def test_document_without_content_or_finish_reason(server):
    doc = {"id": "x", "object": "chat.completion", "choices": []}
    url = server.add("/v1/chat/completions", document(doc))
    _, err, _ = run(request(url))
    assert err.message == "the server ended the answer without content or a finish reason"


# ---- 2. a 200 that is not an answer -------------------------------------------------------

def test_200_json_error_shows_the_providers_message(server):
    payload = {"error": {"message": "Invalid 'messages': empty array.",
                         "type": "invalid_request_error", "param": "messages", "code": None}}
    url = server.add("/v1/chat/completions", document(payload))
    sink, err, _ = run(request(url))
    assert (err.message, err.status, err.retryable) == (
        "Invalid 'messages': empty array.", None, False)
    assert sink.of("retry") == [] and len(server.requests) == 1


@pytest.mark.parametrize("api,payload", [
    ("ollama", {"error": "model \"llama9\" not found, try pulling it first"}),
    ("gemini", [{"error": {"code": 400, "message": "model \"llama9\" not found, try pulling "
                                                   "it first", "status": "INVALID_ARGUMENT"}}]),
])
def test_200_json_error_by_dialect(server, api, payload):
    url = server.add("/x", document(payload))
    _, err, _ = run(request(url, api=api))
    assert err.message == "model \"llama9\" not found, try pulling it first"
    assert not err.retryable and len(server.requests) == 1


def test_200_json_error_retried_when_its_type_says_so(server):
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    url = server.add("/v1/messages", [document(overloaded), document(ANTHROPIC)])
    sink, err, _ = run(request(url, api="anthropic-messages", retry_budget=30))
    assert err is None
    assert [(e["attempt"], e["reason"]) for e in sink.of("retry")] == [(1, "Overloaded")]
    assert len(server.requests) == 2 and sink.text() == "I'll check the weather in Paris."


@pytest.mark.parametrize("ctype", ["text/html", "text/html; charset=utf-8",
                                   "application/xhtml+xml"])
@pytest.mark.parametrize("api", ["openai-chat", "ollama"])
def test_200_html_page_is_a_clear_error(server, ctype, api):
    page = (b"<!DOCTYPE html><html><head><title>Hotel WiFi</title></head>"
            b"<body><form>Accept the terms</form></body></html>")
    url = server.add("/v1/chat/completions", Reply([page], content_type=ctype))
    sink, err, _ = run(request(url, api=api))
    assert err.message == ("the server answered with an HTML page, not a stream: "
                           "a proxy or captive portal may be in the way")
    assert not err.retryable and err.status is None
    assert sink.events == [] and len(server.requests) == 1


# ---- 3. a terminator with nothing before it ----------------------------------------------

EMPTY = "the server ended the answer without content or a finish reason"


@pytest.mark.parametrize("api,body,ctype", [
    # llama-cpp-python, an older request interrupted by a newer one.
    ("openai-chat", b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk",'
                    b'"created":1,"model":"gemma3","choices":[{"index":0,"delta":'
                    b'{"role":"assistant"},"logprobs":null,"finish_reason":null}]}\r\n\r\n'
                    b"data: [DONE]\r\n\r\n", "text/event-stream"),
    ("openai-chat", b"data: [DONE]\n\n", "text/event-stream"),
    ("anthropic-messages", b'event: message_start\ndata: {"type":"message_start","message":'
                           b'{"id":"msg_1","usage":{"input_tokens":5}}}\n\n'
                           b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
     "text/event-stream"),
    ("openai-responses", b'event: response.created\ndata: {"type":"response.created",'
                         b'"response":{"id":"resp_1"}}\n\n'
                         b'event: response.completed\ndata: {"type":"response.completed"}\n\n',
     "text/event-stream"),
    ("ollama", b'{"model":"m","created_at":"x","message":{"role":"assistant","content":""},'
               b'"done":true}\n', "application/x-ndjson"),
], ids=["llama-cpp-interrupted", "bare-done", "anthropic", "responses", "ollama"])
def test_terminator_with_nothing_before_it(server, api, body, ctype):
    url = server.add("/s", Reply([body], content_type=ctype))
    sink, err, _ = run(request(url, api=api))
    assert err is not None and err.message == EMPTY and not err.retryable
    assert sink.of("done") == [] and len(server.requests) == 1


@pytest.mark.parametrize("api,body,ctype,finish", [
    ("openai-chat", b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
                    b"data: [DONE]\n\n", "text/event-stream", "stop"),
    ("openai-chat", b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
                    b"data: [DONE]\n\n", "text/event-stream", None),
    ("anthropic-messages", b'event: message_delta\ndata: {"type":"message_delta","delta":'
                           b'{"stop_reason":"end_turn"},"usage":{"output_tokens":1}}\n\n'
                           b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
     "text/event-stream", "stop"),
    ("ollama", b'{"model":"m","message":{"role":"assistant","content":""},'
               b'"done":true,"done_reason":"load"}\n', "application/x-ndjson", "stop"),
], ids=["empty-with-finish", "content-without-finish", "anthropic-empty-end-turn",
        "ollama-load"])
def test_an_empty_answer_with_a_finish_reason_is_complete(server, api, body, ctype, finish):
    url = server.add("/s", Reply([body], content_type=ctype))
    sink, err, _ = run(request(url, api=api))
    assert err is None and sink.events[-1]["finish_reason"] == finish
