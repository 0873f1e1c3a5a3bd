"""The tool loop, through ``chatpipe serve`` with the client's own tools.

A local HTTP server plays the model: it answers first with the tool calls
of a real recording (tests/streams/), then checks that the follow-up
request carries the calls and the client's results in the API's exact
format before it streams a final text (it answers HTTP 400 otherwise),
for each of the five APIs.  Then: a denied call, a tool error, an unknown
tool, the step limit, a cancel in the middle of the loop.
"""

from __future__ import annotations

import json

import pytest

from conftest import EXPECTED, KEYS, STREAMS, text_of
from replay_server import Reply, error_reply
from test_tool_formats import ANSWER, KEY


#: API -> (bundled template, recording with tool calls, what the model was asked).
CASES = {
    "openai-chat": ("openai", "openai-chat/tool-calls-parallel.sse"),
    "anthropic-messages": ("anthropic", "anthropic/tool-use.sse"),
    "gemini": ("gemini", "gemini/thinking-function-call-crlf.sse"),
    "ollama": ("ollama", "ollama/tool-calls.ndjson"),
    "openai-responses": ("openai-responses", "openai-responses/function-calls.sse"),
}

QUESTION = "Please use the tools."
OK, FAILED = "sunny, 14 C", "the service is down"

#: The exact conversation each API must be sent after the tool calls: the
#: recording's calls, the first answered OK, the second (if any) FAILED.
FOLLOW_UP = {
    "openai-chat": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_JMW1whyEaYG438VE1OIflxA2", "type": "function", "function": {
                "name": "GetWeatherArgs",
                "arguments": '{"city": "Edinburgh", "country": "GB", "units": "c"}'}},
            {"id": "call_DNYTawLBoN8fj3KN6qU9N1Ou", "type": "function", "function": {
                "name": "get_stock_price", "arguments": '{"ticker": "AAPL", "exchange": "NASDAQ"}'}}]},
        {"role": "tool", "tool_call_id": "call_JMW1whyEaYG438VE1OIflxA2", "content": OK},
        {"role": "tool", "tool_call_id": "call_DNYTawLBoN8fj3KN6qU9N1Ou",
         "content": f"Error: {FAILED}"}],
    "anthropic-messages": [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": [
            {"type": "text", "text": "I'll check the current weather in Paris for you."},
            {"type": "tool_use", "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn", "name": "get_weather",
             "input": {"location": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01NRLabsLyVHZPKxbKvkfSMn", "content": OK}]}],
    "gemini": [
        {"role": "user", "parts": [{"text": QUESTION}]},
        {"role": "model", "parts": [
            {"functionCall": {"name": "weather", "args": {"city": "San Francisco"}},
             "thoughtSignature": "SIGNATURE"}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "weather", "response": {"output": OK}}}]}],
    "ollama": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "weather", "arguments": {"city": "Detroit"}}},
            {"function": {"name": "search", "arguments": {"query": "Detroit Tigers game time today"}}}]},
        {"role": "tool", "content": OK, "tool_name": "weather"},
        {"role": "tool", "content": f"Error: {FAILED}", "tool_name": "search"}],
    "openai-responses": [
        {"role": "user", "content": QUESTION},
        {"type": "function_call", "call_id": "call_GXd80NWdsX8ng3xdeNLeA42o", "name": "search",
         "arguments": '{"query":"Detroit Tigers game time October 6, 2023"}'},
        {"type": "function_call", "call_id": "call_qfdHN9tTntv02109c9RNnGGe", "name": "weather",
         "arguments": '{"city":"Detroit"}'},
        {"type": "function_call_output", "call_id": "call_GXd80NWdsX8ng3xdeNLeA42o", "output": OK},
        {"type": "function_call_output", "call_id": "call_qfdHN9tTntv02109c9RNnGGe",
         "output": f"Error: {FAILED}"}],
}


def signature() -> str:
    """The thought signature of the Gemini recording."""
    text = (STREAMS / CASES["gemini"][1]).read_text()
    return text.split('"thoughtSignature": "')[1].split('"')[0]


def recording(name: str) -> Reply:
    ctype = "application/x-ndjson" if name.endswith(".ndjson") else "text/event-stream"
    return Reply([(STREAMS / name).read_bytes()], content_type=ctype)


def checked(api: str, expected: list) -> callable:
    """A scripted model's second answer: the final text if the request
    carries EXPECTED as its conversation, else HTTP 400 saying what differs."""
    def reply(body: dict) -> Reply:
        if body.get(KEY[api]) == expected:
            return recording(ANSWER[api])
        error = error_reply(400)
        error.chunks = [json.dumps({"error": {"message": "unexpected conversation: "
                                              + json.dumps(body.get(KEY[api]))}}).encode()]
        return error
    return reply


def tool(name: str) -> dict:
    return {"name": name, "description": f"the {name} tool",
            "parameters": {"type": "object", "properties": {}}}


def request(rid, url, template, *tools, **extra) -> dict:
    return {"id": rid, "template": template, "url": url, "env": KEYS,
            "messages": [{"role": "user", "content": QUESTION}],
            "tools": [tool(n) for n in tools], **extra}


def answer_tools(serve, rid, results: list, until=("done", "error")) -> list[dict]:
    """Read RID's events to its end, answering each ``tool_request`` with
    the next of RESULTS (a ``tool_result`` payload without ``call_id``)."""
    events, results = [], list(results)
    while True:
        event = serve.until(lambda e: e.get("id") == rid)[-1][1]
        events.append(event)
        if event["type"] == "tool_request":
            serve.send({"id": rid, "tool_result": {"call_id": event["call_id"], **results.pop(0)}})
        if event["type"] in until:
            return events


@pytest.mark.parametrize("api", sorted(CASES))
def test_follow_up_carries_calls_and_results_in_each_apis_format(server, serve, api):
    template, calls = CASES[api]
    expected = json.loads(json.dumps(FOLLOW_UP[api]).replace("SIGNATURE", signature()))
    url = server.add("/model", [recording(calls), checked(api, expected)])
    names = [c["name"] for c in EXPECTED[calls]["tool_calls"]]
    serve.send(request("r", url, template, *dict.fromkeys(names)))
    events = answer_tools(serve, "r", [{"content": OK, "is_error": False},
                                       {"content": FAILED, "is_error": True}])
    assert server.requests[-1]["body"][KEY[api]] == expected
    kinds = [e["type"] for e in events]
    assert kinds.count("start") == 1 and kinds.count("step") == 1 and kinds[-1] == "done"
    assert events[-1]["steps"] == 2 and events[-1]["finish_reason"] == "stop"
    assert text_of(events).endswith(EXPECTED[ANSWER[api]]["text"])
    requests = [e for e in events if e["type"] == "tool_request"]
    results = [e for e in events if e["type"] == "tool_result"]
    assert [r["name"] for r in requests] == [r["name"] for r in results] == names
    assert [r["is_error"] for r in results] == [False, True][:len(names)]
    first = server.requests[0]["body"]
    assert len(first["tools"] if api != "gemini" else first["tools"][0]["functionDeclarations"]) \
        == len(set(names))


def sse(*chunks: dict) -> bytes:
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return body + b"data: [DONE]\n\n"


def tool_call_answer(name: str, call_id: str, arguments: str = "{}") -> Reply:
    """An OpenAI chat answer that calls NAME once."""
    return Reply([sse({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": call_id, "type": "function",
         "function": {"name": name, "arguments": arguments}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})])


def text_answer(text: str) -> Reply:
    return Reply([sse({"choices": [{"index": 0, "delta": {"content": text}}]},
                      {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})])


def test_a_denied_call_goes_back_with_the_users_reason(server, serve):
    url = server.add("/m", [tool_call_answer("rm", "c1"), text_answer("Fine.")])
    serve.send(request("d", url, "openai", "rm"))
    events = answer_tools(serve, "d", [{"denied": True, "reason": "not on my disk"}])
    result = next(e for e in events if e["type"] == "tool_result")
    assert result == {"id": "d", "type": "tool_result", "call_id": "c1", "name": "rm",
                      "content": "The user denied this tool call: not on my disk",
                      "is_error": True, "denied": True}
    assert server.requests[-1]["body"]["messages"][-1] == {
        "role": "tool", "tool_call_id": "c1",
        "content": "Error: The user denied this tool call: not on my disk"}
    assert events[-1] == {"id": "d", "type": "done", "finish_reason": "stop", "steps": 2}


def test_a_tool_error_goes_to_the_model_not_to_the_client_as_an_error(server, serve):
    url = server.add("/m", [tool_call_answer("f", "c1", "{not json"), text_answer("Sorry.")])
    serve.send(request("e", url, "openai", "f"))
    events = answer_tools(serve, "e", [])
    result = next(e for e in events if e["type"] == "tool_result")
    assert result["is_error"] and result["content"].startswith("the arguments are not valid JSON")
    assert not any(e["type"] == "tool_request" for e in events)    # never run
    assert events[-1]["type"] == "done"


def test_an_unknown_tool_is_an_error_result(server, serve):
    url = server.add("/m", [tool_call_answer("nope", "c1"), text_answer("OK.")])
    serve.send(request("u", url, "openai", "f"))
    events = answer_tools(serve, "u", [])
    assert next(e for e in events if e["type"] == "tool_result")["content"] == \
        "there is no tool named 'nope'"
    assert events[-1]["type"] == "done"


def test_the_step_limit_ends_the_request_cleanly(server, serve):
    url = server.add("/m", tool_call_answer("again", "c1"))      # a model that never stops
    serve.send(request("s", url, "openai", "again", max_tool_steps=2))
    events = answer_tools(serve, "s", [{"content": "ok"}] * 2)
    assert len(server.requests) == 3
    results = [e for e in events if e["type"] == "tool_result"]
    assert [r["is_error"] for r in results] == [False, False, True]
    assert results[-1]["content"].startswith("not run: chatpipe's limit of tool steps")
    assert events[-1] == {"id": "s", "type": "done", "finish_reason": "tool_calls", "steps": 3,
                          "stopped": "max_tool_steps"}
    assert [e["index"] for e in events if e["type"] == "tool_call"] == [0, 1, 2]


def test_max_tool_steps_zero_runs_nothing(server, serve):
    url = server.add("/m", tool_call_answer("f", "c1"))
    serve.send(request("z", url, "openai", "f", max_tool_steps=0))
    events = answer_tools(serve, "z", [])
    assert [e["type"] for e in events] == ["start", "tool_call", "done"]
    assert events[-1]["finish_reason"] == "tool_calls"


def test_cancel_while_the_client_runs_a_tool_stops_the_loop(server, serve):
    url = server.add("/m", [tool_call_answer("slow", "c1"), text_answer("never")])
    serve.send(request("c", url, "openai", "slow"))
    serve.until(lambda e: e["type"] == "tool_request")
    serve.send({"id": "c", "cancel": True})
    last = serve.until(lambda e: e.get("id") == "c" and e["type"] in ("done", "error"))[-1][1]
    assert last["aborted"] is True
    serve.send({"id": "c", "tool_result": {"call_id": "c1", "content": "late"}})
    rejected = serve.until(lambda e: e["type"] == "rejected")[-1][1]
    assert rejected == {"type": "rejected", "request_id": "c",
                        "message": "request id 'c' is not streaming"}
    assert len(server.requests) == 1


def test_cancel_during_a_later_answer(server, serve):
    data = (STREAMS / "openai-chat/text-with-usage.sse").read_bytes()
    held = Reply([data[:300], data[300:]], gate=lambda i: server.release.wait(30))
    server.release.clear()
    url = server.add("/m", [tool_call_answer("f", "c1"), held])
    serve.send(request("l", url, "openai", "f"))
    answer_tools(serve, "l", [{"content": "ok"}], until=("step",))
    serve.send({"id": "l", "cancel": True})
    last = serve.until(lambda e: e.get("id") == "l" and e["type"] in ("done", "error"))[-1][1]
    server.release.set()
    assert last["aborted"] is True and last["message"] == "cancelled"


def test_an_answer_no_call_awaits_is_rejected(server, serve):
    url = server.add("/m", [tool_call_answer("f", "c1"), text_answer("Done.")])
    serve.send(request("w", url, "openai", "f"))
    serve.until(lambda e: e["type"] == "tool_request")
    serve.send({"id": "w", "tool_result": {"call_id": "other", "content": "x"}})
    serve.send({"id": "w", "tool_confirm": {"call_id": "c1", "decision": "once"}})
    rejected = [e for _, e in serve.until(lambda e: e["type"] == "rejected")]
    rejected += [e for _, e in serve.until(lambda e: e["type"] == "rejected")]
    assert [e["message"] for e in rejected if e["type"] == "rejected"] == [
        "request 'w' awaits no tool_result for call 'other'",
        "request 'w' awaits no tool_confirm for call 'c1'"]
    serve.send({"id": "w", "tool_result": {"call_id": "c1", "content": "x"}})
    last = serve.until(lambda e: e.get("id") == "w" and e["type"] in ("done", "error"))[-1][1]
    assert last["type"] == "done"


def test_bad_tool_definitions_end_the_request_with_an_error(serve):
    serve.send({"id": "b", "template": "openai", "env": KEYS, "tools": [{"name": "no spaces"}],
                "messages": [{"role": "user", "content": "hi"}]})
    last = serve.until(lambda e: e.get("id") == "b")[-1][1]
    assert last["type"] == "error" and "tools: item 0" in last["message"]
