"""Shared fixtures: a replay server on 127.0.0.1 and a way to run the CLI."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from replay_server import ReplayServer

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
STREAMS = TESTS / "streams"
EXPECTED = json.loads((STREAMS / "expected.json").read_text(encoding="utf-8"))

#: A recognisable fake API key; tests assert it never shows up in output.
FAKE_KEY = "sk-test-CHATPIPE-SECRET-0123456789abcdef"

#: FAKE_KEY for the API key variable of every bundled template that needs one.
KEYS = {name: FAKE_KEY for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY")}


@pytest.fixture
def server():
    """A :class:`ReplayServer` running for one test."""
    with ReplayServer() as srv:
        yield srv


@pytest.fixture
def env(tmp_path, tmp_path_factory):
    """Environment for chatpipe subprocesses: private config and cache dirs
    (nothing read from or left in the user's home; the cache, where --save
    keeps its lock files, outside TMP_PATH), fake key."""
    e = dict(os.environ)
    e["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    e["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    e["OPENAI_API_KEY"] = FAKE_KEY
    e["PYTHONUNBUFFERED"] = "0"
    return e


@pytest.fixture
def chatpipe(env):
    """Run ``python -m chatpipe ARGS`` and return the CompletedProcess (text)."""

    def run(*args, input: str | None = None, extra_env: dict | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "chatpipe", *args], input=input if input is not None else "",
            capture_output=True, text=True, encoding="utf-8", timeout=timeout,
            env={**env, **(extra_env or {})}, cwd=ROOT)

    return run


class ListSink:
    """A protocol sink that keeps the events, for in-process stream tests."""

    def __init__(self):
        self.events: list[dict] = []

    def emit(self, event: dict) -> None:
        self.events.append(event)

    def flush(self) -> None:
        pass

    def of(self, kind: str) -> list[dict]:
        """The events of type KIND."""
        return [e for e in self.events if e["type"] == kind]

    def text(self) -> str:
        """The answer's text: the delta contents joined."""
        return "".join(e["content"] for e in self.of("delta"))


def run_stream_in_process(request) -> tuple["ListSink", Exception | None, float]:
    """Run REQUEST with chatpipe's stream loop in this process.

    Returns (sink with the events, the StreamError raised or None, seconds).
    """
    from chatpipe import stream
    from chatpipe.errors import StreamError

    sink = ListSink()
    start = time.monotonic()
    try:
        stream.run(request, sink)
    except StreamError as err:
        return sink, err, time.monotonic() - start
    return sink, None, time.monotonic() - start


def ndjson(stdout: str) -> list[dict]:
    """Parse protocol output: one JSON object per line, every line."""
    return [json.loads(line) for line in stdout.splitlines()]


# ---- MCP servers ----------------------------------------------------------------

#: The command of tests/mcp_fixture_server.py.
FIXTURE = [sys.executable, str(TESTS / "mcp_fixture_server.py")]


@pytest.fixture
def mcp_env(env, tmp_path):
    """ENV with an mcp.json of the time server, the fixture server (``fx``,
    with a 2 s call timeout) and a server that cannot start, and a private
    cache folder (the servers' stderr logs)."""
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    folder = tmp_path / "config" / "chatpipe"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mcp.json").write_text(json.dumps({"mcpServers": {
        "time": {"command": sys.executable, "args": ["-m", "mcp_server_time",
                                                     "--local-timezone", "UTC"]},
        "fx": {"command": FIXTURE[0], "args": FIXTURE[1:], "timeout": 2,
               "autoApprove": ["pid"], "env": {"FX_TOKEN": "fx-secret-token-42"}},
        "broken": {"command": str(tmp_path / "no-such-server")},
    }}))
    return env


# ---- chatpipe serve ------------------------------------------------------------

class Serve:
    """A ``chatpipe serve`` subprocess; lines read in a thread."""

    def __init__(self, env):
        self.proc = subprocess.Popen([sys.executable, "-m", "chatpipe", "serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, cwd=ROOT)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), json.loads(line)))
        self.lines.put((time.monotonic(), None))

    def send(self, obj):
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode() + b"\n"
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
        return time.monotonic()

    def until(self, pred, timeout=15):
        """Events read until one matches PRED (inclusive), as (time, event)."""
        got = []
        while True:
            t, event = self.lines.get(timeout=timeout)
            assert event is not None, f"serve ended: {got}"
            got.append((t, event))
            if pred(event):
                return got

    def finished(self, *ids, timeout=15):
        """Events until every id in IDS has its done/error; by id."""
        left, by_id = set(ids), {}
        while left:
            t, event = self.lines.get(timeout=timeout)
            assert event is not None
            by_id.setdefault(event.get("id"), []).append(event)
            if event["type"] in ("done", "error"):
                left.discard(event.get("id"))
        return by_id

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=15)
        return self.proc.returncode


@pytest.fixture
def serve(env):
    s = Serve(env)
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait()


def req(rid, url, template="openai", **extra):
    return {"id": rid, "template": template, "url": url,
            "messages": [{"role": "user", "content": f"question {rid}"}], **extra}


def text_of(events):
    return "".join(e["content"] for e in events if e["type"] == "delta")
