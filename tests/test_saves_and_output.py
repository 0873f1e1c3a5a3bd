"""Saved chats lose nothing; output is always valid, bounded and safe; bad
input is a clear error.  Real chatpipe processes against real local servers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import EXPECTED, FAKE_KEY, ROOT, STREAMS, ndjson
from replay_server import Reply

TEXT = "openai-chat/text-with-usage.sse"


def sse(*events, done=True) -> bytes:
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return body + (b"data: [DONE]\n\n" if done else b"")


def chunk(content=None, finish=None) -> dict:
    delta = {"content": content} if content is not None else {}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def conversation_file(tmp_path, url, api="openai-chat", **body) -> str:
    path = tmp_path / "chat.json"
    doc = {"chatpipe": {"api": api, "url": url, "max_retries": 0}, "model": "m", "stream": True}
    doc.update(body or {"messages": []})
    path.write_text(json.dumps(doc, indent=2))
    return str(path)


# ---- saved chats ----------------------------------------------------------------------------

def test_concurrent_saves_lose_no_turn(server, chatpipe, tmp_path):
    data = (STREAMS / TEXT).read_bytes()
    path = conversation_file(tmp_path, f"{server.url}/replay/{TEXT}?hold={len(data) - 20}")
    n = 8
    with ThreadPoolExecutor(n) as pool:
        runs = [pool.submit(chatpipe, "send", path, "--save", "-m", f"question {i}")
                for i in range(n)]
        while len(server.requests) < n:           # every answer held, then all end at once
            time.sleep(0.05)
        server.release.set()
        assert all(run.result().returncode == 0 for run in runs)
    messages = json.loads(open(path).read())["messages"]
    assert sorted(m["content"] for m in messages if m["role"] == "user") == sorted(
        f"question {i}" for i in range(n))
    assert [m["content"] for m in messages if m["role"] == "assistant"] == [
        EXPECTED[TEXT]["text"]] * n
    assert os.listdir(tmp_path) == ["chat.json"]    # no lock or temp file beside the chat


@pytest.mark.parametrize("recording, api, key, user, answer", [
    ("gemini/basic-text-no-blank-lines.sse", "gemini", "contents",
     lambda t: {"role": "user", "parts": [{"text": t}]},
     lambda t: {"role": "model", "parts": [{"text": t}]}),
    ("openai-responses/basic-text.sse", "openai-responses", "input",
     lambda t: {"role": "user", "content": t}, lambda t: {"role": "assistant", "content": t}),
    ("anthropic/basic.sse", "anthropic-messages", "messages",
     lambda t: {"role": "user", "content": t}, lambda t: {"role": "assistant", "content": t}),
])
def test_save_continues_the_conversation_in_each_apis_own_field(
        server, chatpipe, tmp_path, recording, api, key, user, answer):
    if recording not in EXPECTED:
        pytest.skip(f"no recording {recording}")
    url = f"{server.url}/replay/{recording}"
    path = conversation_file(tmp_path, url, api, **{key: []})
    assert chatpipe("send", path, "--save", "-m", "first").returncode == 0
    text = EXPECTED[recording]["text"]
    assert json.loads(open(path).read())[key] == [user("first"), answer(text)]
    assert chatpipe("send", path, "--save", "-m", "second").returncode == 0
    assert server.requests[-1]["body"][key] == [user("first"), answer(text), user("second")]
    assert "messages" not in json.loads(open(path).read()) or key == "messages"


@pytest.fixture
def unwritable():
    """Make a file or folder unwritable, even for root (chattr +i)."""
    made = []

    def make(path):
        if os.geteuid() == 0:
            if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)]).returncode:
                pytest.skip("chattr +i is not available here")
        else:
            os.chmod(path, 0o555 if os.path.isdir(path) else 0o444)
        made.append(path)

    yield make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)])
        os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)


@pytest.mark.parametrize("what", ["file", "folder"])
def test_an_unwritable_chat_fails_before_anything_is_sent(server, chatpipe, tmp_path,
                                                         unwritable, what):
    path = conversation_file(tmp_path, f"{server.url}/replay/{TEXT}")
    unwritable(path if what == "file" else tmp_path)
    proc = chatpipe("send", path, "--save", "-m", "hi")
    assert proc.returncode == 2
    assert "--save cannot write" in proc.stderr and "nothing was sent" in proc.stderr
    assert server.requests == []


def test_an_incomplete_answer_is_not_saved_as_if_whole(server, chatpipe, tmp_path):
    path = conversation_file(tmp_path, f"{server.url}/replay/{TEXT}?cut=900")
    proc = chatpipe("send", path, "--save", "-m", "hi")
    assert proc.returncode == 1
    assert proc.stdout.strip()                              # the partial text was shown
    assert "ended early" in proc.stderr and "was not saved" in proc.stderr
    assert proc.stderr.count("chatpipe: error:") == 1      # one terminal error
    assert json.loads(open(path).read())["messages"] == [{"role": "user", "content": "hi"}]
    # The next send without a message asks the saved question again.
    proc = chatpipe("send", path, "--save", "--url", f"{server.url}/replay/{TEXT}")
    assert proc.returncode == 0
    assert [m["role"] for m in json.loads(open(path).read())["messages"]] == ["user", "assistant"]


# ---- output always valid and safe --------------------------------------------------------------

def test_a_lone_surrogate_becomes_u_fffd_everywhere(server, chatpipe, env):
    body = sse(chunk("a"), chunk("x"), chunk(finish="stop")).replace(b'"x"', b'"\\ud800b"')
    url = server.add("/s", Reply([body]))
    text = chatpipe("send", "openai", "--url", url, "-m", "hi")
    assert (text.returncode, text.stdout) == (0, "a\ufffdb\n"), text.stderr
    lines = chatpipe("send", "openai", "--url", url, "-m", "hi", "--output", "ndjson")
    assert lines.returncode == 0 and ndjson(lines.stdout)[-1]["type"] == "done"
    assert "\ufffd" in "".join(e.get("content", "") for e in ndjson(lines.stdout))
    serve = subprocess.run([sys.executable, "-m", "chatpipe", "serve"], cwd=ROOT, env=env,
                           input=json.dumps({"id": 1, "template": "openai", "url": url,
                                             "messages": [{"role": "user", "content": "x"}]}
                                            ).encode() + b"\n", capture_output=True, timeout=30)
    assert serve.returncode == 0
    assert json.loads(serve.stdout.decode("utf-8").splitlines()[-1])["type"] == "done"


def test_terminal_escapes_reach_no_terminal(server, chatpipe):
    url = server.add("/esc", Reply([sse(chunk("red \x1b[31mALERT\x1b]0;title\x07 \x9b2J done\r\n"),
                                        chunk(finish="stop"))]))
    text = chatpipe("send", "openai", "--url", url, "-m", "hi")
    assert text.returncode == 0
    assert not any(c in text.stdout for c in "\x1b\x07\x9b\r")
    assert text.stdout.startswith("red \ufffd[31mALERT")
    lines = chatpipe("send", "openai", "--url", url, "-m", "hi", "--output", "ndjson")
    assert "\x1b[31m" in ndjson(lines.stdout)[1]["content"]      # JSON keeps it, escaped
    assert "\x1b" not in lines.stdout


@pytest.mark.parametrize("redirect", [">&-", ">/dev/full", "| head -c 1"])
@pytest.mark.parametrize("output", ["text", "ndjson"])
def test_a_closed_or_full_stdout_ends_quietly(server, env, redirect, output):
    url = f"{server.url}/replay/{TEXT}?split=20&delay=0.01"
    cmd = (f"{sys.executable} -m chatpipe send openai --url '{url}' --output {output} -m hi "
           f"{redirect}; echo \"status=${{PIPESTATUS[0]}}\" >&2")
    proc = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=30)
    status = int(proc.stderr.rsplit("status=", 1)[1])
    assert status == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    if redirect == ">/dev/full":
        assert "No space left on device" in proc.stderr


# ---- bad input is a clear error -----------------------------------------------------------

def test_deep_nesting_is_a_template_or_usage_error(chatpipe, tmp_path):
    deep = "[" * 100000 + "]" * 100000
    path = tmp_path / "deep.json"
    path.write_text('{"chatpipe": {"url": "http://127.0.0.1:9/"},\n "messages": ' + deep + "}")
    proc = chatpipe("templates", "check", str(path))
    assert proc.returncode == 1
    assert f"{path}:2:" in proc.stdout and "nested deeper than 64 levels" in proc.stdout
    proc = chatpipe("send", str(path), "-m", "hi")
    assert proc.returncode == 2 and "nested deeper" in proc.stderr and "internal" not in proc.stderr
    proc = chatpipe("send", "openai", "--messages", "-", input=deep)
    assert proc.returncode == 2 and "nested deeper" in proc.stderr and "internal" not in proc.stderr
    shallow = [{"role": "user", "content": [{"type": "text", "text": "x", "a": [[[[1]]]]}]}]
    proc = chatpipe("send", "openai", "--url", "http://127.0.0.1:9/", "--messages", "-",
                    input=json.dumps(shallow))
    assert proc.returncode == 1                                      # only the connection fails


@pytest.mark.parametrize("url, expected", [
    ("api.openai.com/v1/chat/completions", "must start with http:// or https://"),
    ("ftp://127.0.0.1/v1", "the scheme ftp:// is not supported"),
])
def test_a_bad_url_says_what_is_wrong(chatpipe, url, expected):
    proc = chatpipe("send", "openai", "--url", url, "-m", "hi")
    assert proc.returncode == 1 and expected in proc.stderr and "retry" not in proc.stderr


def test_a_host_that_does_not_resolve_is_not_retried(chatpipe):
    started = time.monotonic()
    proc = chatpipe("send", "openai", "--url", "http://no-such-host.invalid/v1", "-m", "hi",
                    "--output", "ndjson")
    events = ndjson(proc.stdout)
    assert [e["type"] for e in events] == ["error"]
    assert "does not resolve" in events[0]["message"] and events[0]["retryable"] is False
    assert time.monotonic() - started < 10


def test_a_connection_lost_mid_body_is_a_sentence(server, chatpipe):
    proc = chatpipe("send", "openai", "--url", f"{server.url}/replay/{TEXT}?cut=900",
                    "--output", "ndjson", "-m", "hi")
    message = ndjson(proc.stdout)[-1]["message"]
    assert message.startswith("the stream ended early: ")
    assert not any(s in message for s in ("(", "IncompleteRead", "Connection broken")), message


def test_an_error_body_in_server_sent_events_gives_its_message_once(server, chatpipe):
    body = b'data: {"error": {"message": "model overloaded", "type": "server_error"}}\n\n'
    url = server.add("/e", Reply([body], status=500))
    proc = chatpipe("send", "openai", "--url", url, "-m", "hi")
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert lines[-1] == "chatpipe: error: HTTP 500: model overloaded"
    assert proc.stderr.count("HTTP 500") == sum("HTTP 500" in line for line in proc.stderr
                                                .splitlines())           # never twice a line
    assert FAKE_KEY not in proc.stderr
