"""The byte form of event lines that readers' fast paths rely on.

Emacs reads the most common line, a ``delta`` or ``reasoning``, without
parsing it as an object (``chatpipe--text-line-regexp`` in
elisp/chatpipe-events.el): it matches the line's start and reads the JSON
string after ``"content":``, and nothing may follow that string but ``}``.
docs/protocol.md ("Key order") promises that form; these tests hold the
backend to it, in both front ends, for every recording in tests/streams/
(replayed over real HTTP on 127.0.0.1, split into 7-byte reads), so that
a change of the serializer or of an event's fields fails here rather than
as a slower (or, if the reader trusted a wrong order, wrong) Emacs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import EXPECTED, KEYS, ROOT
from replay_server import ReplayServer

TEMPLATE = {"anthropic": "anthropic", "gemini": "gemini", "ollama": "ollama",
            "openai-responses": "openai-responses"}

#: The line of text as docs/protocol.md promises it: no spaces, the id (serve
#: only) first, then type, then content, last; the same pattern as Emacs'.
TEXT_LINE = re.compile(
    rb'\A\{(?:"id":"[-_.:A-Za-z0-9]+",)?"type":"(?:delta|reasoning)","content":"')


def template_of(name: str) -> str:
    return TEMPLATE.get(name.split("/")[0], "openai")


def check_lines(raw: bytes, serve: bool) -> int:
    """Assert the documented form of every line of RAW; return the number of
    text lines seen."""
    texts = 0
    assert raw.endswith(b"\n")
    for line in raw.split(b"\n")[:-1]:
        event = json.loads(line)
        keys = list(event)
        if serve:
            if event["type"] == "ready":
                assert keys[0] == "type"
                continue
            assert keys[:2] == ["id", "type"], line
        else:
            assert keys[0] == "type", line
        if event["type"] in ("delta", "reasoning"):
            texts += 1
            assert TEXT_LINE.match(line), line
            assert keys[-1] == "content" and len(keys) == (3 if serve else 2), line
            # The content's JSON string is the rest of the line, then "}".
            rest = line[TEXT_LINE.match(line).end() - 1:]
            assert rest.endswith(b"}")
            assert json.loads(rest[:-1]) == event["content"]
    return texts


@pytest.fixture(scope="module")
def replay():
    with ReplayServer() as srv:
        yield srv


def test_send_writes_text_lines_in_the_documented_order(replay, env):
    texts = 0
    for name in sorted(EXPECTED):
        proc = subprocess.run(
            [sys.executable, "-m", "chatpipe", "send", template_of(name), "--url",
             f"{replay.url}/replay/{name}?split=7", "--output", "ndjson", "-m", "hi"],
            capture_output=True, cwd=ROOT, env={**env, **KEYS}, timeout=60)
        assert proc.stdout, proc.stderr
        texts += check_lines(proc.stdout, serve=False)
    assert texts > len(EXPECTED)          # the recordings have text to check


def test_serve_writes_text_lines_in_the_documented_order(replay, env):
    ids = [f"emacs-{i}" for i in range(len(EXPECTED))]
    lines = [json.dumps({"id": rid, "template": template_of(name),
                         "url": f"{replay.url}/replay/{name}?split=7",
                         "messages": [{"role": "user", "content": "hi"}], "env": KEYS})
             for rid, name in zip(ids, sorted(EXPECTED))]
    proc = subprocess.run([sys.executable, "-m", "chatpipe", "serve"], cwd=ROOT, env=env,
                          input=("\n".join(lines) + "\n").encode(), capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert check_lines(proc.stdout, serve=True) > len(EXPECTED)


def test_an_id_outside_the_fast_form_still_comes_first(replay, env):
    """An id the fast path does not take (a quote, a space, a number) is
    still the first key, so a reader falls back to parsing the object."""
    name = "openai-chat/text-with-usage.sse"
    lines = [json.dumps({"id": rid, "template": "openai",
                         "url": f"{replay.url}/replay/{name}",
                         "messages": [{"role": "user", "content": "hi"}], "env": KEYS})
             for rid in ('a "quoted" id', 7)]
    proc = subprocess.run([sys.executable, "-m", "chatpipe", "serve"], cwd=ROOT, env=env,
                          input=("\n".join(lines) + "\n").encode(), capture_output=True,
                          timeout=60)
    seen = set()
    for line in proc.stdout.split(b"\n")[:-1]:
        event = json.loads(line)
        if event["type"] != "ready":
            assert list(event)[:2] == ["id", "type"]
            assert not TEXT_LINE.match(line)
            seen.add(event["id"])
    assert seen == {'a "quoted" id', 7}
