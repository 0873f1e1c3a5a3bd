"""``send --save --tools``: the tool loop's turns saved in each API's shape.

For each API a scripted model (a local HTTP server) calls the fixture MCP
server's ``echo`` tool in its API's own stream format, then answers; the
saved chat holds the call, the result and the answer, and continues: the
next ``send`` sends them back as saved.  The template's
``max_tool_steps`` is honoured.
"""

from __future__ import annotations

import json

import pytest

from chatpipe import dialects
from conftest import EXPECTED, STREAMS
from replay_server import Reply
from test_mcp import send
from test_tool_formats import ANSWER, KEY
from test_tool_loop import recording, tool_call_answer

ARGS = '{"text": "hi"}'


def sse(*events) -> bytes:
    """Server-sent events: dicts as data, (name, dict) pairs as named events."""
    out = b""
    for e in events:
        name, data = e if isinstance(e, tuple) else (None, e)
        out += (f"event: {name}\n".encode() if name else b"") + b"data: " + json.dumps(data).encode() + b"\n\n"
    return out


#: Each API's answer that calls echo(text="hi"), in its own stream format.
CALLS = {
    "openai-chat": tool_call_answer("echo", "call_e", ARGS),
    "anthropic-messages": Reply([sse(
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 5}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": "toolu_e", "name": "echo", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
            "type": "input_json_delta", "partial_json": ARGS}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                           "usage": {"output_tokens": 9}}),
        ("message_stop", {"type": "message_stop"}))]),
    "gemini": Reply([sse({"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "echo", "args": {"text": "hi"}}}]}, "finishReason": "STOP"}]})]),
    "ollama": Reply([json.dumps({"message": {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "echo", "arguments": {"text": "hi"}}}]}, "done": False}).encode()
        + b"\n" + json.dumps({"message": {"role": "assistant", "content": ""}, "done": True,
                              "done_reason": "stop"}).encode() + b"\n"],
        content_type="application/x-ndjson"),
    "openai-responses": Reply([sse(
        ("response.output_item.added", {"type": "response.output_item.added", "output_index": 0,
                                        "item": {"type": "function_call", "call_id": "call_e",
                                                 "name": "echo", "arguments": ""}}),
        ("response.function_call_arguments.delta", {
            "type": "response.function_call_arguments.delta", "output_index": 0, "delta": ARGS}),
        ("response.completed", {"type": "response.completed", "response": {"status": "completed"}}))]),
}

#: The call id each API's answer gives (chatpipe's own where it gives none).
CALL_ID = {"openai-chat": "call_e", "anthropic-messages": "toolu_e", "gemini": "chatpipe_0",
           "ollama": "chatpipe_0", "openai-responses": "call_e"}


def chat_file(tmp_path, api, url, **block):
    path = tmp_path / "chat.json"
    doc = {"chatpipe": {"api": api, "url": url, "max_retries": 0, **block}, KEY[api]: []}
    if api != "gemini":
        doc.update(model="m", stream=True)
    path.write_text(json.dumps(doc, indent=2))
    return path


@pytest.mark.parametrize("api", sorted(CALLS))
def test_the_loops_turns_are_saved_and_the_chat_continues(server, mcp_env, tmp_path, api):
    answer = ANSWER[api]
    url = server.add("/m", [CALLS[api], recording(answer), recording(answer)])
    path = chat_file(tmp_path, api, url)
    proc = send(mcp_env, str(path), "--save", "--tools", "mcp:fx", "--yes", "-m", "Echo hi")
    assert proc.returncode == 0, proc.stderr
    text = EXPECTED[answer]["text"]
    turns = [{"role": "user", "content": "Echo hi"},
             {"role": "assistant", "content": "", "tool_calls": [
                 {"id": CALL_ID[api], "name": "echo", "arguments": ARGS}]},
             {"role": "tool", "tool_call_id": CALL_ID[api], "name": "echo", "content": "hi",
              "is_error": False},
             {"role": "assistant", "content": text}]
    expected: dict = {}
    dialects.get(api).add_messages(expected, turns)
    saved = json.loads(path.read_text())[KEY[api]]
    assert saved == expected[KEY[api]]
    assert server.requests[1]["body"][KEY[api]] == saved[:-1]     # the follow-up, as saved
    proc = send(mcp_env, str(path), "--save", "--tools", "mcp:fx", "--yes", "-m", "Thanks")
    assert proc.returncode == 0, proc.stderr
    assert server.requests[-1]["body"][KEY[api]][:-1] == saved


def test_the_templates_max_tool_steps_is_the_limit(server, mcp_env, tmp_path):
    url = server.add("/m", tool_call_answer("echo", "c", ARGS))
    path = chat_file(tmp_path, "openai-chat", url, max_tool_steps=1)
    proc = send(mcp_env, str(path), "--tools", "mcp:fx", "--yes", "--output", "ndjson", "-m", "go")
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.splitlines()[-1])
    assert last == {"type": "done", "finish_reason": "tool_calls", "steps": 2,
                    "stopped": "max_tool_steps"}
    assert len(server.requests) == 2
    proc = send(mcp_env, str(path), "--tools", "mcp:fx", "--yes", "--max-tool-steps", "0",
                "--output", "ndjson", "-m", "go")
    assert json.loads(proc.stdout.splitlines()[-1]) == {"type": "done", "finish_reason": "tool_calls"}


def test_a_bad_max_tool_steps_is_a_template_error(chatpipe, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"chatpipe": {"url": "http://127.0.0.1:9/", "max_tool_steps": -1}}))
    proc = chatpipe("templates", "check", str(path))
    assert proc.returncode == 1
    assert '"chatpipe.max_tool_steps" must be a whole number, 0 or more' in proc.stdout


def test_text_output_separates_the_steps_answers(server, mcp_env, tmp_path):
    first = Reply([(STREAMS / "anthropic/tool-use.sse").read_bytes()])
    url = server.add("/m", [first, recording("anthropic/basic.sse")])
    path = chat_file(tmp_path, "anthropic-messages", url)
    proc = send(mcp_env, str(path), "--tools", "mcp:fx", "--yes", "-m", "Weather?")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "I'll check the current weather in Paris for you.\nHello there!\n"
    assert proc.stderr == ('chatpipe: tool get_weather({"location": "Paris"}) error: '
                           "there is no tool named 'get_weather'\n")
