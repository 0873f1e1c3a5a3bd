"""Rules of the APIs that their dialects own (issue 18).

- Anthropic's extended thinking with tools: an answer that calls tools
  goes back with its thinking blocks (their signatures too) before its
  ``tool_use`` blocks, in the tool loop's next request and in ``--save``d
  chats (https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking#preserving-thinking-blocks).
  The recording ``anthropic/thinking-tool-use.sse`` joins two real ones
  (tests/streams/README.md) and is replayed by a real server on 127.0.0.1.
- Tool turns in a request that offers no tools: where a dialect says its
  API refuses them (``tool_turns_need_tools``), they go as text.
"""

from __future__ import annotations

import json

import pytest

from chatpipe import dialects, tools
from chatpipe.dialects import base
from chatpipe.templates import Request
from conftest import EXPECTED, STREAMS, ListSink, ndjson, run_stream_in_process
from replay_server import Reply, split_every
from test_tool_formats import KEY, TOOL, TURNS

RECORDING = "anthropic/thinking-tool-use.sse"
FINAL = "anthropic/basic.sse"


def recorded_thinking(name: str) -> dict:
    """The thinking block of the recording NAME, read from its events
    alone: ``{"text", "signature"}``."""
    text, signature = [], []
    for line in (STREAMS / name).read_text().splitlines():
        if line.startswith("data: "):
            delta = json.loads(line[6:]).get("delta") or {}
            text.append(delta.get("thinking", ""))
            signature.append(delta.get("signature", ""))
    return {"text": "".join(text), "signature": "".join(signature)}


def sse(name: str) -> Reply:
    return Reply([(STREAMS / name).read_bytes()])


def anthropic_chat(tmp_path, url):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps({"chatpipe": {"api": "anthropic-messages", "url": url,
                                             "max_retries": 0},
                                "model": "m", "stream": True, "max_tokens": 2000,
                                "thinking": {"type": "enabled", "budget_tokens": 1024},
                                "messages": []}, indent=2))
    return path


def test_thinking_goes_back_before_the_tool_use_and_is_saved(server, chatpipe, mcp_env, tmp_path):
    thinking = recorded_thinking(RECORDING)
    assert len(thinking["text"]) == EXPECTED["anthropic/extended-thinking.sse"]["reasoning_chars"]
    assert thinking["signature"].startswith("ErUBCkYIARgC")
    url = server.add("/v1/messages", [sse(RECORDING), sse(FINAL)])
    path = anthropic_chat(tmp_path, url)
    proc = chatpipe("send", str(path), "--save", "--tools", "mcp:fx", "--yes",
                    "--output", "ndjson", "-m", "Weather in Paris?")
    assert proc.returncode == 0, proc.stderr
    events = ndjson(proc.stdout)
    assert events[-1]["type"] == "done" and events[-1]["steps"] == 2
    assert thinking["signature"] not in proc.stdout   # for the API, not the front end
    assert "".join(e["content"] for e in events if e["type"] == "reasoning") == thinking["text"]

    second = server.requests[1]["body"]["messages"]
    assert second[0] == {"role": "user", "content": "Weather in Paris?"}
    assert second[1] == {"role": "assistant", "content": [
        {"type": "thinking", "thinking": thinking["text"], "signature": thinking["signature"]},
        {"type": "text", "text": "I'll check the current weather in Paris for you."},
        {"type": "tool_use", "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn", "name": "get_weather",
         "input": {"location": "Paris"}}]}
    assert [(b["type"], b["tool_use_id"]) for b in second[2]["content"]] == [
        ("tool_result", "toolu_01NRLabsLyVHZPKxbKvkfSMn")]   # fx has no get_weather: an error
    saved = json.loads(path.read_text())["messages"]
    assert saved == second + [{"role": "assistant", "content": EXPECTED[FINAL]["text"]}]

    # The saved chat continues, without tools: its thinking goes back as it was saved.
    server.add("/v1/messages", sse(FINAL))
    proc = chatpipe("send", str(path), "-m", "Thanks")
    assert proc.returncode == 0, proc.stderr
    assert server.requests[2]["body"]["messages"] == saved + [{"role": "user", "content": "Thanks"}]


#: A Message with a thinking, a redacted thinking and a tool call
#: (https://docs.anthropic.com/en/api/messages#response).
MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
           "content": [{"type": "thinking", "thinking": "Use the tool.", "signature": "c2ln"},
                       {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
                       {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}}],
           "stop_reason": "tool_use", "usage": {"input_tokens": 9, "output_tokens": 20}}


def test_a_whole_message_gives_its_thinking_and_redacted_thinking_in_order(server):
    url = server.add("/v1/messages", Reply([json.dumps(MESSAGE).encode()], framing="length",
                                           content_type="application/json"))
    sink, err, _ = run_stream_in_process(Request(url=url, headers={}, body={"model": "m"},
                                                 api="anthropic-messages", connect_timeout=5))
    assert err is None, err
    done = sink.events[-1]
    assert done == {"type": "done", "finish_reason": "tool_calls", "raw_finish_reason": "tool_use"}
    assert done.thinking == [{"text": "Use the tool.", "signature": "c2ln"},
                             {"data": "EmwKAhgBEgy3va3pzix"}]
    items = dialects.get("anthropic-messages").add_thinking(
        [{"role": "assistant", "content": [{"type": "text", "text": "t"}]}], done.thinking)
    assert items[0]["content"][:2] == [
        {"type": "thinking", "thinking": "Use the tool.", "signature": "c2ln"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}]


def anthropic_events(*payloads: dict) -> bytes:
    """Server-sent events of the Messages stream, one per PAYLOAD (named
    by its ``type``: https://docs.anthropic.com/en/api/messages-streaming)."""
    return b"".join(f"event: {p['type']}\ndata: {json.dumps(p)}\n\n".encode() for p in payloads)


def test_a_stream_gives_its_redacted_and_signed_thinking_in_order(server):
    url = server.add("/v1/messages", Reply(split_every(anthropic_events(
        {"type": "message_start", "message": {"id": "msg_2", "usage": {"input_tokens": 5}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "thinking_delta", "thinking": "Call "}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "thinking_delta", "thinking": "f."}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "signature_delta", "signature": "c2ln"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2,
         "content_block": {"type": "tool_use", "id": "toolu_2", "name": "f", "input": {}}},
        {"type": "content_block_delta", "index": 2,
         "delta": {"type": "input_json_delta", "partial_json": "{}"}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
         "usage": {"output_tokens": 9}},
        {"type": "message_stop"}), 7)))
    sink, err, _ = run_stream_in_process(Request(url=url, headers={}, body={"model": "m"},
                                                 api="anthropic-messages", connect_timeout=5))
    assert err is None, err
    assert [e["content"] for e in sink.of("reasoning")] == ["Call ", "f."]
    assert sink.events[-1].thinking == [{"data": "EmwKAhgBEgy3va3pzix"},
                                        {"text": "Call f.", "signature": "c2ln"}]


ANSWER_WITH_THINKING = {"role": "assistant", "content": "", "tool_calls": TURNS[1]["tool_calls"],
                        "thinking": [{"text": "plan", "signature": "c2ln", "cache_control": {}},
                                     {"text": "no signature"}, "junk", {"data": 7},
                                     {"data": "REDACTED"}]}


def test_thinking_is_opaque_data_of_anthropic_alone():
    body: dict = {}
    dialects.get("anthropic-messages").add_messages(body, [ANSWER_WITH_THINKING])
    assert body["messages"][0]["content"][:3] == [
        {"type": "thinking", "thinking": "plan", "signature": "c2ln"},
        {"type": "redacted_thinking", "data": "REDACTED"},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]
    for api in ("openai-chat", "openai-responses", "gemini", "ollama"):
        body = {}
        dialects.get(api).add_messages(body, [ANSWER_WITH_THINKING,
                                              {"role": "assistant", "content": "Hi",
                                               "thinking": [{"text": "x", "signature": "y"}]}])
        assert "thinking" not in json.dumps(body) and "c2ln" not in json.dumps(body), api


#: What may not stay in a request that offers no tools, per API.
TOOL_MARKS = ('"tool_calls"', '"role": "tool"', '"tool_use"', '"tool_result"', '"functionCall"',
              '"functionResponse"', '"function_call"', '"function_call_output"')


def without_tools(api: str) -> tuple[base.Dialect, dict]:
    dialect = dialects.get(api)
    dialect.tool_turns_need_tools = True
    body: dict = {}
    dialect.add_messages(body, TURNS)
    return dialect, body


@pytest.mark.parametrize("api", sorted(KEY))
def test_tool_turns_go_as_text_where_the_api_needs_tools_for_them(api):
    dialect, body = without_tools(api)
    dialect.tool_turns_as_text(body)
    text = json.dumps(body, ensure_ascii=False)
    assert not [mark for mark in TOOL_MARKS if mark in text]
    for said in ("Checking both.", "[called tool get_weather with {", "Paris",
                 "[tool get_weather returned: 18 C, sunny]", "get_stock_price", "no such exchange"):
        assert said in text, said
    turns = body[KEY[api]]
    roles = [t.get("role") for t in turns]
    assert roles[0] == "user" and roles[-1] == "user" and "tool" not in roles


def test_the_text_of_openai_chat_alternates_and_names_each_result():
    dialect, body = without_tools("openai-chat")
    dialect.tool_turns_as_text(body)
    assert body["messages"][1:] == [
        {"role": "assistant", "content": 'Checking both.\n[called tool get_weather with '
         '{"city": "Paris"}]\n[called tool get_stock_price with {"ticker": "AAPL"}]'},
        {"role": "user", "content": "[tool get_weather returned: 18 C, sunny]\n"
         "[tool get_stock_price returned: Error: no such exchange]"}]


def test_anthropic_tool_blocks_become_text_blocks_and_errors_say_so():
    dialect, body = without_tools("anthropic-messages")
    dialect.tool_turns_as_text(body)
    assert body["messages"][2] == {"role": "user", "content": [
        {"type": "text", "text": "[tool get_weather returned: 18 C, sunny]"},
        {"type": "text", "text": "[tool get_stock_price failed: no such exchange]"}]}


@pytest.mark.parametrize("api", sorted(KEY))
def test_tool_turns_stay_when_tools_are_offered_or_the_api_takes_them(api):
    dialect, body = without_tools(api)
    dialect.add_tools(body, [TOOL])
    kept = json.loads(json.dumps(body))
    dialect.tool_turns_as_text(body)
    assert body == kept
    dialect, body = without_tools(api)
    dialect.tool_turns_need_tools = False
    kept = json.loads(json.dumps(body))
    dialect.tool_turns_as_text(body)
    assert body == kept


def test_the_tool_loop_sends_them_as_text_when_no_tools_are_offered(server):
    url = server.add("/v1/messages", sse(FINAL))
    dialect, body = without_tools("anthropic-messages")
    request = Request(url=url, headers={}, body={"model": "m", **body},
                      api="anthropic-messages", connect_timeout=5)
    loop = tools.Loop(request, dialect, ListSink())
    loop.run()
    sent = json.dumps(server.requests[-1]["body"])
    assert not [mark for mark in TOOL_MARKS if mark in sent]
    assert "[called tool get_weather with" in sent and loop.completed
