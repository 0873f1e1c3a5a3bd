"""``chatpipe send`` as a subprocess against real local HTTP servers."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import EXPECTED, FAKE_KEY, ROOT, STREAMS, ndjson
from replay_server import Reply

TEXT = "openai-chat/text-with-usage.sse"


def replay_url(server, name=TEXT, **query):
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return f"{server.url}/replay/{name}" + (f"?{q}" if q else "")


# ---- the protocol, end to end ------------------------------------------------

@pytest.mark.parametrize("name", [TEXT, "openai-chat/utf8-multiline-json.sse",
                                  "openai-chat/finish-length.sse",
                                  "openai-chat/logprobs.sse"])
def test_ndjson_against_a_replay(server, chatpipe, name):
    """The issue's acceptance command, for each OpenAI chat recording."""
    proc = chatpipe("send", "openai", "--url", replay_url(server, name, split=3),
                    "--output", "ndjson", "-m", "hi")
    assert proc.returncode == 0, proc.stderr
    events = ndjson(proc.stdout)
    expected = EXPECTED[name]
    assert events[0]["type"] == "start"
    assert "".join(e["content"] for e in events if e["type"] == "delta") == expected["text"]
    usage = expected["usage"]
    assert events[-2]["type"] == "usage"
    assert (events[-2]["input_tokens"], events[-2]["output_tokens"],
            events[-2]["total_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"],
                                            usage["total_tokens"])
    assert events[-1] == {"type": "done", "finish_reason": expected["finish_reason"]}
    assert proc.stderr == ""
    sent = server.requests[-1]["body"]
    assert sent["messages"][-1] == {"role": "user", "content": "hi"}
    assert "chatpipe" not in sent and sent["stream"] is True
    assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {FAKE_KEY}"


def test_text_output(server, chatpipe):
    proc = chatpipe("send", "openai", "--url", replay_url(server), "-m", "hi")
    assert proc.returncode == 0
    assert proc.stdout == EXPECTED[TEXT]["text"] + "\n"
    assert proc.stderr == ""


def test_text_output_shows_tool_calls_and_refusals(server, chatpipe):
    proc = chatpipe("send", "openai", "--url",
                    replay_url(server, "openai-chat/tool-calls-parallel.sse"), "-m", "hi")
    assert proc.returncode == 0
    assert proc.stdout == (
        '[tool call: GetWeatherArgs({"city": "Edinburgh", "country": "GB", "units": "c"})]\n'
        '[tool call: get_stock_price({"ticker": "AAPL", "exchange": "NASDAQ"})]\n')
    proc = chatpipe("send", "openai", "--url",
                    replay_url(server, "openai-chat/refusal.sse"), "-m", "hi")
    assert proc.stdout == EXPECTED["openai-chat/refusal.sse"]["refusal"] + "\n"


def test_text_output_error_goes_to_stderr(server, chatpipe):
    proc = chatpipe("send", "openai", "--url", f"{server.url}/error/429?retry_after=0",
                    "-m", "hi")
    assert proc.returncode == 1
    assert proc.stdout == ""
    message = "Rate limit reached for gpt-4o in organization org-x on tokens per min."
    assert proc.stderr == "".join(
        f"chatpipe: retry {n} in 0.0 s: HTTP 429: {message}\n" for n in (1, 2, 3)
    ) + f"chatpipe: error: HTTP 429: {message}\n"
    assert len(server.requests) == 4


def test_http_error_ndjson(server, chatpipe):
    proc = chatpipe("send", "openai", "--url", f"{server.url}/error/401", "-m", "hi",
                    "--output", "ndjson")
    assert proc.returncode == 1
    assert ndjson(proc.stdout) == [{"type": "error", "status": 401, "retryable": False,
                                    "message": "Incorrect API key provided: sk-abc***xyz."}]


def test_ended_early_keeps_text_then_error(server, chatpipe):
    data = (STREAMS / TEXT).read_bytes()
    cut = data.index(b"data: [DONE]")
    proc = chatpipe("send", "openai", "--url", replay_url(server, cut=cut), "-m", "x",
                    "--output", "ndjson")
    assert proc.returncode == 1
    events = ndjson(proc.stdout)
    assert "".join(e["content"] for e in events if e["type"] == "delta") == EXPECTED[TEXT]["text"]
    assert events[-1]["type"] == "error" and "ended early" in events[-1]["message"]
    assert events[-1]["retryable"] is True


def test_overrides_model_and_vars(server, chatpipe, tmp_path):
    tpl = tmp_path / "t.json"
    tpl.write_text(json.dumps({
        "chatpipe": {"url": "http://unused.invalid/", "headers": {"X-Team": "${team}"}},
        "model": "base", "stream": True,
        "messages": [{"role": "system", "content": "Answer in ${lang}."}]}))
    proc = chatpipe("send", str(tpl), "--url", replay_url(server), "--model", "other",
                    "--var", "lang=French", "--var", "team=blue", "-m", "a ${b} $c")
    assert proc.returncode == 0, proc.stderr
    req = server.requests[-1]
    assert req["headers"]["X-Team"] == "blue"
    assert req["body"]["model"] == "other"
    assert req["body"]["messages"] == [{"role": "system", "content": "Answer in French."},
                                       {"role": "user", "content": "a ${b} $c"}]


# ---- where the messages come from ------------------------------------------------

def test_message_from_stdin(server, chatpipe):
    proc = chatpipe("send", "openai", "--url", replay_url(server), input="Piped question\n")
    assert proc.returncode == 0, proc.stderr
    assert server.requests[-1]["body"]["messages"][-1] == {
        "role": "user", "content": "Piped question\n"}


def test_messages_from_stdin_and_file(server, chatpipe, tmp_path):
    conversation = [{"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello! ünïcode"},
                    {"role": "user", "content": "More"}]
    proc = chatpipe("send", "openai", "--url", replay_url(server), "--messages", "-",
                    "--output", "ndjson", input=json.dumps(conversation))
    assert proc.returncode == 0, proc.stderr
    assert server.requests[-1]["body"]["messages"][1:] == conversation
    path = tmp_path / "m.json"
    path.write_text(json.dumps(conversation[:1]))
    proc = chatpipe("send", "openai", "--url", replay_url(server), "--messages", str(path),
                    "-m", "after")
    assert proc.returncode == 0, proc.stderr
    assert server.requests[-1]["body"]["messages"][1:] == [
        conversation[0], {"role": "user", "content": "after"}]


def test_system_message_in_messages_replaces_the_templates(server, chatpipe):
    mine = [{"role": "system", "content": "Answer in haiku."},
            {"role": "user", "content": "Rain?"}]
    proc = chatpipe("send", "openai", "--url", replay_url(server), "--messages", "-",
                    input=json.dumps(mine))
    assert proc.returncode == 0, proc.stderr
    assert server.requests[-1]["body"]["messages"] == mine


@pytest.mark.parametrize("payload,fragment", [
    ("not json", "invalid JSON"),
    ('{"role": "user"}', "expected a JSON array"),
    ('[{"content": "x"}]', 'item 0 is not an object with a "role"'),
    ('[{"role": "user", "content": 5}]', '"content" must be a string or a list'),
])
def test_bad_messages_exit_2(server, chatpipe, payload, fragment):
    proc = chatpipe("send", "openai", "--url", replay_url(server), "--messages", "-",
                    "--output", "ndjson", input=payload)
    assert proc.returncode == 2
    [event] = ndjson(proc.stdout)
    assert event["type"] == "error" and fragment in event["message"]
    assert server.requests == []


def test_no_message_is_a_usage_error(chatpipe):
    proc = chatpipe("send", "openai", "--url", "http://127.0.0.1:9/")
    assert proc.returncode == 2
    assert "no message to send" in proc.stderr


def test_missing_key_names_the_variable(chatpipe, env):
    proc = chatpipe("send", "openai", "-m", "hi", extra_env={"OPENAI_API_KEY": ""})
    assert proc.returncode == 2
    assert "environment variable OPENAI_API_KEY is not set" in proc.stderr


# ---- --save ---------------------------------------------------------------------

def test_save_appends_the_turn_and_continues(server, chatpipe, tmp_path):
    path = tmp_path / "request.json"
    path.write_text(json.dumps({
        "chatpipe": {"url": replay_url(server),
                     "headers": {"Authorization": "Bearer ${env:OPENAI_API_KEY}"}},
        "model": "gpt-4o", "stream": True,
        "messages": [{"role": "system", "content": "Be brief."}]}))
    mode = 0o640
    os.chmod(path, mode)
    proc = chatpipe("send", str(path), "--save", "-m", "Weather in SF?")
    assert proc.returncode == 0, proc.stderr
    saved = json.loads(path.read_text())
    assert saved["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in SF?"},
        {"role": "assistant", "content": EXPECTED[TEXT]["text"]}]
    assert saved["chatpipe"]["headers"]["Authorization"] == "Bearer ${env:OPENAI_API_KEY}"
    assert FAKE_KEY not in path.read_text()
    assert os.stat(path).st_mode & 0o777 == mode
    # The next send continues the conversation.
    proc = chatpipe("send", str(path), "--save", "-m", "And tomorrow?")
    assert proc.returncode == 0, proc.stderr
    assert server.requests[-1]["body"]["messages"][1:] == saved["messages"][1:] + [
        {"role": "user", "content": "And tomorrow?"}]
    assert len(json.loads(path.read_text())["messages"]) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["request.json"]  # no temp files left


def test_a_failed_answer_saves_the_question_only(server, chatpipe, tmp_path):
    path = tmp_path / "request.json"
    path.write_text(json.dumps({"chatpipe": {"url": f"{server.url}/error/500", "max_retries": 0},
                                "messages": []}, indent=1))
    proc = chatpipe("send", str(path), "--save", "-m", "hello")
    assert proc.returncode == 1
    assert json.loads(path.read_text())["messages"] == [{"role": "user", "content": "hello"}]


def test_save_needs_a_path(chatpipe):
    proc = chatpipe("send", "openai", "--save", "-m", "x")
    assert proc.returncode == 2 and "--save needs a template file path" in proc.stderr


# ---- liveness: each event reaches stdout before the next is sent -----------------

def _lockstep_stream(n):
    events = [b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n']
    events += [b'data: {"choices":[{"index":0,"delta":{"content":"tok%d "}}]}\n\n' % i
               for i in range(n)]
    events.append(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
                  b"data: [DONE]\n\n")
    return events


@pytest.mark.parametrize("framing", ["chunked", "close", "gzip"])
def test_each_delta_reaches_stdout_before_the_next_event_is_sent(server, env, framing):
    n = 6
    seen = threading.Semaphore(0)
    gate_failures = []

    def gate(i):
        # Piece i is sent only after the delta of piece i-1 was read from
        # chatpipe's stdout (the role chunk, piece 0, prints nothing).
        if i >= 2 and not seen.acquire(timeout=10):
            gate_failures.append(i)

    url = server.add("/live", Reply(_lockstep_stream(n), framing=framing, gate=gate))
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatpipe", "send", "openai", "--url", url, "-m", "x",
         "--output", "ndjson"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env, cwd=ROOT)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deltas = []
    try:
        while True:
            line = lines.get(timeout=15)
            event = json.loads(line)
            if event["type"] == "delta":
                deltas.append(event["content"])
                seen.release()
            if event["type"] in ("done", "error"):
                break
    finally:
        proc.wait(timeout=15)
    assert gate_failures == []
    assert deltas == [f"tok{i} " for i in range(n)]
    assert proc.returncode == 0


# ---- signals ------------------------------------------------------------------------

@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_stream(server, env, signum, code):
    data = (STREAMS / TEXT).read_bytes()
    hold = data.index(b"data: [DONE]") - 300
    url = replay_url(server, hold=hold)
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatpipe", "send", "openai", "--url", url, "-m", "x",
         "--output", "ndjson"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env, cwd=ROOT)
    first = proc.stdout.readline()
    assert json.loads(first)["type"] == "start"
    # Wait until the held part has been turned into deltas.
    out = []
    while not any(json.loads(line)["type"] == "delta" for line in out):
        out.append(proc.stdout.readline())
    time.sleep(0.2)
    sent = time.monotonic()
    proc.send_signal(signum)
    rest, err = proc.communicate(timeout=10)
    elapsed = time.monotonic() - sent
    events = ndjson(rest.decode())
    assert proc.returncode == code
    assert events[-1]["type"] == "error" and events[-1]["aborted"] is True
    assert err == b""
    assert elapsed < 5  # the target is 100 ms; the figure is printed, not asserted
    print(f"{signal.Signals(signum).name}: exited {elapsed * 1000:.0f} ms after the signal")
    server.release.set()


# ---- secrets ------------------------------------------------------------------------

def test_key_never_printed_even_when_echoed(server, chatpipe):
    # A server that echoes the request headers (with the key) in its error.
    body = json.dumps({"error": {"message": f"bad auth header: Bearer {FAKE_KEY}"}}).encode()
    url = server.add("/echo", Reply([body], status=400, framing="length",
                                    content_type="application/json"))
    for output in ("text", "ndjson"):
        proc = chatpipe("send", "openai", "--url", url, "-m", "x", "--output", output)
        assert proc.returncode == 1
        assert FAKE_KEY not in proc.stdout + proc.stderr
        assert "bad auth header: Bearer ***" in proc.stdout + proc.stderr


def test_key_not_on_command_line_needed(server, chatpipe):
    # The key reaches the server through the environment only.
    proc = chatpipe("send", "openai", "--url", replay_url(server), "-m", "x")
    assert proc.returncode == 0
    assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {FAKE_KEY}"
