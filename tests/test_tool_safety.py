"""Tools that ask the right question (issue 17).

Two real MCP servers run from one fixture built with the SDK
(tests/mcp_fixture_odd.py, ``trusted`` and ``other``: both have a tool
``get_data``; one is named ``files.read``, one ``read file``, one has 70
characters; ``big`` returns 5 MB), called by scripted models on the
replay server, through ``chatpipe send --tools`` (the question asked on a
pseudo-terminal, as a user sees it) and ``chatpipe serve``:

- "always" approves one tool of one server, for one chat (serve's
  ``chat``; one run of ``send``), never a name for every server;
- the question shows the whole arguments, pretty-printed, and no bidi
  control or control character as it is;
- names the APIs refuse are offered valid, and a call reaches its tool;
- a big result is capped, and says so, in what the model gets.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import subprocess
import sys
import termios
import time

import pytest

from conftest import FAKE_KEY, ROOT, TESTS, Serve, ndjson
from mcp_fixture_odd import LONG_NAME
from test_tool_loop import text_answer, tool_call_answer

#: The fixture's command.
ODD = [sys.executable, str(TESTS / "mcp_fixture_odd.py")]

#: What the APIs take as a tool name.
VALID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@pytest.fixture
def odd_env(mcp_env, tmp_path):
    """MCP_ENV whose mcp.json has two servers of the odd fixture,
    ``trusted`` and ``other``."""
    config = tmp_path / "config" / "chatpipe" / "mcp.json"
    servers = json.loads(config.read_text())["mcpServers"]
    for name in ("trusted", "other"):
        servers[name] = {"command": ODD[0], "args": ODD[1:], "env": {"FX_SERVER": name}}
    config.write_text(json.dumps({"mcpServers": servers}))
    return mcp_env


@pytest.fixture
def odd_serve(odd_env):
    s = Serve(odd_env)
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait()


class Terminal:
    """``chatpipe send ARGS`` with a pseudo-terminal as its controlling
    terminal (where it asks), stdout and stderr piped."""

    def __init__(self, env, *args):
        self.master, slave = pty.openpty()

        def controlling_terminal():
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen([sys.executable, "-m", "chatpipe", "send", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
                                     preexec_fn=controlling_terminal, pass_fds=(slave,))
        os.close(slave)
        self.seen = b""

    def ask(self, answer: bytes, prompt: bytes = b"[n]o: ") -> bytes:
        """Wait for the next PROMPT; type ANSWER; return what the terminal
        showed since the last question."""
        start = len(self.seen)
        deadline = time.monotonic() + 30
        while prompt not in self.seen[start:] and time.monotonic() < deadline:
            try:
                self.seen += os.read(self.master, 4096)
            except OSError:                     # the command ended without asking
                break
        assert prompt in self.seen[start:], self.seen[start:]
        os.write(self.master, answer + b"\n")
        return self.seen[start:]

    def finish(self) -> tuple[str, str]:
        out, err = self.proc.communicate(timeout=60)
        try:
            while True:
                more = os.read(self.master, 4096)
                if not more:
                    break
                self.seen += more
        except OSError:
            pass
        os.close(self.master)
        return out.decode(), err.decode()


def results(stdout: str) -> dict[str, dict]:
    """The ``tool_result`` events of STDOUT, by call id."""
    return {e["call_id"]: e for e in ndjson(stdout) if e["type"] == "tool_result"}


# ---- "always" is one tool of one server, in one chat ------------------------------

def test_send_always_approves_one_tool_of_one_server_for_the_run(server, odd_env):
    url = server.add("/m", [tool_call_answer("get_data", "c1", '{"key": "k1"}'),
                            tool_call_answer("get_data_other", "c2", '{"key": "k2"}'),
                            tool_call_answer("get_data", "c3", '{"key": "k3"}'),
                            text_answer("Done.")])
    term = Terminal(odd_env, "openai", "--url", url, "--tools", "mcp:trusted,mcp:other",
                    "--output", "ndjson", "-m", "go")
    first = term.ask(b"a")
    assert b"run get_data of mcp:trusted?" in first
    assert b"[a]lways for get_data of mcp:trusted in this run" in first
    second = term.ask(b"y")                     # the same name of another server: asked
    assert b"run get_data of mcp:other (offered to the model as get_data_other)" in second
    assert b"[a]lways for get_data of mcp:other in this run" in second
    out, err = term.finish()
    assert term.proc.returncode == 0, err
    assert b"k3" not in term.seen                           # approved: not asked again
    got = results(out)
    assert [got[c]["content"] for c in ("c1", "c2", "c3")] == [
        "trusted data for k1", "other data for k2", "trusted data for k3"]


def _run(serve, rid, url, answers, **extra):
    """Send RID with the odd servers; answer each confirmation with the
    next decision of ANSWERS; return its tool_requests and results."""
    serve.send({"id": rid, "template": "openai", "url": url, "mcp": ["trusted", "other"],
                "env": {"OPENAI_API_KEY": FAKE_KEY},
                "messages": [{"role": "user", "content": "go"}], **extra})
    asked, done = [], []
    answers = list(answers)
    while True:
        event = serve.until(lambda e: e.get("id") == rid)[-1][1]
        if event["type"] == "tool_request":
            asked.append(event)
            serve.send({"id": rid, "tool_confirm": {"call_id": event["call_id"],
                                                    "decision": answers.pop(0)}})
        elif event["type"] == "tool_result":
            done.append(event)
        elif event["type"] in ("done", "error"):
            assert event["type"] == "done", event
            return asked, done


def test_serve_always_holds_for_one_tool_of_one_server_in_one_chat(server, odd_serve):
    url = server.add("/m", [
        tool_call_answer("get_data", "a1", '{"key": "1"}'), text_answer("1"),
        tool_call_answer("get_data", "a2", '{"key": "2"}'),
        tool_call_answer("get_data_other", "a3", '{"key": "3"}'), text_answer("2"),
        tool_call_answer("get_data", "b1", '{"key": "4"}'), text_answer("3"),
        tool_call_answer("get_data", "n1", '{"key": "5"}'), text_answer("4")])
    asked, done = _run(odd_serve, "r1", url, ["always"], chat="A")
    assert [(e["source"], e["tool"], e["name"]) for e in asked] == [
        ("mcp:trusted", "get_data", "get_data")]
    asked, done = _run(odd_serve, "r2", url, ["once"], chat="A")
    assert [(e["source"], e["tool"], e["name"]) for e in asked] == [
        ("mcp:other", "get_data", "get_data_other")]          # only the other server's
    assert [r["content"] for r in done] == ["trusted data for 2", "other data for 3"]
    asked, _ = _run(odd_serve, "r3", url, ["once"], chat="B")  # another chat: asked
    assert [e["call_id"] for e in asked] == ["b1"]
    asked, _ = _run(odd_serve, "r4", url, ["once"])            # no chat: asked
    assert [e["call_id"] for e in asked] == ["n1"]
    assert odd_serve.close() == 0


# ---- the question shows what runs ------------------------------------------------

#: Arguments whose end hides behind a long harmless field, with a bidi
#: override that turns what follows around on screen.
SNEAKY = {"note": "harmless " * 40 + "\u202eexe.txt\u202c", "ctl": "\u2066x\u2069\u200f\u061c",
          "path": "/home/user/.ssh/id_rsa"}
HIDDEN = ["\u202e", "\u202c", "\u2066", "\u2069", "\u200f", "\u061c", "\x1b"]


def test_the_terminal_question_shows_the_whole_arguments_and_no_bidi_or_controls(
        server, odd_env):
    arguments = json.dumps(SNEAKY, ensure_ascii=False)
    url = server.add("/m", [tool_call_answer("files_read", "c1", arguments),
                            text_answer("Done.")])
    term = Terminal(odd_env, "openai", "--url", url, "--tools", "mcp:trusted",
                    "--output", "ndjson", "-m", "go")
    question = term.ask(b"n").decode()
    term.ask(b"", b"may be empty)? ")
    out, err = term.finish()
    assert term.proc.returncode == 0, err
    assert "run files.read of mcp:trusted (offered to the model as files_read)" in question
    assert '  "path": "/home/user/.ssh/id_rsa"\r\n' in question        # whole, one a line
    assert '"note": "' + "harmless " * 40 + "\\u202eexe.txt\\u202c" in question
    assert '"ctl": "\\u2066x\\u2069\\u200f\\u061c"' in question
    for char in HIDDEN:
        assert char not in question
    assert results(out)["c1"]["denied"] is True


# ---- names the APIs refuse ---------------------------------------------------------

def test_odd_tool_names_are_offered_valid_and_calls_reach_their_tool(server, odd_env):
    url = server.add("/m", [tool_call_answer("files_read", "c1", '{"path": "/tmp/a"}'),
                            tool_call_answer("read_file", "c2", '{"path": "/tmp/b"}'),
                            tool_call_answer(LONG_NAME[:64], "c3"),
                            tool_call_answer("get_data_other", "c4", '{"key": "k"}'),
                            text_answer("Done.")])
    proc = subprocess.run([sys.executable, "-m", "chatpipe", "send", "openai", "--url", url,
                           "--tools", "mcp:trusted,mcp:other", "--yes", "--output", "ndjson",
                           "-m", "go"], capture_output=True, text=True, env=odd_env, cwd=ROOT,
                          timeout=60, stdin=subprocess.DEVNULL, start_new_session=True)
    assert proc.returncode == 0, proc.stderr
    offered = [t["function"]["name"] for t in server.requests[0]["body"]["tools"]]
    assert all(VALID.match(name) for name in offered), offered
    assert len(offered) == len(set(offered)) == 10          # 5 tools of each server
    assert {"files_read", "read_file", LONG_NAME[:64], "get_data", "get_data_other",
            "files_read_other"} <= set(offered)
    got = results(proc.stdout)
    assert [got[c]["content"] for c in ("c1", "c2", "c3", "c4")] == [
        "read /tmp/a", "read file /tmp/b", "long", "other data for k"]
    assert not any(r["is_error"] for r in got.values())


# ---- results have a size limit -----------------------------------------------------

def test_a_big_mcp_result_is_capped_and_says_so(server, odd_env, tmp_path):
    url = server.add("/m", [tool_call_answer("big", "c1"), text_answer("Big."),
                            tool_call_answer("big", "c2"), text_answer("Small.")])
    proc = subprocess.run([sys.executable, "-m", "chatpipe", "send", "openai", "--url", url,
                           "--tools", "mcp:trusted", "--yes", "--output", "ndjson", "-m", "go"],
                          capture_output=True, text=True, env=odd_env, cwd=ROOT, timeout=120,
                          stdin=subprocess.DEVNULL, start_new_session=True)
    assert proc.returncode == 0, proc.stderr
    content = results(proc.stdout)["c1"]["content"]
    assert content == "x" * 99_963 + "\n[truncated: 99963 of 5000000 bytes]"
    assert len(content) <= 100_000
    assert server.requests[1]["body"]["messages"][-1]["content"] == content
    template = tmp_path / "small.json"                     # the template's own limit
    template.write_text(json.dumps({"chatpipe": {"api": "openai-chat", "url": url,
                                                 "max_tool_result_bytes": 1000},
                                    "model": "m", "stream": True, "messages": []}))
    proc = subprocess.run([sys.executable, "-m", "chatpipe", "send", str(template),
                           "--tools", "mcp:trusted", "--yes", "--output", "ndjson", "-m", "go"],
                          capture_output=True, text=True, env=odd_env, cwd=ROOT, timeout=120,
                          stdin=subprocess.DEVNULL, start_new_session=True)
    assert proc.returncode == 0, proc.stderr
    assert results(proc.stdout)["c2"]["content"] == (
        "x" * 965 + "\n[truncated: 965 of 5000000 bytes]")


def test_a_big_client_result_is_capped_by_serve_too(server, serve):
    url = server.add("/m", [tool_call_answer("dump", "c1"), text_answer("OK.")])
    serve.send({"id": "r", "template": "openai", "url": url, "env": {"OPENAI_API_KEY": FAKE_KEY},
                "messages": [{"role": "user", "content": "go"}],
                "tools": [{"name": "dump", "description": "d",
                           "parameters": {"type": "object", "properties": {}}}]})
    event = serve.until(lambda e: e["type"] == "tool_request")[-1][1]
    serve.send({"id": "r", "tool_result": {"call_id": event["call_id"],
                                           "content": "é" * 300_000, "is_error": False}})
    result = serve.until(lambda e: e["type"] == "tool_result")[-1][1]
    assert result["content"] == "é" * 49_982 + "\n[truncated: 99964 of 600000 bytes]"
    assert len(result["content"].encode()) <= 100_000
    serve.until(lambda e: e["type"] == "done")
    assert server.requests[-1]["body"]["messages"][-1]["content"] == result["content"]
