"""The neutral tool shapes, in each API's own format.

Front ends speak one shape (tool definitions, answers with ``tool_calls``,
``role: tool`` results); each dialect converts it.  The exact JSON each API
takes is asserted here, from the providers' references (linked in each
dialect's docstring), and a conversation with tool turns saved with
``--save`` is reopened and continued over real HTTP, for each API.
"""

from __future__ import annotations

import json

import pytest

from chatpipe import dialects
from conftest import EXPECTED

#: A conversation with two tool calls (one result an error), neutral.
TURNS = [
    {"role": "user", "content": "Weather in Paris, and the AAPL price?"},
    {"role": "assistant", "content": "Checking both.", "tool_calls": [
        {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"id": "call_2", "name": "get_stock_price", "arguments": '{"ticker": "AAPL"}'}]},
    {"role": "tool", "tool_call_id": "call_1", "name": "get_weather",
     "content": "18 C, sunny", "is_error": False},
    {"role": "tool", "tool_call_id": "call_2", "name": "get_stock_price",
     "content": "no such exchange", "is_error": True},
]

#: A tool definition, neutral.
TOOL = {"name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}

USER = {"role": "user", "content": "Weather in Paris, and the AAPL price?"}

#: Each API's own shape of TURNS (after the user message) and of TOOL.
EXPECTED_TURNS = {
    "openai-chat": [
        USER,
        {"role": "assistant", "content": "Checking both.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_stock_price", "arguments": '{"ticker": "AAPL"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Error: no such exchange"}],
    "anthropic-messages": [
        USER,
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking both."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_stock_price",
             "input": {"ticker": "AAPL"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18 C, sunny"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "no such exchange",
             "is_error": True}]}],
    "gemini": [
        {"role": "user", "parts": [{"text": "Weather in Paris, and the AAPL price?"}]},
        {"role": "model", "parts": [
            {"text": "Checking both."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}},
            {"functionCall": {"name": "get_stock_price", "args": {"ticker": "AAPL"},
                              "id": "call_2"}}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"output": "18 C, sunny"},
                                  "id": "call_1"}},
            {"functionResponse": {"name": "get_stock_price",
                                  "response": {"error": "no such exchange"}, "id": "call_2"}}]}],
    "openai-responses": [
        USER,
        {"role": "assistant", "content": "Checking both."},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_stock_price",
         "arguments": '{"ticker": "AAPL"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "18 C, sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": "Error: no such exchange"}],
    "ollama": [
        USER,
        {"role": "assistant", "content": "Checking both.", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "get_stock_price", "arguments": {"ticker": "AAPL"}}}]},
        {"role": "tool", "content": "18 C, sunny", "tool_name": "get_weather"},
        {"role": "tool", "content": "Error: no such exchange", "tool_name": "get_stock_price"}],
}

SCHEMA = TOOL["parameters"]
EXPECTED_TOOLS = {
    "openai-chat": {"tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city", "parameters": SCHEMA}}]},
    "ollama": {"tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city", "parameters": SCHEMA}}]},
    "anthropic-messages": {"tools": [{"name": "get_weather", "description": "The weather in a city",
                                      "input_schema": SCHEMA}]},
    "gemini": {"tools": [{"functionDeclarations": [{
        "name": "get_weather", "description": "The weather in a city",
        "parametersJsonSchema": SCHEMA}]}]},
    "openai-responses": {"tools": [{"type": "function", "name": "get_weather",
                                    "description": "The weather in a city", "parameters": SCHEMA,
                                    "strict": False}]},
}

#: Each API's conversation field.
KEY = {"openai-chat": "messages", "anthropic-messages": "messages", "gemini": "contents",
       "openai-responses": "input", "ollama": "messages"}

#: A recording of a plain answer for each API, and its bundled template.
ANSWER = {"openai-chat": "openai-chat/text-with-usage.sse", "anthropic-messages": "anthropic/basic.sse",
          "gemini": "gemini/basic-text-no-blank-lines.sse",
          "openai-responses": "openai-responses/basic-text.sse", "ollama": "ollama/basic-text.ndjson"}

APIS = sorted(EXPECTED_TURNS)


@pytest.mark.parametrize("api", APIS)
def test_tool_turns_in_each_apis_shape(api):
    dialect = dialects.get(api)
    body: dict = {}
    dialect.add_messages(body, json.loads(json.dumps(TURNS)))
    assert body == {KEY[api]: EXPECTED_TURNS[api]}


@pytest.mark.parametrize("api", APIS)
def test_tool_definitions_in_each_apis_shape(api):
    body: dict = {}
    dialects.get(api).add_tools(body, [TOOL])
    assert body == EXPECTED_TOOLS[api]


def test_definitions_join_the_templates_own_tools():
    body = {"tools": [{"type": "web_search"}]}
    dialects.get("openai-responses").add_tools(body, [{"name": "f"}])
    assert body["tools"] == [{"type": "web_search"}, {
        "type": "function", "name": "f", "description": "",
        "parameters": {"type": "object", "properties": {}}, "strict": False}]


def test_gemini_keeps_the_thought_signature_and_drops_made_up_ids():
    body: dict = {}
    dialects.get("gemini").add_messages(body, [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "chatpipe_0", "name": "weather", "arguments": '{"city": "San Francisco"}',
             "signature": "Eq0ECqo"}]},
        {"role": "tool", "tool_call_id": "chatpipe_0", "name": "weather", "content": "14 C",
         "is_error": False}])
    assert body["contents"] == [
        {"role": "model", "parts": [{"functionCall": {"name": "weather",
                                                      "args": {"city": "San Francisco"}},
                                     "thoughtSignature": "Eq0ECqo"}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "weather",
                                                         "response": {"output": "14 C"}}}]}]


def test_anthropic_answer_without_text_has_no_empty_text_block():
    items = dialects.get("anthropic-messages").assistant_message(
        "", [{"id": "toolu_1", "name": "f", "arguments": ""}])
    assert items == [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]}]


def conversation_file(tmp_path, api, url):
    path = tmp_path / "chat.json"
    doc = {"chatpipe": {"api": api, "url": url, "max_retries": 0}, KEY[api]: []}
    if api != "gemini":
        doc.update(model="m", stream=True)
    path.write_text(json.dumps(doc, indent=2))
    return path


@pytest.mark.parametrize("api", APIS)
def test_save_keeps_tool_turns_and_the_reopened_chat_continues(server, chatpipe, tmp_path, api):
    recording = ANSWER[api]
    path = conversation_file(tmp_path, api, f"{server.url}/replay/{recording}")
    turns = tmp_path / "turns.json"
    turns.write_text(json.dumps(TURNS))
    proc = chatpipe("send", str(path), "--save", "--messages", str(turns))
    assert proc.returncode == 0, proc.stderr
    text = EXPECTED[recording]["text"]
    answer = dialects.get(api).assistant_message(text)
    saved = json.loads(path.read_text())[KEY[api]]
    assert saved == EXPECTED_TURNS[api] + answer
    assert server.requests[-1]["body"][KEY[api]] == EXPECTED_TURNS[api]
    proc = chatpipe("send", str(path), "--save", "-m", "Thanks")
    assert proc.returncode == 0, proc.stderr
    sent = server.requests[-1]["body"][KEY[api]]
    assert sent[:-1] == EXPECTED_TURNS[api] + answer
    assert sent[-1] in ({"role": "user", "content": "Thanks"},
                        {"role": "user", "parts": [{"text": "Thanks"}]})


@pytest.mark.parametrize("bad, message", [
    ([{"role": "assistant", "content": "", "tool_calls": [{"id": "1", "name": "f"}]}],
     '"tool_calls" must be a list of {"id", "name", "arguments"} objects of strings'),
    ([{"role": "tool", "content": "x"}],
     'a "tool" message needs "tool_call_id", "name" and "content" strings'),
])
def test_malformed_tool_turns_are_usage_errors(chatpipe, tmp_path, bad, message):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(bad))
    proc = chatpipe("send", "openai", "--url", "http://127.0.0.1:9/", "--messages", str(path))
    assert proc.returncode == 2
    assert message in proc.stderr
