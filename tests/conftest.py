"""Shared fixtures: a replay server on 127.0.0.1 and a way to run the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from replay_server import ReplayServer

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
STREAMS = TESTS / "streams"
EXPECTED = json.loads((STREAMS / "expected.json").read_text(encoding="utf-8"))

#: A recognisable fake API key; tests assert it never shows up in output.
FAKE_KEY = "sk-test-CHATPIPE-SECRET-0123456789abcdef"


@pytest.fixture
def server():
    """A :class:`ReplayServer` running for one test."""
    with ReplayServer() as srv:
        yield srv


@pytest.fixture
def env(tmp_path):
    """Environment for chatpipe subprocesses: private config dir, fake key."""
    e = dict(os.environ)
    e["XDG_CONFIG_HOME"] = str(tmp_path / "config")
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


def ndjson(stdout: str) -> list[dict]:
    """Parse protocol output: one JSON object per line, every line."""
    return [json.loads(line) for line in stdout.splitlines()]
