"""One request path: ``send --output ndjson`` and ``serve`` give the same events.

Every recording in tests/streams/ is replayed over real HTTP on 127.0.0.1,
once through ``chatpipe send`` and once through a ``chatpipe serve``
process; the events must be identical but for the request ``id`` that serve
adds, including the failing recordings' ``error`` events.  Fake keys for
every provider are set, so each template's headers are filled.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import EXPECTED, KEYS, ROOT, ndjson
from replay_server import ReplayServer

#: Recording folder -> the bundled template of its API.
TEMPLATE = {"anthropic": "anthropic", "gemini": "gemini", "ollama": "ollama",
            "openai-responses": "openai-responses"}



def template_of(recording: str) -> str:
    return TEMPLATE.get(recording.split("/")[0], "openai")


def without_jitter(events: list[dict]) -> list[dict]:
    """EVENTS without what depends on timing: the random part of retry
    delays, and where text was split (text from one network read is joined
    into one event, and reads fall differently from run to run)."""
    out: list[dict] = []
    for e in events:
        e = {k: v for k, v in e.items() if not (e["type"] == "retry" and k == "delay")}
        if out and e["type"] in ("delta", "reasoning") and out[-1]["type"] == e["type"]:
            out[-1] = {**out[-1], "content": out[-1]["content"] + e["content"]}
        else:
            out.append(e)
    return out


@pytest.fixture(scope="module")
def replay():
    with ReplayServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def served(replay, tmp_path_factory):
    """Every recording through one ``chatpipe serve``: events by recording."""
    env = {**__import__("os").environ, "XDG_CONFIG_HOME": str(tmp_path_factory.mktemp("c"))}
    lines = []
    for i, name in enumerate(sorted(EXPECTED)):
        lines.append(json.dumps({
            "id": i, "template": template_of(name), "url": f"{replay.url}/replay/{name}?split=7",
            "messages": [{"role": "user", "content": "hi"}], "env": KEYS}))
    proc = subprocess.run([sys.executable, "-m", "chatpipe", "serve"], cwd=ROOT, env=env,
                          input="\n".join(lines) + "\n", capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    by_id: dict[int, list[dict]] = {}
    for event in ndjson(proc.stdout):
        if event["type"] != "ready":
            by_id.setdefault(event.pop("id"), []).append(event)
    return {name: by_id.get(i) for i, name in enumerate(sorted(EXPECTED))}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_send_and_serve_give_identical_events(chatpipe, replay, served, name):
    proc = chatpipe("send", template_of(name), "--url", f"{replay.url}/replay/{name}?split=7",
                    "--output", "ndjson", "-m", "hi", extra_env=KEYS)
    sent = ndjson(proc.stdout)
    assert sent, proc.stderr
    assert without_jitter(sent) == without_jitter(served[name])
    assert sent[-1]["type"] in ("done", "error")
    assert proc.returncode == (0 if sent[-1]["type"] == "done" else 1)
    assert sum(e["type"] in ("done", "error") for e in sent) == 1
    if any(e["type"] == "tool_call" for e in sent):
        assert all("id" not in e for e in sent)          # call_id, in both front ends
        assert any("call_id" in e for e in sent) or name.startswith(("gemini", "ollama"))
