"""Redaction that never corrupts text: what a secret is, and where it is redacted.

A placeholder key (``ollama``, ``EMPTY``, ``lm-studio``,
``sk-no-key-required``, any short key) and an MCP server's ``env`` value
under a harmless name (``LOG_LEVEL: info``) are no secrets: an answer, a
saved chat and ``chatpipe models`` that say those words say them
unchanged.  A real-looking key is still redacted wherever a server echoes
it.  And an MCP server that prints a non-JSON line holding its secret on
stdout makes the MCP SDK log a traceback quoting it: chatpipe's stderr
carries the traceback, never the secret.  Real servers on 127.0.0.1 (the
replay server plays the model), real MCP servers built with the SDK.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FAKE_KEY, ROOT, TESTS, ndjson
from replay_server import Reply
from test_tool_loop import text_answer, tool_call_answer

#: Keys people use where a server wants no real one.
PLACEHOLDERS = ["ollama", "EMPTY", "lm-studio", "sk-no-key-required", "abc123"]

#: A real-looking key of an MCP server's env.
TOKEN = "mcp-Tok-7Hq2XvB9mZ4pL8sW3nR6"


def pieces(secret: str, size: int = 8) -> set[str]:
    """Every SIZE-character piece of SECRET."""
    return {secret[i:i + size] for i in range(len(secret) - size + 1)}


def assert_clean(text: str, *secrets: str) -> None:
    found = [p for s in secrets for p in pieces(s) if p in text]
    assert not found, f"secret pieces written: {found[:5]}"


def sse(*texts: str) -> Reply:
    """An OpenAI chat stream whose answer is TEXTS, one delta each."""
    events = [{"choices": [{"index": 0, "delta": {"content": t}}]} for t in texts]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return Reply([b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
                  + b"data: [DONE]\n\n"])


def template(tmp_path, url: str, headers: dict) -> str:
    path = tmp_path / "chat.json"
    path.write_text(json.dumps({"chatpipe": {"api": "openai-chat", "url": url, "headers": headers,
                                             "max_retries": 0},
                                "model": "m", "stream": True, "messages": []}))
    return str(path)


def answer_of(proc, output: str) -> str:
    assert proc.returncode == 0, proc.stderr
    if output == "ndjson":
        return "".join(e.get("content", "") for e in ndjson(proc.stdout) if e["type"] == "delta")
    return proc.stdout


# ---- placeholder keys change nothing -----------------------------------------------------

@pytest.mark.parametrize("key", PLACEHOLDERS)
def test_a_placeholder_key_leaves_answers_saves_and_model_lists_unchanged(chatpipe, server,
                                                                          tmp_path, env, key):
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    text = f"Set the key to {key}; {key.upper()} and {key} are placeholders ({key})."
    url = server.add("/v1/chat/completions", sse(text[:20], text[20:]))
    server.add("/v1/models", Reply([json.dumps({"object": "list", "data": [
        {"id": f"{key}-model", "owned_by": key}, {"id": "other"}]}).encode()],
        framing="length", content_type="application/json"))
    path = template(tmp_path, url, {"Authorization": "Bearer ${env:PLACEHOLDER_KEY}"})
    for output in ("text", "ndjson"):
        proc = chatpipe("send", path, "-m", f"what is {key}?", "--output", output,
                        extra_env={"PLACEHOLDER_KEY": key})
        assert answer_of(proc, output) == (text + "\n" if output == "text" else text)
        assert "***" not in proc.stdout + proc.stderr
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {key}"
    proc = chatpipe("send", path, "--save", "-m", f"what is {key}?",
                    extra_env={"PLACEHOLDER_KEY": key})
    assert proc.returncode == 0, proc.stderr
    messages = json.loads(open(path).read())["messages"]
    assert messages == [{"role": "user", "content": f"what is {key}?"},
                        {"role": "assistant", "content": text}]
    proc = chatpipe("models", path, extra_env={"PLACEHOLDER_KEY": key})
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == sorted([f"{key}-model", "other"])
    proc = chatpipe("models", path, "--json", "--refresh", extra_env={"PLACEHOLDER_KEY": key})
    assert {"id": f"{key}-model", "owned_by": key} in json.loads(proc.stdout)


def test_a_real_key_echoed_is_redacted_and_a_placeholder_beside_it_is_not(chatpipe, server,
                                                                          tmp_path):
    """The template sends a real-looking key and a placeholder organisation:
    a server that echoes both, in its answer and in its error body, gets
    the key redacted and the placeholder left as it is."""
    echo = f"org lm-studio, key {FAKE_KEY}."
    url = server.add("/v1/chat/completions", sse(echo))
    error = json.dumps({"error": {"message": f"denied: {echo}", "type": "invalid_request_error"}})
    bad = server.add("/v1/bad", Reply([error.encode()], status=401, framing="length",
                                      content_type="application/json"))
    headers = {"Authorization": "Bearer ${env:OPENAI_API_KEY}", "OpenAI-Organization": "${env:ORG}"}
    path = template(tmp_path, url, headers)
    for output in ("text", "ndjson"):
        proc = chatpipe("send", path, "-m", "hi", "--output", output, extra_env={"ORG": "lm-studio"})
        assert "org lm-studio, key ***." in answer_of(proc, output)
        assert_clean(proc.stdout + proc.stderr, FAKE_KEY)
        proc = chatpipe("send", path, "--url", bad, "-m", "hi", "--output", output,
                        extra_env={"ORG": "lm-studio"})
        assert proc.returncode == 1
        assert "denied: org lm-studio, key ***." in proc.stdout + proc.stderr
        assert_clean(proc.stdout + proc.stderr, FAKE_KEY)
    proc = chatpipe("send", path, "--save", "-m", "hi", extra_env={"ORG": "lm-studio"})
    assert proc.returncode == 0, proc.stderr
    saved = json.loads(open(path).read())
    assert saved["messages"][-1] == {"role": "assistant", "content": "org lm-studio, key ***."}


# ---- an MCP server's env: only its secrets ---------------------------------------------------

def mcp_config(env, servers: dict) -> None:
    """Write SERVERS as the mcp.json of ENV's config folder."""
    folder = Path(env["XDG_CONFIG_HOME"]) / "chatpipe"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mcp.json").write_text(json.dumps({"mcpServers": servers}))


def run_send(env, *args) -> subprocess.CompletedProcess:
    """``chatpipe send ARGS`` without a controlling terminal."""
    return subprocess.run([sys.executable, "-m", "chatpipe", "send", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60, start_new_session=True,
                          stdin=subprocess.DEVNULL)


def test_an_mcp_env_redacts_its_token_and_never_its_log_level(server, env, tmp_path):
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    mcp_config(env, {"fx": {"command": sys.executable, "args": [str(TESTS / "mcp_fixture_server.py")],
                            "env": {"LOG_LEVEL": "info", "API_TOKEN": TOKEN}}})
    said = f"level info, more info; token {TOKEN} (info)"
    url = server.add("/m", [tool_call_answer("echo", "c1", json.dumps({"text": said})),
                            text_answer(f"The info is: {said}")])
    path = template(tmp_path, url, {})
    proc = run_send(env, path, "--save", "--tools", "mcp:fx", "--yes", "--output", "ndjson",
                    "-m", "echo the info")
    assert proc.returncode == 0, proc.stderr
    events = ndjson(proc.stdout)
    result = next(e for e in events if e["type"] == "tool_result")
    assert result["content"] == "level info, more info; token *** (info)"
    assert "".join(e["content"] for e in events if e["type"] == "delta") == (
        "The info is: level info, more info; token *** (info)")
    assert_clean(proc.stdout + proc.stderr, TOKEN)
    saved = open(path).read()
    assert_clean(saved, TOKEN)
    assert json.loads(saved)["messages"][-1]["content"] == (
        "The info is: level info, more info; token *** (info)")
    # The model itself gets the tool's real result: redaction is for what is shown.
    assert server.requests[-1]["body"]["messages"][-1]["content"] == said


def test_a_server_that_says_its_token_on_stderr_and_dies_is_quoted_redacted(server, env, tmp_path):
    """The warning that names a server that failed to start quotes its last
    stderr line: its token redacted, its log level as it is."""
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    (tmp_path / "dying.py").write_text(
        'import os, sys\nprint("level " + os.environ["LOG_LEVEL"] + ", token " + os.environ["API_TOKEN"],'
        ' file=sys.stderr)\nsys.exit(3)\n')
    mcp_config(env, {"dying": {"command": sys.executable, "args": [str(tmp_path / "dying.py")],
                               "env": {"API_TOKEN": TOKEN, "LOG_LEVEL": "info"}}})
    path = template(tmp_path, server.add("/m", text_answer("Done.")), {})
    for output in ("text", "ndjson"):
        proc = run_send(env, path, "--tools", "mcp:dying", "--yes", "--output", output, "-m", "go")
        assert proc.returncode == 0, proc.stderr
        assert "failed to start" in proc.stdout + proc.stderr
        assert "(its stderr: level info, token ***)" in proc.stdout + proc.stderr
        assert_clean(proc.stdout + proc.stderr, TOKEN)


# ---- stderr: the SDK's logging of what a server printed ---------------------------------------

#: An MCP server that first prints non-JSON lines on stdout, one short
#: (quoted whole by the SDK's log) and one long (quoted cut short), both
#: holding its env secret, then serves the fixture server's tools.
NOISY = """\
import os, runpy, sys
token = os.environ["API_TOKEN"]
print("token " + token, flush=True)
print("a long line, the token " + token + " " + "x" * 80, flush=True)
sys.argv = sys.argv[:1]
runpy.run_path(sys.argv[0].replace("noisy.py", "fixture.py"), run_name="__main__")
"""


def test_a_server_printing_its_secret_on_stdout_never_puts_it_on_chatpipes_stderr(server, env,
                                                                                 tmp_path):
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    (tmp_path / "noisy.py").write_text(NOISY)
    (tmp_path / "fixture.py").write_text((TESTS / "mcp_fixture_server.py").read_text())
    mcp_config(env, {"noisy": {"command": sys.executable, "args": [str(tmp_path / "noisy.py")],
                               "env": {"API_TOKEN": TOKEN, "LOG_LEVEL": "info"}}})
    url = server.add("/m", [tool_call_answer("echo", "c1", '{"text": "hello"}'),
                            text_answer("Done.")])
    path = template(tmp_path, url, {})
    for output in ("text", "ndjson"):
        proc = run_send(env, path, "--tools", "mcp:noisy", "--yes", "--output", output,
                        "-m", "go")
        assert proc.returncode == 0, proc.stderr
        assert "Failed to parse JSONRPC message" in proc.stderr      # the SDK's log is there
        assert "input_value='token ***'" in proc.stderr              # and its quote, redacted
        assert_clean(proc.stdout + proc.stderr, TOKEN)
    plain = server.add("/plain", text_answer("Done."))
    proc = subprocess.run([sys.executable, "-m", "chatpipe", "serve"], cwd=ROOT, env=env,
                          input=json.dumps({"id": 1, "template": path, "url": plain, "mcp": ["noisy"],
                                            "messages": [{"role": "user", "content": "go"}]}) + "\n",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert ndjson(proc.stdout)[-1]["type"] == "done"
    assert "Failed to parse JSONRPC message" in proc.stderr
    assert_clean(proc.stdout + proc.stderr, TOKEN)


def test_every_way_of_writing_on_stderr_is_redacted(env, tmp_path):
    """Logging, warnings, a thread's uncaught exception, the main thread's
    uncaught traceback, a print and a direct write to ``sys.stderr.buffer``,
    after ``chatpipe.cli.main`` ran and a template's key was filled."""
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"chatpipe": {"url": "http://127.0.0.1:9/v1",
                                             "headers": {"Authorization": "Bearer ${env:K}"}},
                                "model": "m", "messages": []}))
    program = f"""
import logging, pathlib, sys, threading, warnings
from chatpipe import cli, templates
cli.main(["templates", "dir"])
templates.fill(templates.load_file(pathlib.Path({str(path)!r})), env={{"K": {TOKEN!r}}})
logging.getLogger("mcp.client.stdio").error("a line %s", {TOKEN!r})
logging.getLogger("x").exception("cut %s...", {TOKEN[:12]!r})
warnings.warn("warned " + {TOKEN!r})
def fail():
    raise ValueError({TOKEN!r})
t = threading.Thread(target=fail)
t.start()
t.join()
print("printed", {TOKEN!r}, file=sys.stderr)
sys.stderr.buffer.write(b"bytes {TOKEN}\\n")
sys.stderr.write("partial " + {TOKEN!r})
raise RuntimeError("uncaught " + {TOKEN!r})
"""
    proc = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    for said in ("a line ***", "cut ***...", "warned ***", "ValueError: ***", "printed ***",
                 "bytes ***", "partial ***", "RuntimeError: uncaught ***"):
        assert said in proc.stderr, proc.stderr
    assert_clean(proc.stdout + proc.stderr, TOKEN)


# ---- the rule -----------------------------------------------------------------------------

#: Values that are no secrets: short, of one kind of character, or words
#: with spaces.
NOT_SECRETS = st.one_of(
    st.sampled_from(PLACEHOLDERS + ["info", "debug", "none", "not-needed", "token-abc123",
                                    "sk-1234", "correct-horse-battery-staple", "Bearer x"]),
    st.text(min_size=1, max_size=15),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_.", min_size=1, max_size=60),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ-_", min_size=1, max_size=60),
    st.text(alphabet="0123456789-", min_size=1, max_size=60),
    st.lists(st.text(alphabet="abcdefgh12", min_size=1, max_size=15), min_size=1,
             max_size=6).map(" ".join),
)


@settings(max_examples=300, deadline=None)
@given(value=NOT_SECRETS, name=st.sampled_from(["API_KEY", "Authorization", "LOG_LEVEL", None]),
       before=st.text(max_size=30), after=st.text(max_size=30))
def test_redacting_text_with_values_that_are_no_secrets_never_changes_it(tmp_path_factory, value,
                                                                         name, before, after):
    """Whatever the text around it, a value that is no secret, filled into a
    template's header (or under NAME in an MCP server's env or headers:
    :func:`chatpipe.redaction.secrets`, which :mod:`chatpipe.mcp_host`
    applies), changes nothing that chatpipe writes: events (whole and in
    runs) and stderr lines."""
    from chatpipe import redaction, templates
    from chatpipe.protocol import EventLines, LineWriter

    path = tmp_path_factory.mktemp("rule") / "t.json"
    path.write_text(json.dumps({"chatpipe": {"url": "http://127.0.0.1:9/v1",
                                             "headers": {"X": "${env:V}"}},
                                "model": "m", "messages": []}))
    collected = templates.fill(templates.load_file(path), env={"V": value}).secrets
    if name is not None:
        collected += redaction.secrets(value, name)
    text = before + value + after + value
    assert redaction.redact(text, collected) == text
    assert redaction.redact_pieces(text, collected) == text
    out = io.BytesIO()
    output = EventLines(LineWriter(out))
    output.secrets.extend(collected)
    output.emit({"type": "delta", "content": text[:len(text) // 2]})
    output.emit({"type": "delta", "content": text[len(text) // 2:]})
    output.emit({"type": "done", "finish_reason": "stop"})
    output.flush()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert "".join(e.get("content", "") for e in events) == text


@settings(max_examples=200, deadline=None)
@given(key=st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
                   min_size=16, max_size=60).filter(
                       lambda k: sum(map(bool, (any(c.islower() for c in k), any(c.isupper() for c in k),
                                                any(c.isdigit() for c in k)))) >= 2),
       before=st.text(max_size=30))
def test_a_real_looking_key_is_always_redacted(key, before):
    from chatpipe import redaction

    assert redaction.secrets(f"Bearer {key}", "Authorization") == [key]
    assert redaction.secrets(key) == [key]
    assert key not in redaction.redact(before + key, redaction.secrets(key))
