"""MCP servers' tools, started and called by chatpipe through the MCP SDK.

A real MCP server nobody here wrote, ``mcp-server-time`` from the package
index, is started over stdio and its ``get_current_time`` tool called in a
scripted conversation (a local HTTP server plays the model); a small
server built here with the SDK (tests/mcp_fixture_server.py) gives the
deterministic cases: a slow tool, a failing tool, a server that dies, one
that cannot start.  Through ``chatpipe serve`` (confirmations asked of the
client) and ``chatpipe send --tools`` (on the terminal, or ``--yes``).
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import FAKE_KEY, FIXTURE, ROOT, Serve, ndjson
from replay_server import Reply, error_reply
from test_tool_loop import text_answer, tool_call_answer

@pytest.fixture
def mcp_serve(mcp_env):
    s = Serve(mcp_env)
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait()


def send(env, *args, timeout=60, **kw) -> subprocess.CompletedProcess:
    """``chatpipe send ARGS`` without a controlling terminal."""
    return subprocess.run([sys.executable, "-m", "chatpipe", "send", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout, start_new_session=True,
                          stdin=subprocess.DEVNULL, **kw)


def time_model(server) -> str:
    """A scripted model: it asks get_current_time for UTC, then answers only
    if the follow-up carries the time server's real answer."""
    def check(body: dict) -> Reply:
        last = body["messages"][-1]
        try:
            result = json.loads(last["content"])
            when = datetime.datetime.fromisoformat(result["datetime"])
            now = datetime.datetime.now(datetime.timezone.utc)
            good = (last["role"] == "tool" and last["tool_call_id"] == "call_time"
                    and result["timezone"] == "UTC" and abs((now - when).total_seconds()) < 120)
        except (ValueError, KeyError, TypeError):
            good = False
        return text_answer(f"It is {result['datetime']}.") if good else error_reply(400)

    return server.add("/time", [tool_call_answer("get_current_time", "call_time",
                                                 '{"timezone": "UTC"}'), check])


def test_mcp_server_time_answers_a_scripted_conversation(server, mcp_env):
    url = time_model(server)
    proc = send(mcp_env, "openai", "--url", url, "--tools", "mcp:time", "--yes",
                "--output", "ndjson", "-m", "What time is it in UTC?")
    assert proc.returncode == 0, proc.stderr
    events = ndjson(proc.stdout)
    offered = {t["function"]["name"] for t in server.requests[0]["body"]["tools"]}
    assert offered == {"get_current_time", "convert_time"}
    result = next(e for e in events if e["type"] == "tool_result")
    assert result["is_error"] is False and json.loads(result["content"])["timezone"] == "UTC"
    assert events[-1] == {"type": "done", "finish_reason": "stop", "steps": 2}
    assert "".join(e["content"] for e in events if e["type"] == "delta").startswith("It is 20")


def test_send_says_what_each_call_did_on_stderr_and_the_answer_on_stdout(server, mcp_env):
    url = time_model(server)
    proc = send(mcp_env, "openai", "--url", url, "--tools", "mcp:time", "--yes",
                "-m", "What time is it in UTC?")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("It is 20") and proc.stdout.endswith(".\n")
    assert proc.stderr.startswith('chatpipe: tool get_current_time({"timezone": "UTC"}) result: '
                                  '{ "timezone": "UTC", "datetime": "20')


def test_serve_asks_the_client_and_keeps_servers_across_requests(server, mcp_serve):
    url = server.add("/m", [tool_call_answer("pid", "c1"), text_answer("a"),
                            tool_call_answer("echo", "c2", '{"text": "hi"}'), text_answer("b"),
                            tool_call_answer("echo", "c3", '{"text": "again"}'), text_answer("c"),
                            tool_call_answer("pid", "c4"), text_answer("d")])
    pids = []
    for rid in ("1", "2", "3", "4"):
        mcp_serve.send({"id": rid, "template": "openai", "url": url, "mcp": ["fx"],
                        "env": {"OPENAI_API_KEY": FAKE_KEY},
                        "messages": [{"role": "user", "content": "go"}]})
        while True:
            event = mcp_serve.until(lambda e: e.get("id") == rid)[-1][1]
            if event["type"] == "tool_request":      # confirm: once, then always
                assert event["confirm"] is True and event["source"] == "mcp:fx"
                decision = "always" if rid == "2" else "once"
                mcp_serve.send({"id": rid, "tool_confirm": {"call_id": event["call_id"],
                                                            "decision": decision}})
            elif event["type"] == "tool_result":
                pids.append(event["content"]) if rid in ("1", "4") else None
                assert not event["is_error"], event
            elif event["type"] in ("done", "error"):
                assert event["type"] == "done", event
                break
    assert pids[0] == pids[1]                      # the same server process, kept running
    asked = [r for r in server.requests if r["body"]["messages"][-1]["role"] == "tool"]
    assert len(asked) == 4
    assert mcp_serve.close() == 0


def test_a_failing_tool_and_a_slow_one_are_error_results(server, mcp_env):
    url = server.add("/m", [tool_call_answer("fail", "c1", '{"message": "disk full"}'),
                            tool_call_answer("slow", "c2", '{"seconds": 30}'), text_answer("ok")])
    started = time.monotonic()
    proc = send(mcp_env, "openai", "--url", url, "--tools", "mcp:fx", "--yes",
                "--output", "ndjson", "-m", "go")
    assert proc.returncode == 0, proc.stderr
    results = [e for e in ndjson(proc.stdout) if e["type"] == "tool_result"]
    assert [r["is_error"] for r in results] == [True, True]
    assert results[1]["content"] == "MCP server 'fx': the tool 'slow' did not answer within 2 seconds"
    assert time.monotonic() - started < 20
    assert ndjson(proc.stdout)[-1]["type"] == "done"


def test_a_server_that_dies_mid_call_is_named_and_the_chat_goes_on(server, mcp_serve):
    url = server.add("/m", [tool_call_answer("pid", "c0"), tool_call_answer("die", "c1"),
                            text_answer("It died."), tool_call_answer("pid", "c2"),
                            text_answer("Back.")])
    pids = []
    for rid in ("a", "b"):
        mcp_serve.send({"id": rid, "template": "openai", "url": url, "mcp": ["fx"],
                        "env": {"OPENAI_API_KEY": FAKE_KEY},
                        "messages": [{"role": "user", "content": "go"}]})
        while True:
            event = mcp_serve.until(lambda e: e.get("id") == rid)[-1][1]
            if event["type"] == "tool_request":
                mcp_serve.send({"id": rid, "tool_confirm": {"call_id": event["call_id"],
                                                            "decision": "once"}})
            elif event["type"] == "tool_result" and event["name"] == "die":
                assert event["is_error"] and event["content"].startswith("MCP server 'fx' died")
            elif event["type"] == "tool_result":
                pids.append(event["content"])
            elif event["type"] in ("done", "error"):
                assert event["type"] == "done", event
                break
    assert len(pids) == 2 and pids[0] != pids[1]          # started again by the next request


def test_a_server_that_cannot_start_is_a_warning_and_the_chat_goes_on(server, mcp_env):
    url = server.add("/m", text_answer("Without tools."))
    proc = send(mcp_env, "openai", "--url", url, "--tools", "mcp:broken", "--output", "ndjson",
                "-m", "go")
    assert proc.returncode == 0, proc.stderr
    events = ndjson(proc.stdout)
    assert events[0]["type"] == "warning" and events[0]["server"] == "broken"
    assert events[0]["message"].startswith("MCP server 'broken' failed to start: ")
    assert "tools" not in server.requests[-1]["body"]
    assert events[-1] == {"type": "done", "finish_reason": "stop"}


def test_an_unknown_server_is_a_usage_error(mcp_env):
    proc = send(mcp_env, "openai", "--tools", "mcp:nope", "-m", "go")
    assert proc.returncode == 2
    assert "no MCP server named 'nope'" in proc.stderr and "configured: time, fx, broken" in proc.stderr


def test_without_a_terminal_calls_are_denied_with_a_reason(server, mcp_env):
    url = server.add("/m", [tool_call_answer("echo", "c1", '{"text": "x"}'), text_answer("OK.")])
    proc = send(mcp_env, "openai", "--url", url, "--tools", "mcp:fx", "--output", "ndjson",
                "-m", "go")
    result = next(e for e in ndjson(proc.stdout) if e["type"] == "tool_result")
    assert result["denied"] is True and "had no terminal" in result["content"]
    assert "had no terminal" in server.requests[-1]["body"]["messages"][-1]["content"]


def test_the_terminal_prompt_takes_a_no_and_a_reason(server, mcp_env):
    import fcntl
    import pty
    import termios

    url = server.add("/m", [tool_call_answer("echo", "c1", '{"text": "x"}'), text_answer("OK.")])
    master, slave = pty.openpty()

    def controlling_terminal():
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "chatpipe", "send", "openai", "--url", url,
                             "--tools", "mcp:fx", "--output", "ndjson", "-m", "go"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=mcp_env, cwd=ROOT, preexec_fn=controlling_terminal,
                            pass_fds=(slave,))
    os.close(slave)
    seen = b""

    def read_until(text: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 30
        while text not in seen and time.monotonic() < deadline:
            seen += os.read(master, 1024)

    read_until(b"[n]o: ")
    assert b'run echo of mcp:fx with these arguments:\r\n{\r\n  "text": "x"\r\n}' in seen
    os.write(master, b"n\n")
    read_until(b"may be empty)? ")
    os.write(master, b"not today\n")
    out, err = proc.communicate(timeout=30)
    os.close(master)
    result = next(e for e in ndjson(out.decode()) if e["type"] == "tool_result")
    assert result["content"] == "The user denied this tool call: not today"


def test_sigint_during_a_tool_keeps_the_whole_rounds_in_the_save(server, mcp_env, tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps({"chatpipe": {"api": "openai-chat", "url": server.url + "/m",
                                             "max_retries": 0},
                                "model": "m", "stream": True, "messages": []}))
    server.add("/m", [tool_call_answer("echo", "c1", '{"text": "fx-secret-token-42"}'),
                      tool_call_answer("slow", "c2", '{"seconds": 30}'), text_answer("never")])
    proc = subprocess.Popen([sys.executable, "-m", "chatpipe", "send", str(path), "--save",
                             "--tools", "mcp:fx", "--yes", "--output", "ndjson", "-m", "go"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=mcp_env, cwd=ROOT,
                            start_new_session=True, stdin=subprocess.DEVNULL)
    while len(server.requests) < 2:
        time.sleep(0.05)
    time.sleep(0.5)                                  # the slow tool is running
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and time.monotonic() - sent < 5
    events = ndjson(out.decode())
    assert events[-1]["aborted"] is True
    assert "fx-secret-token-42" not in out.decode()          # a server's env is a secret
    messages = json.loads(path.read_text())["messages"]
    assert messages == [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "echo",
                                                          "arguments": '{"text": "***"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "***"}]
    assert "was not saved" in err.decode()


def test_a_streamable_http_server_with_headers(server, mcp_env, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = subprocess.Popen([*FIXTURE, "--http", str(port)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        config = tmp_path / "config" / "chatpipe" / "mcp.json"
        config.write_text(json.dumps({"mcpServers": {"web": {
            "url": f"http://127.0.0.1:{port}/mcp", "headers": {"X-Token": "web-Secret-Token-99"}}}}))
        url = server.add("/m", [tool_call_answer("echo", "c1", '{"text": "web-Secret-Token-99 ok"}'),
                                text_answer("Done.")])
        proc = send(mcp_env, "openai", "--url", url, "--tools", "mcp:web", "--yes",
                    "--output", "ndjson", "-m", "go")
    finally:
        web.terminate()
        web.wait(10)
    assert proc.returncode == 0, proc.stderr
    result = next(e for e in ndjson(proc.stdout) if e["type"] == "tool_result")
    assert result["content"] == "*** ok" and not result["is_error"]      # headers are secrets
    assert "web-Secret-Token-99" not in proc.stdout
    assert server.requests[-1]["body"]["messages"][-1]["content"] == "web-Secret-Token-99 ok"


def test_mcp_list_names_the_servers_and_their_transport_never_their_secrets(chatpipe, mcp_env,
                                                                           tmp_path):
    config = tmp_path / "config" / "chatpipe" / "mcp.json"
    servers = json.loads(config.read_text())["mcpServers"]
    servers["web"] = {"url": "http://127.0.0.1:1/mcp", "headers": {"X-Token": "web-secret-99"},
                      "description": "The docs", "disabled": True}
    config.write_text(json.dumps({"mcpServers": servers}))
    proc = chatpipe("mcp", "list", "--json", extra_env=mcp_env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [
        {"name": "time", "transport": "stdio", "disabled": False},
        {"name": "fx", "transport": "stdio", "disabled": False},
        {"name": "broken", "transport": "stdio", "disabled": False},
        {"name": "web", "transport": "http", "disabled": True, "description": "The docs"}]
    text = chatpipe("mcp", "list", extra_env=mcp_env)
    assert text.returncode == 0
    assert text.stdout.splitlines() == ["time    stdio", "fx      stdio", "broken  stdio",
                                        "web     http   (disabled)  The docs"]
    for out in (proc.stdout, text.stdout):
        assert "secret" not in out and "mcp_server_time" not in out


def test_mcp_list_without_a_config_lists_none_and_a_broken_one_says_where(chatpipe, tmp_path):
    proc = chatpipe("mcp", "list", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout) == []
    config = tmp_path / "config" / "chatpipe" / "mcp.json"
    config.parent.mkdir(parents=True)
    config.write_text('{"mcpServers": {"x": {"args": []}}}')
    proc = chatpipe("mcp", "list", "--json")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (f"chatpipe: error: {config}: MCP server 'x': needs a \"command\" "
                           "(stdio) or a \"url\" (streamable HTTP)\n")
